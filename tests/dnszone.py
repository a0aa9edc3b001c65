"""A real authoritative DNS server for the sender authentication tests: dnslib's, in a thread,
on 127.0.0.1 and a free port, answering from a zone each test writes.

Names with no record of any type get NXDOMAIN, names with records but not of the type asked
an empty answer; both carry an SOA, so resolvers may cache the absence (RFC 2308). A name
``drop``ped is never answered: the resolver's timeout is what the test sees.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dnslib import AAAA, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

TTL = 300


class Zone(BaseResolver):  # type: ignore[misc]
    """The records the server answers with, by owner name; what it has answered."""

    def __init__(self) -> None:
        self.records: dict[str, list[RR]] = {}
        self.dropped: set[str] = set()
        self.questions: list[tuple[str, str]] = []
        self.address = ""  # "127.0.0.1:PORT" once serving

    def add(self, name: str, rtype: str, rdata: object, ttl: int = TTL) -> None:
        owner = name.rstrip(".").lower() + "."
        self.records.setdefault(owner, []).append(
            RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl)
        )

    def txt(self, name: str, text: str, ttl: int = TTL) -> None:
        """A TXT record, split into strings of at most 255 characters."""
        chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
        self.add(name, "TXT", TXT(chunks), ttl)

    def a(self, name: str, address: str) -> None:
        self.add(name, "AAAA" if ":" in address else "A", (AAAA if ":" in address else A)(address))

    def mx(self, name: str, host: str, preference: int = 10) -> None:
        self.add(name, "MX", MX(host, preference))

    def spf(self, domain: str, record: str) -> None:
        self.txt(domain, record)

    def dmarc(self, domain: str, record: str) -> None:
        self.txt(f"_dmarc.{domain}", record)

    def dkim_key(self, selector: str, domain: str, record: str) -> None:
        self.txt(f"{selector}._domainkey.{domain}", record)

    def drop(self, name: str) -> None:
        """Never answer questions about ``name``."""
        self.dropped.add(name.rstrip(".").lower() + ".")

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        owner = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        self.questions.append((owner.rstrip("."), qtype))
        if owner in self.dropped:
            raise DNSError("dropped")  # the handler logs it and sends nothing
        reply = request.reply()
        found = self.records.get(owner)
        for record in found or ():
            if record.rtype == request.q.qtype:
                reply.add_answer(record)
        if not reply.rr:
            if found is None:
                reply.header.rcode = RCODE.NXDOMAIN
            soa = SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, 60))
            reply.add_auth(RR(".", QTYPE.SOA, rdata=soa, ttl=60))
        return reply


@contextmanager
def serving(zone: Zone) -> Iterator[Zone]:
    """Serve ``zone`` over UDP on 127.0.0.1 until the block ends."""
    server, thread = _start(zone)
    try:
        yield zone
    finally:
        server.server.shutdown()  # within a poll interval
        server.server.server_close()
        thread.join()


def _start(zone: Zone) -> tuple[DNSServer, threading.Thread]:
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", logf=_ignore)
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
    host, port = server.server.server_address
    zone.address = f"{host}:{port}"
    thread = threading.Thread(target=server.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    return server, thread


@functools.cache
def quiet_nameserver() -> str:
    """An empty zone (NXDOMAIN for every name) on 127.0.0.1, served for the rest of the run:
    what the suite's servers resolve through (``running``, ``make_project``), so that the
    default ``auth_policy``'s checks never ask the machine's resolver."""
    zone = Zone()
    _start(zone)
    return zone.address


def _ignore(*_: object) -> None:
    pass


def silent_port() -> int:
    """A UDP port on 127.0.0.1 where nothing answers (bound, then closed: refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
