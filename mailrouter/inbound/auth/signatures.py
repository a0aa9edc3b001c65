"""DKIM (RFC 6376) and ARC (RFC 8617) verification with dkimpy, its keys fetched beforehand.

The signatures name their keys (``s=`` and ``d=``): a check says which TXT records it needs
(``questions``), the verifier asks them with the others, concurrently, and dkimpy then verifies
against the answers with a lookup function that only reads them. dkimpy canonicalizes and
hashes; the RSA check is OpenSSL's (``cryptography``), tens of microseconds where dkimpy's
pure-Python arithmetic takes half a millisecond, so it runs on the loop. DNS never blocks it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from typing import Any

import dkim
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.util import parse_tag_value

from mailrouter.inbound.auth.resolver import Answer, Answers, Question, question
from mailrouter.inbound.auth.results import ARCResult, DKIMResult, ResultWord

log = logging.getLogger(__name__)

_ARC_SIGNERS = (b"arc-seal", b"arc-message-signature")


class _DebugOnly(logging.LoggerAdapter[logging.Logger]):
    """dkimpy logs every bad signature at ERROR: what strangers send is not our error."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_DKIMPY_LOG = _DebugOnly(log, {})


class _OpenSSLKey:
    """An RSA public key with the interface of the Ed25519 keys dkimpy checks signatures with,
    ``verify(digest, signature)``, raising nacl's BadSignatureError; OpenSSL does the work."""

    def __init__(self, numbers: dict[str, int], algorithm: bytes) -> None:
        self.key = _public_key(numbers["modulus"], numbers["publicExponent"])
        self.hash = hashes.SHA1() if algorithm == b"rsa-sha1" else hashes.SHA256()

    def verify(self, digest: bytes, signature: bytes) -> None:
        try:
            self.key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(self.hash))
        except InvalidSignature:
            raise nacl.exceptions.BadSignatureError("signature did not verify") from None


@functools.lru_cache(maxsize=1024)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


@functools.lru_cache(maxsize=1024)
def _key(name: bytes, record: bytes | None, algorithm: bytes) -> tuple[Any, int, bytes, bool]:
    """dkimpy's ``evaluate_pk`` of a key record, an RSA key as an ``_OpenSSLKey``: (key, size,
    the key type dkimpy is to check it as, whether it is for TLS reports). A key in use signs
    many messages: it is parsed once."""
    key, size, ktag, tlsrpt = dkim.evaluate_pk(name, record)
    if ktag == b"rsa":  # checked the way dkimpy checks Ed25519: key.verify(digest, signature)
        key, ktag = _OpenSSLKey(key, algorithm), b"ed25519"
    return key, size, ktag, tlsrpt


class _OpenSSLChecks:
    """dkimpy's ``verify_sig`` with the RSA check handed to OpenSSL (see ``_OpenSSLKey``)."""

    pk: Any
    keysize: int
    ktag: bytes
    seqtlsrpt: bool
    minkey: int
    verify_sig_process: Callable[..., bool]

    def verify_sig(
        self,
        sig: dict[bytes, bytes],
        include_headers: list[bytes],
        sig_header: tuple[bytes, bytes],
        dnsfunc: Callable[..., bytes | None],
    ) -> bool:
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        try:
            found = _key(name, dnsfunc(name), sig.get(b"a", b""))
        except (dkim.KeyFormatError, ValueError):  # what dkimpy answers False for
            return False
        self.pk, self.keysize, self.ktag, self.seqtlsrpt = found
        if isinstance(self.pk, _OpenSSLKey) and self.keysize < self.minkey:
            raise dkim.KeyFormatError(f"public key too small: {self.keysize}")
        return self.verify_sig_process(sig, include_headers, sig_header, dnsfunc)


class _DKIM(_OpenSSLChecks, dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM verifier, RSA by OpenSSL."""


class _ARC(_OpenSSLChecks, dkim.ARC):  # type: ignore[misc]
    """dkimpy's ARC verifier, RSA by OpenSSL."""


class DKIMCheck:
    """The DKIM-Signature headers of a message: the keys they need (``questions``), then one
    result per signature, top to bottom, once the answers are in."""

    def __init__(self, data: bytes, names: Collection[str]) -> None:
        """The signatures of ``data``, whose header fields are ``names`` (in lower case)."""
        self.signatures: list[tuple[dict[bytes, bytes], bytes] | DKIMResult] = []
        self.verifier: _DKIM | None = None
        if "dkim-signature" not in names:
            return  # unsigned: dkimpy need not parse it
        try:
            self.verifier = _DKIM(data, logger=_DKIMPY_LOG)
        except dkim.DKIMException as exc:
            self.signatures.append(DKIMResult("permerror", f"unreadable message: {exc}"))
            return
        for field, value in self.verifier.headers:
            if field.lower() != b"dkim-signature":
                continue
            try:
                tags = parse_tag_value(value)
            except Exception as exc:  # dkimpy's errors, and what broken input raises in it
                self.signatures.append(DKIMResult("permerror", f"bad signature: {_text(exc)}"))
            else:
                self.signatures.append((tags, _key_name(tags)))

    @property
    def questions(self) -> list[Question]:
        """The TXT records of the signatures' keys."""
        return [_key_question(item[1]) for item in self.signatures if isinstance(item, tuple)]

    def results(self, answers: Answers) -> tuple[DKIMResult, ...]:
        """Each signature's result, given the ``answers`` to ``questions``."""
        return tuple(
            item if isinstance(item, DKIMResult) else self._verify(index, *item, answers)
            for index, item in enumerate(self.signatures)
        )

    def _verify(
        self, index: int, tags: dict[bytes, bytes], name: bytes, answers: Answers
    ) -> DKIMResult:
        """The result of signature ``index``, whose key ``name`` is in ``answers``."""
        domain, selector = _tag(tags, b"d"), _tag(tags, b"s")
        answer = answers.get(_key_question(name), _UNASKED)
        if answer.failure:
            reason = f"key {_name(name)}: {answer.failure}"
            return DKIMResult("temperror", reason, domain, selector)
        records = answer.texts()
        if not records:
            return DKIMResult("permerror", f"no key at {_name(name)}", domain, selector)
        assert self.verifier is not None  # there are signatures: the message was parsed
        try:
            _key(name, records[0], tags.get(b"a", b""))
            verified = self.verifier.verify(index, dnsfunc=_reader(answers))
        except dkim.ValidationError as exc:
            reason = _text(exc).partition(" (")[0]
            word: ResultWord = "fail" if reason == "body hash mismatch" else "permerror"
            return DKIMResult(word, reason, domain, selector)
        except Exception as exc:  # a bad key or signature field; what broken input raises
            return DKIMResult("permerror", _text(exc), domain, selector)
        if not verified:
            return DKIMResult("fail", "signature did not verify", domain, selector)
        return DKIMResult("pass", "good signature", domain, selector)


class ARCCheck:
    """The ARC sets of a message: the keys they need (``questions``), then the chain's
    result once the answers are in."""

    def __init__(self, data: bytes, names: Collection[str]) -> None:
        """The ARC sets of ``data``, whose header fields are ``names`` (in lower case)."""
        self.arc: _ARC | None = None
        self.instances = 0
        self.names: list[bytes] = []
        self.problem = ""
        if "arc-seal" not in names:
            return
        try:
            self.arc = _ARC(data, logger=_DKIMPY_LOG)
            self.instances, headers = self.arc.sorted_arc_headers()
        except Exception as exc:
            self.problem = f"unreadable ARC headers: {_text(exc)}"
            return
        for _, (field, value) in headers:
            if field.lower() in _ARC_SIGNERS:
                try:
                    self.names.append(_key_name(parse_tag_value(value)))
                except Exception:
                    continue  # dkimpy says what is wrong with it

    @property
    def questions(self) -> list[Question]:
        """The TXT records of the ARC sets' keys."""
        return [_key_question(name) for name in self.names if name]

    def result(self, answers: Answers) -> ARCResult:
        """The chain's result, given the ``answers`` to ``questions``."""
        if self.problem:
            return ARCResult("fail", self.problem)
        if self.arc is None or not self.instances:
            return ARCResult("none", "no ARC sets")
        asked = [answers.get(question, _UNASKED) for question in self.questions]
        failed = next((answer.failure for answer in asked if answer.failure), "")
        if failed:
            return ARCResult("temperror", failed, self.instances)
        try:
            chain, _, reason = self.arc.verify(dnsfunc=_reader(answers))
        except Exception as exc:
            return ARCResult("fail", _text(exc), self.instances)
        if chain == dkim.CV_Pass:
            return ARCResult("pass", "chain verified", self.instances)
        return ARCResult("fail", str(reason), self.instances)


_UNASKED = Answer(failure="not asked")


def _reader(answers: Answers) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc``: the first TXT record in ``answers`` for a name, or None."""

    def lookup(name: bytes, timeout: float = 0) -> bytes | None:
        answer = answers.get(_key_question(name))
        texts = answer.texts() if answer is not None else []
        return texts[0] if texts else None

    return lookup


def _key_name(tags: dict[bytes, bytes]) -> bytes:
    """Where a signature's key is published: ``selector._domainkey.domain.``."""
    selector, domain = tags.get(b"s", b""), tags.get(b"d", b"")
    return selector + b"._domainkey." + domain + b"." if selector and domain else b""


def _key_question(name: bytes) -> Question:
    return question(name.decode("ascii", "replace"), "TXT")


def _tag(tags: dict[bytes, bytes], name: bytes) -> str:
    return tags.get(name, b"").decode("ascii", "replace").strip()


def _name(name: bytes) -> str:
    return name.decode("ascii", "replace").rstrip(".")


def _text(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
