# mailrouter in a container: slim Python, a non-root user, the server in the foreground.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAILROUTER_HOST=0.0.0.0 \
    MAILROUTER_PORT=8825

RUN useradd --system --create-home --home-dir /srv/mailrouter mailrouter
WORKDIR /srv/mailrouter

COPY pyproject.toml README.md ./
COPY mailrouter ./mailrouter
RUN pip install --no-cache-dir '.[auth]' && rm -rf mailrouter pyproject.toml

COPY --chown=mailrouter:mailrouter config ./config
COPY --chown=mailrouter:mailrouter handlers_example ./handlers_example
RUN mkdir -p run logs && chown mailrouter:mailrouter run logs

USER mailrouter
# run/ outlives the container: after a kill -9 its pid file still names pid 1, which is alive
# again on restart. That is harmless: only the lock on run/mailrouter.pid.lock, which the kernel
# dropped with the old process, says whether a server runs, so the container starts again.
VOLUME ["/srv/mailrouter/run"]
EXPOSE 8825

# healthy: the server holds its lock and answers on its control socket (exit 1: not running,
# 4: running but not answering)
HEALTHCHECK --interval=30s --timeout=15s --start-period=10s --retries=3 \
    CMD ["mailrouter", "status"]

CMD ["mailrouter", "start", "--foreground"]
