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

__all__ = ["DEFAULT_METRICS", "LOG_FORMATS", "Config", "ConfigError", "load_config",
           "parse_hostport", "parse_metrics_address"]

#: where the OpenMetrics endpoint listens when the configuration says nothing
DEFAULT_METRICS = "127.0.0.1:7481"
DEFAULT_METRICS_PORT = 7481
#: ``log-format`` values: human text lines, or one JSON object per line
LOG_FORMATS = ("text", "json")


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
    #: route as a stub (``--stub``): announce only this node, relay nothing, send all else
    #: through a default route via the best router neighbour (a phone beside the cars)
    stub: bool = False
    answer_play: Path | None = None
    answer_record: Path | None = None
    trust: Path | None = None
    #: ``ADDR:PORT`` or ``off``; None: ``DEFAULT_METRICS``, and a taken port is only a warning
    metrics: str | None = None
    log_format: str = "text"
    #: NodeIds (hex) that see whole remote status answers, not only the public facts
    admin: tuple[str, ...] = ()
    #: HTTPS listeners of the web app (ADDR:PORT); the loopback HTTP one is ``web_local``
    web: tuple[str, ...] = ()
    web_local: str = "127.0.0.1:7480"
    no_web: bool = False
    #: the op store's total size in bytes (``--store-quota``); None: ``DEFAULT_STORE_QUOTA``
    store_quota: int | None = None
    #: compact a library document into a snapshot after this many edits (``--compact-after``)
    compact_after: int | None = None
    #: seconds a document must be unchanged before it is compacted (``--compact-quiet``)
    compact_quiet: float | None = None
    #: days a deleted document keeps its text before only its tombstone is left
    #: (``--tombstone-horizon``)
    tombstone_horizon: float | None = None
    #: sealed mail by custody: copies the writer hands out (binary spray-and-wait,
    #: ``sync.custody``); None or 0: mail is flooded like every other op (``--mail-copies``)
    mail_copies: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def merged(self, overrides: dict[str, Any]) -> Config:
        """This config with the non-None ``overrides`` (from flags) applied and checked."""
        return replace(self, **_coerce({k: v for k, v in overrides.items() if v is not None}))


#: the most copies ``--mail-copies`` takes (``sync.custody.MAX_COPIES``; meshd does not import sync)
MAX_MAIL_COPIES = 64

_LIST_KEYS = {"interface", "listen", "peer", "admin", "web"}
_PATH_KEYS = {"state_dir", "answer_play", "answer_record", "trust"}
_LOG_LEVELS = {"debug", "info", "warning", "error", "critical"}


#: the op store's total quota on a head unit by default (a car keeps its flash for maps)
DEFAULT_STORE_QUOTA = 1024**3
#: below this the node could not hold even the trust and bulletins it carries
MIN_STORE_QUOTA = 16 * 1024**2
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: object, key: str = "store-quota") -> int:
    """Bytes from an int or a string such as ``512M`` or ``2G`` (binary units)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key!r} must be a size in bytes")
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("ib").removesuffix("b")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
        try:
            n = int(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit]
        except ValueError:
            raise ConfigError(f"{key!r}: {value!r} is no size (e.g. 1073741824, 512M, 2G)") from None
    elif isinstance(value, int):
        n = value
    else:
        raise ConfigError(f"{key!r} must be a size in bytes")
    if n < MIN_STORE_QUOTA:
        raise ConfigError(f"{key!r} must be at least {MIN_STORE_QUOTA} bytes (16M)")
    return n


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
        elif k in ("auto_answer", "no_web", "stub"):
            if not isinstance(value, bool):
                raise ConfigError(f"{key!r} must be true or false")
            out[k] = value
        elif k == "log_level":
            if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
                raise ConfigError(f"log-level must be one of {', '.join(sorted(_LOG_LEVELS))}")
            out[k] = value.lower()
        elif k == "metrics":
            if not isinstance(value, str):
                raise ConfigError("'metrics' must be a string: ADDR:PORT or off")
            parse_metrics_address(value)
            out[k] = value.strip()
        elif k == "store_quota":
            out[k] = parse_size(value, key)
        elif k in ("compact_after", "compact_quiet", "tombstone_horizon"):
            try:
                number = int(value) if k == "compact_after" else float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key!r} must be a number, not {value!r}") from None
            if isinstance(value, bool) or not number > 0:
                raise ConfigError(f"{key!r} must be above 0")
            out[k] = number
        elif k == "mail_copies":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ConfigError(f"{key!r} must be a whole number 0..{MAX_MAIL_COPIES}")
            try:
                copies = int(value)
            except ValueError:
                raise ConfigError(f"{key!r} must be a whole number, not {value!r}") from None
            if not 0 <= copies <= MAX_MAIL_COPIES:
                raise ConfigError(f"{key!r} must be 0 (flood mail) to {MAX_MAIL_COPIES}")
            out[k] = copies
        elif k == "log_format":
            if not isinstance(value, str) or value.lower() not in LOG_FORMATS:
                raise ConfigError(f"log-format must be one of {', '.join(LOG_FORMATS)}")
            out[k] = value.lower()
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{key!r} must be a string")
            out[k] = value
    for a in out.get("admin", ()):
        if len(a) != 32 or any(c not in "0123456789abcdef" for c in a):
            raise ConfigError(f"admin {a!r}: expected a full NodeId (32 lowercase hex digits)")
    name = out.get("name")
    if name is not None and not 0 < len(name) <= MAX_NAME_LEN:
        # peers keep only MAX_NAME_LEN characters: a longer name would be shown cut everywhere else
        raise ConfigError(f"name must be 1 to {MAX_NAME_LEN} characters (other nodes see no "
                          f"more), not {len(name)}")
    if name is not None and not name.isprintable():
        raise ConfigError("name must not contain control or invisible formatting characters")
    for hp in out.get("listen", ()):
        parse_hostport(hp, default_port=DEFAULT_PORT)
    for hp in out.get("web", ()):
        parse_hostport(hp)
    if "web_local" in out:
        host, _ = parse_hostport(out["web_local"])
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"web-local {out['web_local']!r}: plain HTTP is served on "
                              "loopback only (use --web for HTTPS)")
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


def parse_metrics_address(value: str) -> tuple[str, int] | None:
    """``off`` → None; ``ADDR:PORT``, ``[V6]:PORT``, ``ADDR`` or ``:PORT`` → (host, port).

    A bare port or ``:PORT`` means loopback: the endpoint leaves loopback only when an
    address is named.
    """
    text = value.strip()
    if text.lower() == "off":
        return None
    if text.startswith(":"):
        text = "127.0.0.1" + text
    elif text.isdigit():
        text = f"127.0.0.1:{text}"
    return parse_hostport(text, default_port=DEFAULT_METRICS_PORT)
