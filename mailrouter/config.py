"""Settings: ``config/mailrouter.toml`` parsed into a frozen dataclass, with overrides.

Precedence, lowest first: built-in defaults, the TOML file, ``MAILROUTER_*`` environment
variables, command-line options. Relative paths are resolved against the project folder (the
parent of the config folder), so ``run/`` and ``logs/`` sit beside ``config/``.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from mailrouter.errors import MailRouterError

CONFIG_FILE = "mailrouter.toml"
HANDLERS_DIR = "handlers"
ENV_PREFIX = "MAILROUTER_"


class ConfigError(MailRouterError):
    """The settings are invalid: an unknown key, a wrong type or value, a bad import string."""


@dataclass(frozen=True)
class Settings:
    """Every setting of a mailrouter instance, with its default."""

    host: str = "127.0.0.1"
    port: int = 8825
    unix_socket: str = ""
    unix_socket_mode: str = "0660"
    unix_socket_group: str = ""
    protocol: Literal["smtp", "lmtp"] = "smtp"
    hostname: str = ""
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 1000
    idle_timeout: float = 300.0
    session_timeout: float = 1800.0
    max_connections: int = 100
    max_errors: int = 10
    max_received_headers: int = 50
    max_header_size: int = 100 * 1024
    handler_timeout: float = 300.0
    tls_cert: str = ""
    tls_key: str = ""
    require_starttls: bool = False
    reject_unroutable: bool = False
    auth_policy: Literal["annotate", "off", "enforce"] = "annotate"
    trusted_authserv_ids: tuple[str, ...] = ()
    dns_nameservers: tuple[str, ...] = ()
    dns_timeout: float = 2.0
    reject_unauthenticated: bool = False
    state_sender: Literal["envelope", "from", "authenticated"] = "envelope"
    handlers: tuple[str, ...] = ()
    defaults: Mapping[str, str] = field(default_factory=dict)
    lock_scope: Literal["key", "global"] = "key"
    executor_threads: int = 16
    io_threads: int = 4
    gil_switch_interval: float = 0.005
    loop_block_warning: float = 1.0
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    workers: int = 1
    mode: Literal["direct", "spool"] = "direct"
    spool: str = "run/spool"
    spool_concurrency: int = 16
    spool_max_attempts: int = 10
    state_url: str = "shelve://run/state.db"
    undeliverable: str = "run/undeliverable"
    journal_url: str = "sqlite://run/journal.db"
    journal_retention_days: float = 30.0
    relay_host: str = ""
    relay_port: int = 25
    relay_starttls: Literal["auto", "require", "off"] = "auto"
    relay_tls: bool = False
    relay_username: str = ""
    relay_password: str = ""
    relay_timeout: float = 30.0
    outbox: str = "run/outbox"
    failed: str = "run/failed"
    templates: str = "templates"
    dkim_domain: str = ""
    dkim_selector: str = ""
    dkim_key_file: str = ""
    pid_file: str = "run/mailrouter.pid"
    control_socket: str = "run/control.sock"
    log_file: str = "logs/mailrouter.log"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    console_port: int = 0
    console_host: str = "127.0.0.1"
    console_token: str = ""
    console_token_file: str = "run/console.token"
    console_messages: str = "run/messages.db"
    console_tls_cert: str = ""
    console_tls_key: str = ""
    user: str = ""
    group: str = ""
    allow_root: bool = False
    drain_timeout: float = 30.0
    config_dir: str = "config"

    @property
    def root(self) -> Path:
        """The project folder: relative paths in the settings are relative to it."""
        return Path(self.config_dir).resolve().parent

    def path(self, value: str) -> Path:
        """``value`` as an absolute path, relative ones resolved against the project folder."""
        return self.root / value if value else self.root

    @property
    def handlers_dir(self) -> Path:
        """The folder whose modules are loaded as handlers in addition to ``handlers``."""
        return Path(self.config_dir).resolve() / HANDLERS_DIR

    @property
    def address(self) -> str:
        """Where the server listens, for logs and the status command."""
        return f"unix:{self.unix_socket}" if self.unix_socket else f"{self.host}:{self.port}"

    @property
    def unix_socket_gid(self) -> int:
        """The group the Unix socket is given; -1 (chown's "unchanged"): the server's own."""
        return _group_id(self.unix_socket_group) if self.unix_socket_group else -1

    def state_store_url(self) -> str:
        """The state URL with a relative file path (shelve, sqlite) made absolute."""
        return self._absolute(self.state_url)

    def journal_store_url(self) -> str:
        """The journal URL with a relative sqlite file path made absolute ("" when off)."""
        return self._absolute(self.journal_url)

    def _absolute(self, url: str) -> str:
        for scheme in ("shelve://", "sqlite://"):
            if url.startswith(scheme) and not url.startswith(scheme + "/"):
                return scheme + str(self.path(url.removeprefix(scheme)))
        return url


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_AT_LEAST_ONE = {
    "workers",
    "spool_concurrency",
    "spool_max_attempts",
    "executor_threads",
    "io_threads",
}
_TYPES = get_type_hints(Settings)
_LISTS = {  # the settings that are lists of strings, and what their items are
    "handlers": "module import strings",
    "trusted_authserv_ids": "authserv-ids (host names)",
    "dns_nameservers": 'nameserver addresses ("127.0.0.1", "127.0.0.1:5353", "[::1]:53")',
}
_OCTAL_MODE = re.compile(r"(?:0o)?([0-7]{1,4})")


def load_settings(
    config_dir: str | os.PathLike[str] = "config",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read ``config_dir/mailrouter.toml`` (if present), then apply env and CLI overrides."""
    folder = Path(config_dir)
    values: dict[str, Any] = {}
    file = folder / CONFIG_FILE
    if file.is_file():
        try:
            with file.open("rb") as stream:
                values.update(_flatten(tomllib.load(stream), file))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: {exc}") from None
    environ = os.environ if environ is None else environ
    for name in FIELDS:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and name != "config_dir":
            values[name] = _from_text(name, raw)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["config_dir"] = str(folder)
    return Settings(**{name: _check(name, value, file) for name, value in values.items()})


def _flatten(values: dict[str, Any], file: Path) -> dict[str, Any]:
    """Settings in a TOML table ``[name]`` as ``name_KEY``: ``[metrics] port`` is ``metrics_port``.

    ``[defaults]`` is a setting of its own and stays a table.
    """
    flat = {k: v for k, v in values.items() if k == "defaults" or not isinstance(v, dict)}
    for table, items in values.items():
        if table in flat:
            continue
        for key, value in items.items():
            name = f"{table}_{key}"
            if name in flat:
                raise ConfigError(f"{file}: setting {name!r} is set twice")
            flat[name] = value
    return flat


def _from_text(name: str, raw: str) -> Any:
    """Convert an environment variable's text to the setting's type."""
    kind = _TYPES[name]
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}: {raw!r} is not a number") from None
    if name in _LISTS:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if name == "defaults":
        raise ConfigError(f"{ENV_PREFIX}DEFAULTS cannot be set from the environment")
    return raw


def _check(name: str, value: Any, file: Path) -> Any:
    """Validate one setting's value against its declared type; return it normalised."""
    where = f"{file}: setting {name!r}"
    if name not in FIELDS:
        known = ", ".join(sorted(n for n in FIELDS if n != "config_dir"))
        raise ConfigError(f"{file}: unknown setting {name!r} (known: {known})")
    kind = _TYPES[name]
    choices = get_args(kind) if get_origin(kind) is Literal else ()
    if choices:
        for choice in choices:  # case-insensitively, normalised to the choice's spelling
            if isinstance(value, str) and value.lower() == choice.lower():
                return choice
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if name in _LISTS:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of {_LISTS[name]}")
        if name == "dns_nameservers":
            for text in value:
                try:
                    nameserver_address(text)
                except ValueError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
        return tuple(value)
    if name == "defaults":
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where} must be a table of capture name = regex strings")
        return dict(value)
    if name == "unix_socket_mode":
        return _file_mode(value, where)
    if name == "unix_socket_group":
        return _group_name(value, where)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, not {type(value).__name__}")
    if kind in (int, float) and value < 0:
        raise ConfigError(f"{where} must not be negative")
    if name in _AT_LEAST_ONE and value < 1:
        raise ConfigError(f"{where} must be at least 1")
    if name in ("dns_timeout", "gil_switch_interval") and value == 0:
        raise ConfigError(f"{where} must be more than 0")
    return value


def nameserver_address(text: str) -> tuple[str, int]:
    """A nameserver's ``(address, port)`` from ``"127.0.0.1"``, ``"127.0.0.1:5353"``,
    ``"::1"`` or ``"[::1]:5353"`` (port 53 unless given); ValueError when it is none of those."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad nameserver {text!r}")
            port = rest[1:]
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        address = str(ipaddress.ip_address(host))
        number = int(port)
    except ValueError:
        raise ValueError(f"bad nameserver {text!r}: an IP address, and :port if not 53") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad nameserver {text!r}: port {number} out of range")
    return address, number


def _file_mode(value: Any, where: str) -> str:
    """A permission mode, given as an octal string ("0660") or an int (TOML's 0o660), as "0660"."""
    match = _OCTAL_MODE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match:
        value = int(match.group(1), 8)
    if type(value) is not int or not 0 <= value <= 0o777:
        raise ConfigError(f'{where} must be a permission mode in octal, such as "0660"')
    return f"{value:04o}"


def _group_name(value: Any, where: str) -> str:
    """A group given by name or gid (TOML may give the gid as an int), checked to exist."""
    if type(value) is int and value >= 0:
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a group name or gid")
    if value:
        try:
            _group_id(value)
        except (KeyError, OverflowError):
            raise ConfigError(f"{where}: unknown group {value!r}") from None
    return value


def _group_id(group: str) -> int:
    """The gid of a group given by name or number; KeyError when there is no such group."""
    return (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid


def handler_modules(settings: Settings) -> list[str]:
    """Import strings of every handler module: the listed ones, then ``config/handlers/*.py``.

    The project folder goes on ``sys.path`` (for the listed modules) and so does the config
    folder, so that dropped-in files import as ``handlers.NAME``.
    """
    names = list(settings.handlers)
    folder = settings.handlers_dir
    for importable in (settings.root, folder.parent):
        if str(importable) not in sys.path:
            sys.path.insert(0, str(importable))
    if folder.is_dir():
        names += [
            f"{HANDLERS_DIR}.{path.stem}"
            for path in sorted(folder.glob("*.py"))
            if path.stem.isidentifier() and not path.stem.startswith("_")
        ]
    return names
