"""Sender authentication of incoming mail: SPF, DKIM, DMARC and ARC (``message.auth``).

``results`` holds the values (importable without the ``auth`` extra); ``verifier`` runs the
checks with the libraries of ``pip install 'mailrouter[auth]'`` (dkimpy, pyspf, authres,
publicsuffixlist) over ``resolver``, dnspython's asynchronous resolver with a cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailrouter.config import ConfigError, Settings
from mailrouter.inbound.auth.results import (
    ARCResult,
    AuthResults,
    DKIMResult,
    DMARCResult,
    SPFResult,
)

if TYPE_CHECKING:
    from mailrouter.inbound.auth.verifier import Verifier

__all__ = [
    "ARCResult",
    "AuthResults",
    "DKIMResult",
    "DMARCResult",
    "SPFResult",
    "verifier_for",
]

INSTALL_HINT = "pip install 'mailrouter[auth]'"


def verifier_for(settings: Settings) -> Verifier | None:
    """The Verifier the settings ask for, or None with ``auth_policy = "off"``; a ConfigError
    naming the extra to install when its libraries are missing."""
    if settings.auth_policy == "off":
        return None
    try:
        from mailrouter.inbound.auth.verifier import Verifier
    except ImportError as exc:
        module = (exc.name or str(exc)).partition(".")[0]
        raise ConfigError(
            f'auth_policy = "{settings.auth_policy}" needs the sender authentication libraries'
            f' ({module}): {INSTALL_HINT}, or set auth_policy = "off"'
        ) from None
    return Verifier.from_settings(settings)
