"""Wire codec: MessagePack with size limits before decoding and strict types after.

Every decoder in carmesh takes untrusted bytes.  ``unpack`` refuses input over
``max_size`` before parsing and caps every container and string inside it, so a
hostile peer can neither make us allocate much nor nest deeply.  After parsing,
``Fields`` reads a map with strict types (``bool`` is not an ``int``; ``str`` is
not ``bytes``), raising ``DecodeError`` on any mismatch.  ``DropCounter`` is
what the receive paths use to count what they refuse and log each reason once.
"""

from __future__ import annotations

import builtins
import logging
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgpack

from meshd.core.errors import DecodeError

__all__ = ["DropCounter", "Fields", "pack", "unpack"]

#: nesting cap: our messages are at most a few levels deep
MAX_DEPTH = 8


def pack(obj: Any) -> bytes:
    """Encode ``obj`` (maps, lists, str, bytes, int, float, bool, None) as MessagePack."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _depth_ok(obj: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


def unpack(data: bytes, max_size: int, *, max_items: int = 4096) -> Any:
    """Decode one MessagePack object of at most ``max_size`` bytes.

    Raises ``DecodeError`` for anything oversized, truncated, trailing, using
    extension types, non-string map keys, or nested deeper than ``MAX_DEPTH``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("type", "not bytes")
    if len(data) > max_size:
        raise DecodeError("oversize", f"{len(data)} > {max_size}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_items,
            max_map_len=max_items,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError("malformed", type(exc).__name__) from None
    if not _depth_ok(obj):
        raise DecodeError("malformed", "too deep")
    return obj


class Fields:
    """Strictly typed reader over a decoded map; every accessor raises ``DecodeError``."""

    __slots__ = ("_m",)

    def __init__(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise DecodeError("type", "expected a map")
        self._m: Mapping[str, Any] = obj

    def _get(self, key: builtins.str, optional: builtins.bool) -> Any:
        if key not in self._m:
            if optional:
                return None
            raise DecodeError("missing", key)
        return self._m[key]

    def int(self, key: builtins.str, lo: builtins.int = 0, hi: builtins.int = 2**64 - 1) -> builtins.int:
        v = self._get(key, False)
        if type(v) is not int or not lo <= v <= hi:
            raise DecodeError("field", f"{key}: int in [{lo}, {hi}]")
        return v

    def opt_int(self, key: builtins.str, lo: builtins.int = 0, hi: builtins.int = 2**64 - 1) -> builtins.int | None:
        return None if self._m.get(key) is None else self.int(key, lo, hi)

    def float(self, key: builtins.str) -> builtins.float:
        v = self._get(key, False)
        if type(v) not in (int, float):
            raise DecodeError("field", f"{key}: number")
        f = float(v)
        if not math.isfinite(f):
            raise DecodeError("field", f"{key}: finite number")
        return f

    def bool(self, key: builtins.str) -> builtins.bool:
        v = self._get(key, False)
        if type(v) is not bool:
            raise DecodeError("field", f"{key}: bool")
        return v

    def bytes(self, key: builtins.str, *, size: builtins.int | None = None, max_len: builtins.int = 65536) -> builtins.bytes:
        v = self._get(key, False)
        if type(v) is not bytes:
            raise DecodeError("field", f"{key}: bytes")
        if size is not None and len(v) != size:
            raise DecodeError("field", f"{key}: {size} bytes")
        if len(v) > max_len:
            raise DecodeError("field", f"{key}: at most {max_len} bytes")
        return v

    def opt_bytes(self, key: builtins.str, *, size: builtins.int | None = None, max_len: builtins.int = 65536) -> builtins.bytes | None:
        return None if self._m.get(key) is None else self.bytes(key, size=size, max_len=max_len)

    def str(self, key: builtins.str, *, max_len: builtins.int = 256) -> builtins.str:
        v = self._get(key, False)
        if type(v) is not str or len(v) > max_len:
            raise DecodeError("field", f"{key}: str of at most {max_len}")
        return v

    def opt_str(self, key: builtins.str, *, max_len: builtins.int = 256) -> builtins.str | None:
        return None if self._m.get(key) is None else self.str(key, max_len=max_len)

    def list(self, key: builtins.str, *, max_len: builtins.int = 1024) -> builtins.list[Any]:
        v = self._get(key, False)
        if type(v) is not list or len(v) > max_len:
            raise DecodeError("field", f"{key}: list of at most {max_len}")
        return v

    def map(self, key: builtins.str) -> Fields:
        return Fields(self._get(key, False))

    def raw(self, key: builtins.str) -> Any:
        return self._get(key, False)


class DropCounter:
    """Counts refused input by reason; logs the first occurrence of each (reason, peer) once.

    Repeated peer-caused warnings are not logged again (python-zeroconf's
    ``log_warning_once`` idea): a hostile peer cannot flood the log.
    """

    def __init__(self, logger: logging.Logger, max_logged: int = 1024) -> None:
        self.counts: Counter[str] = Counter()
        #: drops per (reason, peer), for the first ``max_logged`` pairs (later pairs: counts only)
        self.by_peer: Counter[tuple[str, str]] = Counter()
        self._logger = logger
        self._logged: set[tuple[str, str]] = set()
        self._max_logged = max_logged

    def drop(self, reason: str, peer: str = "", detail: str = "") -> None:
        """Count one refused input; log it if this (reason, peer) was not logged yet."""
        self.counts[reason] += 1
        key = (reason, peer)
        if key in self.by_peer or len(self.by_peer) < self._max_logged:
            self.by_peer[key] += 1
        if key not in self._logged and len(self._logged) < self._max_logged:
            self._logged.add(key)
            self._logger.warning("%sdropped (%s) %s [further drops of this kind are counted, not logged]",
                                 f"[{peer}] " if peer else "", reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
