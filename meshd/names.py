"""How a NODE typed by a person resolves to a NodeId (pure: no I/O).

The order, fixed by the command contract: a full NodeId (32 hex characters,
any case) is taken as is; else a hex prefix of exactly one known NodeId; else
a display name of exactly one known node (exact match first, then
case-insensitive after Unicode NFC normalisation).  When the query could mean
more than one node, the error lists every candidate, so that the user can
retype a longer prefix.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable

from meshd.core.errors import ControlError

__all__ = ["NODE_ID_HEX_LEN", "resolve_node"]

#: NodeId = 16 bytes, shown as 32 lowercase hex characters
NODE_ID_HEX_LEN = 32
_HEX = frozenset(string.hexdigits)
#: longest query considered at all (a display name is short)
_MAX_QUERY = 256


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _fold(name: str) -> str:
    return _norm(name).casefold()


def resolve_node(query: str, known: Iterable[tuple[str, str]]) -> str:
    """Resolve ``query`` against ``known`` (node_id_hex, display_name) to one lowercase NodeId hex.

    A well-formed full NodeId resolves even if unknown (the caller then reports
    it unreachable).  Raises ``ControlError`` with code ``bad_request`` (empty
    or overlong query), ``ambiguous`` (``data["candidates"]`` = sorted list of
    ``{"node_id", "name"}``) or ``not_found``.
    """
    q = query.strip()
    if not q or len(q) > _MAX_QUERY:
        raise ControlError("bad_request", "NODE must be 1 to 256 characters")
    names: dict[str, str] = {}
    for node_id, name in known:
        nid = node_id.lower()
        # keep a non-empty name if one source had it and another did not
        if nid not in names or (name and not names[nid]):
            names[nid] = name
    is_hex = all(c in _HEX for c in q)
    ql = q.lower()
    if is_hex and len(q) == NODE_ID_HEX_LEN:
        return ql

    by_prefix = sorted(nid for nid in names if ql and is_hex and nid.startswith(ql))
    if len(by_prefix) == 1:
        return by_prefix[0]

    nq = _norm(q)
    by_name = sorted(nid for nid, name in names.items() if name and _norm(name) == nq)
    if not by_name:
        fq = _fold(q)
        by_name = sorted(nid for nid, name in names.items() if name and _fold(name) == fq)
    if not by_prefix and len(by_name) == 1:
        return by_name[0]

    matches = sorted(set(by_prefix) | set(by_name))
    if len(matches) > 1:
        candidates = [{"node_id": nid, "name": names[nid]} for nid in matches]
        listing = ", ".join(f"{c['node_id'][:8]} ({c['name'] or '?'})" for c in candidates)
        raise ControlError("ambiguous", f"{query!r} matches {len(matches)} nodes: {listing}",
                           {"candidates": candidates})
    raise ControlError("not_found", f"no known node matches {query!r}", {"query": query})
