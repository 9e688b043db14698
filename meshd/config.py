"""Daemon configuration: a TOML file whose keys are the command-line flags, overridden by flags.

Every ``meshd`` flag has a key of the same name in the file (``state-dir`` or
``state_dir`` both work).  Unknown keys and values of the wrong type are errors
that name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from meshd import DEFAULT_PORT
from meshd.core.errors import LocalProtocolError
from meshd.core.identity import MAX_NAME_LEN, Role

__all__ = ["Config", "ConfigError", "load_config", "parse_hostport"]


class ConfigError(LocalProtocolError):
    """The configuration file or a flag is invalid; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a node needs to start; field names are the flag names with ``_``."""

    state_dir: Path | None = None
    name: str | None = None
    role: Role = Role.CAR
    interface: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()
    peer: tuple[str, ...] = ()
    log_level: str = "info"
    auto_answer: bool = False
    answer_play: Path | None = None
    answer_record: Path | None = None
    trust: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def merged(self, overrides: dict[str, Any]) -> Config:
        """This config with the non-None ``overrides`` (from flags) applied and checked."""
        return replace(self, **_coerce({k: v for k, v in overrides.items() if v is not None}))


_LIST_KEYS = {"interface", "listen", "peer"}
_PATH_KEYS = {"state_dir", "answer_play", "answer_record", "trust"}
_LOG_LEVELS = {"debug", "info", "warning", "error", "critical"}


def _coerce(raw: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(Config)} - {"extra"}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k not in known:
            raise ConfigError(f"unknown configuration key {key!r}")
        if k in _LIST_KEYS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key!r} must be a string or a list of strings")
            out[k] = tuple(value)
        elif k in _PATH_KEYS:
            if not isinstance(value, str | Path):
                raise ConfigError(f"{key!r} must be a path string")
            out[k] = Path(value).expanduser()
        elif k == "role":
            try:
                out[k] = Role(value)
            except ValueError:
                raise ConfigError(f"role must be one of {', '.join(r.value for r in Role)}, not {value!r}") from None
        elif k == "auto_answer":
            if not isinstance(value, bool):
                raise ConfigError(f"{key!r} must be true or false")
            out[k] = value
        elif k == "log_level":
            if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
                raise ConfigError(f"log-level must be one of {', '.join(sorted(_LOG_LEVELS))}")
            out[k] = value.lower()
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{key!r} must be a string")
            out[k] = value
    name = out.get("name")
    if name is not None and not 0 < len(name) <= MAX_NAME_LEN:
        # peers keep only MAX_NAME_LEN characters: a longer name would be shown cut everywhere else
        raise ConfigError(f"name must be 1 to {MAX_NAME_LEN} characters (other nodes see no "
                          f"more), not {len(name)}")
    if name is not None and not name.isprintable():
        raise ConfigError("name must not contain control or invisible formatting characters")
    for hp in out.get("listen", ()):
        parse_hostport(hp, default_port=DEFAULT_PORT)
    return out


def load_config(path: Path | None) -> Config:
    """Read a TOML configuration file (or none) into a ``Config``."""
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Config().merged(raw)


def parse_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6]:PORT`` (port optional when ``default_port`` is given)."""
    host, sep, port_s = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        end = text.index("]")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}")
        port_s, sep = rest[1:], ":" if rest else ""
    elif not sep or host.count(":") > 0:
        if default_port is None:
            raise ConfigError(f"{text!r}: expected HOST:PORT")
        host, port_s = text, str(default_port)
    if not host:
        raise ConfigError(f"{text!r}: missing host")
    if not port_s and default_port is not None:
        port_s = str(default_port)
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{text!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{text!r}: port out of range")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{text!r}: host must be an IP address") from None
        host = "127.0.0.1"
    return host, port
