"""Ops a browser signed with its own key and handed to its car (``safety.publish``,
``library.publish``, ``mail.publish``): the parameter checks those control methods
share, so a forged or malformed op gets the same clear refusal everywhere."""

from __future__ import annotations

from typing import Any

from meshd.core.errors import ControlError, RemoteProtocolError
from sync.envelope import MAX_OP_SIZE, Op, decode_op

__all__ = ["bad_request", "decode_submitted_op", "hex_param"]


def bad_request(msg: str) -> ControlError:
    return ControlError("bad_request", msg)


def hex_param(params: dict[str, Any], name: str, size: int, *,
              optional: bool = False) -> bytes | None:
    """``params[name]`` as ``size`` bytes given in hex (None if absent and ``optional``)."""
    v = params.get(name)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) != 2 * size:
        raise bad_request(f"{name} is {2 * size} hex characters")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise bad_request(f"{name} is {2 * size} hex characters") from None


def decode_submitted_op(raw_hex: object) -> Op:
    """The signed op in ``raw_hex``, verified; refused with a reason a person can read."""
    if not isinstance(raw_hex, str) or len(raw_hex) > 2 * MAX_OP_SIZE:
        raise bad_request("op is the hex of one signed op")
    try:
        raw = bytes.fromhex(raw_hex)
    except ValueError:
        raise bad_request("op is the hex of one signed op") from None
    try:
        return decode_op(raw)
    except RemoteProtocolError as exc:
        if exc.reason == "signature":
            raise bad_request("forged op refused: its signature does not verify for the key "
                              "it names as its author") from None
        raise bad_request(f"not a signed op ({exc})") from None
