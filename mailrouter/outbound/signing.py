"""DKIM signing of outgoing mail (RFC 6376, RFC 8463): the relay's ``Signer`` and its keys.

A ``Signer`` signs with one key as one domain and selector (``dkim_domain``, ``dkim_selector``,
``dkim_key_file``): dkimpy computes the signature (relaxed/relaxed, the From:, To:, Subject:,
Date:, Message-ID: and the other headers RFC 6376 recommends, From: signed twice against a
second one being added). Key files are PEM, PKCS#8 or PKCS#1, RSA or Ed25519, as
``mailrouter dkim-keygen`` or ``openssl genpkey`` write them; ``cryptography`` reads them.
Needs ``pip install 'mailrouter[auth]'``.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailrouter.config import ConfigError, Settings

Algorithm = Literal["rsa", "ed25519"]
INSTALL_HINT = "pip install 'mailrouter[auth]'"


@dataclass(frozen=True)
class Signer:
    """Signs messages as ``domain`` with the key published at ``selector._domainkey.domain``."""

    domain: str
    selector: str
    algorithm: Algorithm
    key: bytes = field(repr=False)  # in the form dkimpy takes: PKCS#1 PEM, or an Ed25519 seed

    @classmethod
    def from_pem(cls, domain: str, selector: str, pem: bytes) -> Signer:
        """A Signer with the private key in ``pem``; ValueError when it is no RSA or Ed25519
        private key."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            pkcs1 = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            return cls(domain, selector, "rsa", pkcs1)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return cls(domain, selector, "ed25519", base64.b64encode(seed))
        raise ValueError(f"not an RSA or Ed25519 key but {type(key).__name__}")

    def sign(self, data: bytes) -> bytes:
        """``data`` with a DKIM-Signature header field on top (CPU work: run it in a thread);
        ValueError for a message that cannot be signed (no From:, say)."""
        import dkim

        try:
            header = dkim.DKIM(data, linesep=b"\r\n").sign(
                self.selector.encode("ascii"),
                self.domain.encode("ascii"),
                self.key,
                signature_algorithm=b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256",
                canonicalize=(b"relaxed", b"relaxed"),
            )
        except dkim.DKIMException as exc:
            raise ValueError(f"cannot DKIM-sign: {exc}") from exc
        return bytes(header) + data


def signer_for(settings: Settings) -> Signer | None:
    """The Signer of the ``dkim_*`` settings (None when ``dkim_domain`` is empty); a
    ConfigError naming the setting when one is missing or the key cannot be read."""
    values = {name: getattr(settings, name) for name in ("dkim_domain", "dkim_selector")}
    values["dkim_key_file"] = settings.dkim_key_file
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(f"DKIM signing needs {' and '.join(missing)} too (or no dkim_domain)")
    path = settings.path(settings.dkim_key_file)
    try:
        import dkim  # noqa: F401  (the signatures are dkimpy's)

        pem = path.read_bytes()
        return Signer.from_pem(settings.dkim_domain.lower(), settings.dkim_selector, pem)
    except ImportError as exc:
        module = (exc.name or str(exc)).partition(".")[0]
        raise ConfigError(f"DKIM signing needs {module}: {INSTALL_HINT}") from None
    except (OSError, ValueError, TypeError) as exc:
        problem = f"cannot read a key from {path}: {exc}"
        raise ConfigError(f"setting 'dkim_key_file': {problem}") from None


def generate_key(algorithm: Algorithm = "rsa", bits: int = 2048) -> bytes:
    """A new private key, as PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=bits)
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_key(path: Path, pem: bytes) -> None:
    """Write ``pem`` to a new file ``path``, mode 0600 from its creation (never readable by
    others, not even for a moment); FileExistsError if it is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(pem)
        stream.flush()
        os.fsync(stream.fileno())


def dns_record(pem: bytes) -> str:
    """The TXT record that publishes the public half of the private key ``pem``:
    ``v=DKIM1; k=rsa; p=...``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = serialization.load_pem_private_key(pem, password=None).public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def zone_line(selector: str, domain: str, record: str) -> str:
    """``record`` as a zone file line, split in strings of at most 255 characters."""
    chunks = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"
