"""Tests for the maildir queue: byte-exact round trips, envelopes, crash safety, concurrency."""

from __future__ import annotations

import email
import errno
import os
import threading
from datetime import datetime
from email import policy
from pathlib import Path

import pytest

from mailrouter.errors import QueueError, QueueFullError
from mailrouter.message import MailRequest
from mailrouter.queue import Queue, QueueEntry

CRLF_DATA = b"From: a@x.org\r\nTo: b@y.org\r\nSubject: hi\r\n\r\nbody\r\n"
LF_DATA = b"From: a@x.org\nTo: b@y.org\nSubject: hi\n\nbody\n"


def request(
    data: bytes = CRLF_DATA,
    *,
    peer: object = ("127.0.0.1", 4000),
    sender: str = "a@x.org",
    recipients: tuple[str, ...] | list[str] = ("b@y.org", "c@y.org"),
) -> MailRequest:
    return MailRequest(peer, sender, recipients, data)


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "q")


def test_creates_maildir(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "deep" / "q"))
    assert queue.path == str(tmp_path / "deep" / "q")
    for sub in ("tmp", "new", "cur"):
        assert (tmp_path / "deep" / "q" / sub).is_dir()
    assert len(queue) == 0
    assert queue.keys() == []


@pytest.mark.parametrize(
    "data",
    [
        CRLF_DATA,
        LF_DATA,
        "Subject: caf\u00e9\n\nna\u00efve \u2603\n".encode(),
        bytes(range(256)) * 4,
        b"",
        b"no newline at all",
        b"\r\n\r\n",
        b"Return-Path: <evil@x.org>\r\nX-Original-To: root@y.org\r\n"
        b"X-Mailrouter-Queued: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n",
        b"X-Mailrouter-Queued: Mon, 1 Jan 2024 00:00:00 +0000\nX-Mailrouter-Peer: -\n\nx\n",
    ],
    ids=["crlf", "lf", "8bit", "binary", "empty", "no-eol", "blank-lines", "fake-trace", "queued"],
)
def test_round_trip_is_byte_exact(queue: Queue, data: bytes) -> None:
    key = queue.push(request(data))
    message = queue.get(key)
    assert message.data == data
    assert message.sender == "a@x.org"
    assert message.recipients == ["b@y.org", "c@y.org"]
    assert message.peer == ("127.0.0.1", 4000)
    entry = queue.read(key)
    assert isinstance(entry, QueueEntry)
    assert entry.key == key
    assert entry.data == data
    assert entry.reasons == {"b@y.org": "queued", "c@y.org": "queued"}
    assert isinstance(entry.queued_at, datetime)
    assert entry.queued_at.tzinfo is not None


def test_reasons_name_only_the_unhandled_recipients(queue: Queue) -> None:
    reasons = {"c@y.org": "no route", "d@y.org": "handler app.lists.START failed: ValueError: boom"}
    key = queue.push(request(recipients=["b@y.org", "c@y.org", "d@y.org"]), reasons)
    entry = queue.read(key)
    assert entry.message.recipients == ["c@y.org", "d@y.org"]
    assert entry.reasons == reasons


def test_null_sender_and_peers(queue: Queue) -> None:
    cases = [
        (None, None),
        ("/run/mailrouter.sock", "/run/mailrouter.sock"),
        ("", ""),
        ("-", "-"),
        ("host 25", "host 25"),
        (("::1", 25, 0, 0), ("::1", 25)),
        (("my host", 25), "('my host', 25)"),
        (("h", -1), "('h', -1)"),
        (('"h"', 25), "('\"h\"', 25)"),
        (("a\0b", 25), "('a\\x00b', 25)"),
    ]
    for peer, expected in cases:
        key = queue.push(request(sender="", peer=peer))
        message = queue.get(key)
        assert message.sender == ""
        assert message.peer == expected, peer


def test_file_holds_trace_headers_then_exact_bytes(queue: Queue) -> None:
    reasons = {"b@y.org": "no route", "c@y.org": "x" * 2000}
    key = queue.push(request(), reasons)
    raw = (Path(queue.path) / "new" / key).read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[:5] == [
        b"Return-Path: <a@x.org>",
        b"X-Original-To: b@y.org",
        b"X-Mailrouter-Reason: no route",
        b"X-Original-To: c@y.org",
        b"X-Mailrouter-Reason: " + b"x" * 500,
    ]
    assert lines[5] == b"X-Mailrouter-Peer: 127.0.0.1 4000"
    assert lines[6].startswith(b"X-Mailrouter-Queued: ")
    assert raw.endswith(b"\r\n" + CRLF_DATA)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Return-Path"] == "<a@x.org>"
    assert parsed.get_all("X-Original-To") == ["b@y.org", "c@y.org"]
    assert parsed["X-Mailrouter-Peer"] == "127.0.0.1 4000"
    assert parsed["Subject"] == "hi"
    assert parsed.get_content().rstrip() == "body"


def test_lf_data_gets_lf_trace(queue: Queue) -> None:
    key = queue.push(request(LF_DATA))
    raw = (Path(queue.path) / "new" / key).read_bytes()
    assert b"\r" not in raw
    assert raw.startswith(b"Return-Path: <a@x.org>\nX-Original-To: b@y.org\n")


def test_header_injection_is_neutralised(queue: Queue) -> None:
    evil = "b@y.org\r\nBcc: victim@z.org\x00"
    key = queue.push(
        request(sender="a@x.org\nX-Evil: 1", recipients=[evil]),
        {evil: "boom\r\nX-Evil: 2"},
    )
    raw = (Path(queue.path) / "new" / key).read_bytes()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert "Bcc" not in parsed
    assert "X-Evil" not in parsed
    entry = queue.read(key)
    assert entry.message.sender == "a@x.org X-Evil: 1"
    assert entry.message.recipients == ["b@y.org  Bcc: victim@z.org "]
    assert entry.reasons == {"b@y.org  Bcc: victim@z.org ": "boom  X-Evil: 2"}
    assert entry.data == CRLF_DATA


def test_utf8_envelope(queue: Queue) -> None:
    key = queue.push(request(sender="j\u00f6rg@b\u00fccher.de", recipients=["\u2603@x.org"]))
    message = queue.get(key)
    assert message.sender == "j\u00f6rg@b\u00fccher.de"
    assert message.recipients == ["\u2603@x.org"]


def test_pop_is_fifo_and_empties(queue: Queue) -> None:
    keys = [queue.push(request(b"n: %d\n\n" % i)) for i in range(5)]
    assert queue.keys() == sorted(keys) == keys
    assert len(queue) == 5
    for i, expected in enumerate(keys):
        key, message = queue.pop()
        assert key == expected
        assert message is not None
        assert message.data == b"n: %d\n\n" % i
    assert queue.pop() == (None, None)
    assert len(queue) == 0
    assert os.listdir(Path(queue.path) / "cur") == []


def test_remove_clear_len(queue: Queue) -> None:
    keys = [queue.push(request()) for _ in range(3)]
    assert len(set(keys)) == 3
    queue.remove(keys[1])
    assert queue.keys() == [keys[0], keys[2]]
    with pytest.raises(KeyError):
        queue.remove(keys[1])
    with pytest.raises(KeyError):
        queue.get(keys[1])
    queue.clear()
    assert len(queue) == 0
    queue.clear()


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", ".", "..", "", "a\0b", "/etc/passwd"])
def test_bad_keys_raise_key_error(queue: Queue, tmp_path: Path, bad: str) -> None:
    (tmp_path / "x").write_bytes(b"outside")
    for call in (queue.get, queue.read, queue.remove):
        with pytest.raises(KeyError):
            call(bad)
    assert (tmp_path / "x").read_bytes() == b"outside"


def test_file_without_trace_block_is_an_error(queue: Queue) -> None:
    (Path(queue.path) / "new" / "1.junk").write_bytes(b"Subject: x\n\nno trace\n")
    (Path(queue.path) / "new" / "2.cut").write_bytes(b"Return-Path: <a@x.org>\nX-Original-To: b")
    for key in ("1.junk", "2.cut"):
        with pytest.raises(QueueError, match=key):
            queue.read(key)


def test_recover_returns_interrupted_claims(queue: Queue) -> None:
    keys = [queue.push(request()) for _ in range(3)]
    for key in keys[:2]:  # a consumer that crashed between claim and unlink
        os.rename(Path(queue.path) / "new" / key, Path(queue.path) / "cur" / key)
    assert queue.keys() == [keys[2]]
    assert queue.recover() == 2
    assert queue.keys() == keys
    assert queue.recover() == 0
    assert queue.get(keys[0]).data == CRLF_DATA


def test_release_keeps_the_failed_attempts_in_the_name(queue: Queue) -> None:
    key = queue.push(request())
    assert queue.claim(key).attempts == 0
    queue.release(key)  # no count given: the entry waits under its key
    assert queue.keys() == [key]
    first = queue.release(queue.claim(key).key, attempts=1)
    assert first == f"{key}:1,1"
    assert queue.keys() == [first]
    second = queue.release(queue.claim(first).key, attempts=2)
    assert second == f"{key}:1,2"  # the count replaces the one before
    queue.claim(second)
    assert queue.recover() == 1  # a crash keeps the count too
    entry = queue.claim(second)
    assert (entry.attempts, entry.message.recipients) == (2, ["b@y.org", "c@y.org"])
    queue.finish(second)
    assert queue.keys() == []


def test_write_failure_raises_and_leaves_nothing(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    tmp = tmp_path / "q" / "tmp"
    tmp.rmdir()
    tmp.write_bytes(b"not a directory")
    with pytest.raises(QueueError, match=str(tmp_path / "q")) as info:
        queue.push(request())
    assert not isinstance(info.value, QueueFullError)
    assert isinstance(info.value.__cause__, OSError)
    assert os.listdir(tmp_path / "q" / "new") == []
    assert len(queue) == 0


def test_constructor_failure_is_a_queue_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(QueueError):
        Queue(tmp_path / "file")


def test_reader_never_sees_a_half_written_entry(queue: Queue) -> None:
    count = 20
    payloads = [b"N: %d\r\n\r\n" % i + bytes([i]) * (1 << 20) for i in range(count)]
    expected = {payload[: payload.index(b"\r")]: payload for payload in payloads}
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for payload in payloads:
                queue.push(request(payload))
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen: set[str] = set()
    try:
        for _ in range(100_000):
            done = not thread.is_alive()
            listed = queue.keys()
            for key in listed:
                if key in seen:
                    continue
                data = queue.get(key).data
                assert data == expected[data[: data.index(b"\r")]]
                seen.add(key)
            if done:
                break
    finally:
        thread.join()
    assert not errors
    assert len(seen) == count


def test_two_queues_on_one_path_pop_each_entry_once(tmp_path: Path) -> None:
    first, second = Queue(tmp_path / "q"), Queue(tmp_path / "q")
    pushed = {first.push(request(b"n: %d\n\n" % i)) for i in range(100)}
    pushed |= {second.push(request(b"m: %d\n\n" % i)) for i in range(100)}
    assert len(pushed) == 200
    popped: list[list[str]] = [[] for _ in range(4)]

    def consumer(queue: Queue, out: list[str]) -> None:
        while True:
            key, message = queue.pop()
            if key is None:
                return
            assert message is not None
            out.append(key)

    threads = [
        threading.Thread(target=consumer, args=(q, out))
        for q, out in zip([first, second, first, second], popped, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [key for out in popped for key in out]
    assert len(everything) == len(set(everything)) == 200
    assert set(everything) == pushed
    assert len(first) == len(second) == 0


def test_corrupt_entry_stays_claimed_on_pop(queue: Queue) -> None:
    (Path(queue.path) / "new" / "1.junk").write_bytes(b"Subject: x\n\nno trace\n")
    with pytest.raises(QueueError, match=r"1\.junk"):
        queue.pop()
    assert os.listdir(Path(queue.path) / "cur") == ["1.junk"]
    assert queue.recover() == 1
    assert queue.keys() == ["1.junk"]


def test_short_writes_are_completed(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, buf: real_write(fd, bytes(buf[:1000])))
    data = bytes(range(256)) * 100
    key = queue.push(request(data))
    assert queue.get(key).data == data


def test_write_that_makes_no_progress_is_an_error(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "write", lambda fd, buf: 0)
    with pytest.raises(QueueError, match="no progress"):
        queue.push(request())
    assert os.listdir(Path(queue.path) / "tmp") == os.listdir(Path(queue.path) / "new") == []


def test_full_disk_is_a_queue_full_error(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(QueueFullError, match=queue.path):
        queue.push(request())
    assert os.listdir(Path(queue.path) / "tmp") == os.listdir(Path(queue.path) / "new") == []
