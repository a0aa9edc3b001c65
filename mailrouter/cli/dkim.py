"""``mailrouter dkim-keygen``: a DKIM private key for signing outgoing mail, and its TXT record.

The key file is created with mode 0600 and never replaced; the record to publish, and the
settings that use the key, are printed.
"""

from __future__ import annotations

from pathlib import Path

import click

from mailrouter.config import ENV_PREFIX
from mailrouter.errors import MailRouterError


@click.command("dkim-keygen")
@click.option(
    "--selector", required=True, envvar=f"{ENV_PREFIX}DKIM_SELECTOR", show_envvar=True,
    help="The selector (s=): the key is published at SELECTOR._domainkey.DOMAIN.",
)  # fmt: skip
@click.option(
    "--domain", required=True, envvar=f"{ENV_PREFIX}DKIM_DOMAIN", show_envvar=True,
    help="The signing domain (d=): your From: domain, for DMARC to pass.",
)  # fmt: skip
@click.option(
    "--key-file", type=click.Path(dir_okay=False), envvar=f"{ENV_PREFIX}DKIM_KEY_FILE",
    show_envvar=True, help="Where to write the private key  [default: SELECTOR.DOMAIN.key]",
)  # fmt: skip
@click.option(
    "--algorithm", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True,
    help="RSA (every receiver verifies it) or Ed25519 (RFC 8463; sign with both to use it).",
)  # fmt: skip
@click.option(
    "--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True,
    help="RSA key size.",
)  # fmt: skip
def dkim_keygen(
    selector: str, domain: str, key_file: str | None, algorithm: str, bits: int
) -> None:
    """Write a new DKIM private key file (mode 0600) and print the TXT record to publish."""
    try:
        from mailrouter.outbound.signing import dns_record, generate_key, write_key, zone_line

        pem = generate_key("ed25519" if algorithm == "ed25519" else "rsa", bits)
    except ImportError as exc:
        hint = "pip install 'mailrouter[auth]'"
        raise MailRouterError(f"dkim-keygen needs {exc.name}: {hint}") from None
    domain = domain.strip().rstrip(".").lower()
    path = Path(key_file or f"{selector}.{domain}.key")
    try:
        write_key(path, pem)
    except FileExistsError:
        raise MailRouterError(f"{path} exists: not replacing a key (remove it first)") from None
    click.echo(f"wrote the private key to {path} (mode 0600); publish this record:")
    click.echo()
    click.echo(zone_line(selector, domain, dns_record(pem)))
    click.echo()
    click.echo("then sign outgoing mail with these settings:")
    click.echo(f'  dkim_domain = "{domain}"')
    click.echo(f'  dkim_selector = "{selector}"')
    click.echo(f'  dkim_key_file = "{path.absolute()}"')
