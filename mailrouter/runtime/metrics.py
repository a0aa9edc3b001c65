"""Prometheus metrics of one server (the ``mailrouter[metrics]`` extra), in its own registry.

Counters are fed by the server's delivery records; connections and queue depths are read when
Prometheus scrapes. The endpoint is ``prometheus_client``'s own HTTP server, in a thread of its
own: a scrape, which counts maildir entries on disk, never runs on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Sized
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mailrouter.errors import MailRouterError
from mailrouter.inbound.outcome import DeliveryRecord

# Seconds from the end of DATA to the reply: fast handlers up to handler_timeout's default.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """A server's metrics: ``observe`` each message, ``start`` the HTTP endpoint, ``stop`` it."""

    def __init__(self, connections: Sized, undeliverable: Sized | None, outbox: Sized) -> None:
        self.registry = registry = CollectorRegistry()
        self.received = Counter(
            "mailrouter_messages_received", "Messages received (DATA ended).", registry=registry
        )
        self.accepted = Counter(
            "mailrouter_messages_accepted", "Messages answered 2xx.", registry=registry
        )
        self.refused = Counter(
            "mailrouter_messages_refused",
            "Messages refused (4xx or 5xx; over LMTP, any recipient), by reply code.",
            ["code"],
            registry=registry,
        )
        self.undeliverable = Counter(
            "mailrouter_messages_undeliverable",
            "Messages put in the undeliverable queue.",
            registry=registry,
        )
        self.handler_errors = Counter(
            "mailrouter_handler_errors",
            "Handler runs that raised (not SMTPError) or returned no state.",
            registry=registry,
        )
        self.duration = Histogram(
            "mailrouter_delivery_duration_seconds",
            "Seconds from the end of DATA to the reply: routing, handlers, queueing.",
            buckets=BUCKETS,
            registry=registry,
        )
        gauges = {
            "mailrouter_connections": ("Open SMTP or LMTP connections.", connections),
            "mailrouter_queue_depth": ("Messages in the undeliverable queue.", undeliverable),
            "mailrouter_outbox_depth": ("Outgoing messages waiting for a retry.", outbox),
        }
        for name, (text, sized) in gauges.items():
            if sized is not None:
                Gauge(name, text, registry=registry).set_function(sized.__len__)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def observe(self, record: DeliveryRecord) -> None:
        """Count one message."""
        self.received.inc()
        if record.code < 300:
            self.accepted.inc()
        else:
            self.refused.labels(str(record.code)).inc()
        if record.queue_key is not None:
            self.undeliverable.inc()
        if record.handler_errors:
            self.handler_errors.inc(record.handler_errors)
        self.duration.observe(record.duration)

    def start(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` (port 0: a free one) in a thread."""
        try:
            self._http = start_http_server(port, host, self.registry)
        except (OSError, OverflowError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise MailRouterError(f"cannot serve metrics on {host}:{port}: {reason}") from exc

    @property
    def port(self) -> int:
        """The bound port of the endpoint."""
        assert self._http is not None, "the metrics endpoint is not started"
        return int(self._http[0].server_port)

    def stop(self) -> None:
        """Close the endpoint and wait for its thread (blocks for up to half a second)."""
        if self._http is None:
            return
        server, thread = self._http
        server.shutdown()
        server.server_close()
        thread.join()
        self._http = None
