"""A throw-away Postfix instance in a temporary folder, for integration tests.

Postfix listens on a free loopback port and relays ``router.test`` over SMTP and ``lmtp.test``
over LMTP to servers on 127.0.0.1 (or over LMTP to a Unix socket); mail for any other domain
(such as bounces sent back to the test's sender) is discarded. See ``shared/POSTFIX.md``. Needs
root and Debian's ``postfix`` package (``.ci/install-postfix.sh``); never touches
``/etc/postfix/main.cf``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import smtplib
import socket
import stat as stat_module
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import pytest
from helpers import free_port, poll, until, wait_for

__all__ = [
    "LMTP_DOMAIN",
    "SMTP_DOMAIN",
    "PostfixError",
    "PostfixInstance",
    "free_port",
    "postfix_available",
    "require_postfix",
]

SMTP_DOMAIN = "router.test"
LMTP_DOMAIN = "lmtp.test"
SYSTEM_MASTER_CF = Path("/etc/postfix/master.cf")
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


class PostfixError(RuntimeError):
    """A postfix command failed, or the instance did not come up or go down in time."""


def postfix_available() -> bool:
    """Whether a Postfix instance can run here: the ``postfix`` binary exists and we are root."""
    return _which("postfix") is not None and _which("postmap") is not None and os.geteuid() == 0


def require_postfix() -> None:
    """Skip the calling test when Postfix cannot run; under ``CI=true`` fail it instead."""
    if postfix_available():
        return
    reason = "Postfix is not installed or not running as root (run .ci/install-postfix.sh as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _which(name: str) -> str | None:
    """Find a Postfix command even when /usr/sbin is not on PATH."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def _port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _status_pattern(queue_id: str, recipient: str, status: str) -> str:
    """A regex for the delivery line of one queue id and recipient with a given status."""
    return rf"\b{re.escape(queue_id)}: to=<{re.escape(recipient)}>,.*\bstatus=(?:{status})\b"


def _allow_traversal(folder: Path) -> None:
    """Give everyone search (x) permission on folder and its ancestors where it is missing.

    Postfix daemons run as the ``postfix`` user and open the queue and data folders by absolute
    path, so a 0700 parent (``tempfile``'s and pytest's temporary folders) makes startup fail.
    """
    for path in (folder, *folder.parents):
        mode = path.stat().st_mode
        if not mode & stat_module.S_IXOTH:
            path.chmod(stat_module.S_IMODE(mode) | stat_module.S_IXOTH)


class PostfixInstance:
    """One Postfix in ``tmp_dir / "postfix"``: ``etc/``, ``queue/``, ``data/`` and ``postfix.log``.

    ``next_hop_port`` receives ``router.test`` over SMTP; ``lmtp_port`` (default: the same port)
    receives ``lmtp.test`` over LMTP, or ``lmtp_socket`` does, a Unix socket path, when given
    (Postfix's lmtp client, running as ``postfix``, must reach it: no chroot here).
    ``smtp_port`` is Postfix's own SMTP listener.
    """

    def __init__(
        self,
        tmp_dir: Path,
        next_hop_port: int,
        *,
        lmtp_port: int | None = None,
        lmtp_socket: Path | None = None,
        extra_main_cf: dict[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(tmp_dir).resolve() / "postfix"
        # Siblings, not nested: `postfix check` warns about files under the config folder that
        # root does not own, and the queue and data folders belong to the postfix user.
        self.config_directory = self.directory / "etc"
        self.queue_directory = self.directory / "queue"
        self.data_directory = self.directory / "data"
        self.log_path = self.directory / "postfix.log"
        self.next_hop_port = next_hop_port
        self.lmtp_port = next_hop_port if lmtp_port is None else lmtp_port
        self.lmtp_socket = lmtp_socket
        self.extra_main_cf = dict(extra_main_cf or {})
        self.start_timeout = start_timeout
        self.smtp_port = 0
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> None:
        """Write the configuration, start Postfix, and wait until its SMTP port answers.

        The listener port is picked at random, so a lost race for it is retried with a new one.
        On failure nothing is left running and PostfixError carries the log tail.
        """
        if not postfix_available():
            raise PostfixError("postfix is not installed or we are not root")
        atexit.register(self.stop)
        problem = ""
        try:
            for _ in range(attempts):
                self.smtp_port = free_port()
                self._configure()
                self._started = True
                try:
                    self._postfix("start")
                except PostfixError as exc:
                    problem = str(exc)
                else:
                    if self._wait_listening():
                        return
                    problem = f"postfix did not listen on 127.0.0.1:{self.smtp_port}"
                self.stop()
        except BaseException:
            self.stop()
            raise
        raise PostfixError(f"{problem} (after {attempts} tries); log tail:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop Postfix and wait until none of its processes are left; safe to call twice."""
        atexit.unregister(self.stop)
        if not self._started and not self._processes():
            return
        self._started = False
        if self.master_pid() is not None:
            subprocess.run(
                [self._cmd("postfix"), "-c", str(self.config_directory), "stop"],
                capture_output=True,
                check=False,
                timeout=timeout,
            )
        master = self.master_pid()
        if master is not None:  # `postfix stop` failed (say, a broken main.cf): do its job
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGTERM)
        if poll(lambda: not self._processes(), timeout, interval=0.05) is None:
            for pid in self._processes():  # only processes working in our own queue folder
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def master_pid(self) -> int | None:
        """The pid of this instance's master process, if it is running."""
        try:
            pid = int((self.queue_directory / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    # -- mail ------------------------------------------------------------------------------

    def send(
        self,
        sender: str,
        recipients: str | Iterable[str],
        message: bytes,
        timeout: float = 30.0,
    ) -> str:
        """Submit a message over SMTP to this Postfix and return its Postfix queue id."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=timeout) as client:
            client.ehlo("client.test")
            code, reply = client.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, sender)
            for rcpt in rcpts:
                code, reply = client.rcpt(rcpt)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
            code, reply = client.data(message)
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
        match = _QUEUED_AS.search(reply.decode("utf-8", "replace"))
        if match is None:
            raise PostfixError(f"no queue id in the DATA reply: {reply!r}")
        return match.group(1)

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now (``postqueue -f``)."""
        self._run("postqueue", "-f")

    def queue(self) -> str:
        """The queue listing (``postqueue -p``); "Mail queue is empty" when nothing waits."""
        return self._run("postqueue", "-p")

    def queue_empty(self) -> bool:
        """Whether no message waits in the queue."""
        return "Mail queue is empty" in self.queue()

    # -- the log ---------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything Postfix has logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_mark(self) -> int:
        """The log's current length, to pass as ``since`` and ignore what was logged before."""
        return len(self.log_text())

    def wait_for_log(self, pattern: str, timeout: float = 30.0, *, since: int = 0) -> str:
        """Poll the log until a line matches the regex ``pattern``; return that line.

        ``since`` (from ``log_mark()``) skips older lines. Raises AssertionError with the log
        tail when nothing matches within ``timeout`` seconds. Blocks: in async tests whose
        server runs on the test's loop, use ``await_log`` instead.
        """
        regex = re.compile(pattern)
        return wait_for(
            lambda: self._find(regex, since),
            timeout,
            interval=0.1,
            message=lambda: self._no_line(pattern, timeout),
        )

    async def await_log(self, pattern: str, timeout: float = 30.0, *, since: int = 0) -> str:
        """``wait_for_log`` for async tests: polls without blocking the event loop."""
        regex = re.compile(pattern)
        line: str = await until(
            lambda: self._find(regex, since),
            timeout,
            interval=0.1,
            message=lambda: self._no_line(pattern, timeout),
        )
        return line

    def wait_for_status(
        self, queue_id: str, recipient: str, status: str, timeout: float = 30.0, *, since: int = 0
    ) -> str:
        """Wait for the delivery line of one message and recipient with ``status=STATUS``.

        ``status`` is ``sent``, ``deferred`` or ``bounced`` (a regex). Returns the log line.
        """
        return self.wait_for_log(_status_pattern(queue_id, recipient, status), timeout, since=since)

    async def await_status(
        self, queue_id: str, recipient: str, status: str, timeout: float = 30.0, *, since: int = 0
    ) -> str:
        """``wait_for_status`` for async tests."""
        pattern = _status_pattern(queue_id, recipient, status)
        return await self.await_log(pattern, timeout, since=since)

    async def asend(
        self, sender: str, recipients: str | Iterable[str], message: bytes, timeout: float = 30.0
    ) -> str:
        """``send`` for async tests: runs smtplib in a worker thread."""
        return await asyncio.to_thread(self.send, sender, recipients, message, timeout)

    async def aflush(self) -> None:
        """``flush`` for async tests."""
        await asyncio.to_thread(self.flush)

    def _find(self, regex: re.Pattern[str], since: int) -> str | None:
        for line in self.log_text()[since:].splitlines():
            if regex.search(line):
                return line
        return None

    def _no_line(self, pattern: str, timeout: float) -> str:
        return (
            f"no line matching {pattern!r} in {self.log_path} after {timeout}s; "
            f"log tail:\n{self.log_tail()}"
        )

    # -- internals -------------------------------------------------------------------------

    def _configure(self) -> None:
        """Write main.cf, master.cf and the transport map, then fix permissions and check."""
        for folder in (self.directory, self.config_directory, self.queue_directory):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
        _allow_traversal(self.directory)
        past = time.time() - 10
        for name, text in (
            ("main.cf", self._main_cf()),
            ("master.cf", self._master_cf()),
            ("transport", self._transport()),
        ):
            path = self.config_directory / name
            path.write_text(text)
            # Postfix re-reads a file changed within the current second (300 ms pauses).
            os.utime(path, (past, past))
        self._run("postmap", f"hash:{self.config_directory / 'transport'}")
        self._postfix("set-permissions")
        self._postfix("check")

    def _main_cf(self) -> str:
        d = self.directory
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.data_directory),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "relay.test.local",
            "mydomain": "test.local",
            "myorigin": "$myhostname",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": f"{SMTP_DOMAIN}, {LMTP_DOMAIN}",
            "transport_maps": f"hash:{self.config_directory / 'transport'}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "none",
            "lmtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            # Retry deferred mail within seconds, and give up on a dead next hop quickly.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "2s",
            "lmtp_connect_timeout": "2s",
            # A next hop that never answers DATA shows up as "deferred" instead of a 10 min hang.
            "smtp_data_done_timeout": "30s",
            "lmtp_data_done_timeout": "30s",
            "smtp_connection_cache_on_demand": "no",
            "lmtp_connection_cache_on_demand": "no",
            "delay_warning_time": "0h",
            "notify_classes": "",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": f"/var, /dev/stdout, {d}",
        }
        settings.update(self.extra_main_cf)
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _master_cf(self) -> str:
        out: list[str] = []
        for line in SYSTEM_MASTER_CF.read_text().splitlines():
            fields = line.split()
            if not line or line[0] in "# \t" or len(fields) < 8:
                out.append(line)
                continue
            if fields[:2] == ["smtp", "inet"]:
                out.append(f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd")
                continue
            fields[4] = "n"  # no chroot: the queue lives in a temporary folder
            out.append("  ".join(fields))
        out.append("router    unix  -       -       n       -       -       smtp")
        return "\n".join(out) + "\n"

    def _transport(self) -> str:
        lmtp = f"inet:[127.0.0.1]:{self.lmtp_port}"
        if self.lmtp_socket is not None:
            lmtp = f"unix:{self.lmtp_socket}"
        return (
            f"{SMTP_DOMAIN}  router:[127.0.0.1]:{self.next_hop_port}\n"
            f"{LMTP_DOMAIN}  lmtp:{lmtp}\n"
            # Anything else (bounces to the test's sender) goes nowhere instead of to DNS.
            "*  discard:sink\n"
        )

    def _wait_listening(self) -> bool:
        """Poll until the smtpd port accepts connections; False if master dies or time runs out."""

        def settled() -> str | None:
            if _port_open(self.smtp_port):
                return "listening"
            if self.master_pid() is None:
                return "died"  # master died (for example: the port was taken)
            return None

        return poll(settled, self.start_timeout, interval=0.05) == "listening"

    def _processes(self) -> list[int]:
        """Pids of the processes whose working folder is this instance's queue folder."""
        pids: list[int] = []
        queue = str(self.queue_directory)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == queue:
                pids.append(int(entry.name))
        return pids

    def _cmd(self, name: str) -> str:
        """The full path of a Postfix command."""
        path = _which(name)
        if path is None:
            raise PostfixError(f"{name} not found")
        return path

    def _postfix(self, action: str) -> str:
        return self._run("postfix", action)

    def _run(self, name: str, *args: str) -> str:
        """Run a Postfix command on this instance's config; raise PostfixError if it fails."""
        cmd = [self._cmd(name), "-c", str(self.config_directory), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise PostfixError(
                f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
            )
        return proc.stdout
