"""How a NODE typed by a person resolves to a NodeId (pure: no I/O).

Theory of operation
-------------------
A name must always reach the node it names (DESIGN.md, "meshctl"), so the
order is fixed by the command contract:

1. a full NodeId (32 hex characters, any case) is taken as is;
2. else the display name of a known node: an exact match after Unicode NFC
   normalisation, else a case-insensitive one;
3. else a unique hex prefix of at least ``MIN_PREFIX_LEN`` digits (as git
   asks for at least 4), so that a one-letter name such as ``e`` can never be
   taken for an id prefix.

A query that is both a name and an id prefix is looked up both ways: when the
two (or two names, or two prefixes) point at different nodes, the query is
``ambiguous`` and the error lists every candidate (name and short id) — the
resolver never picks one silently, because a node whose id was ground to
start with someone's name must not receive that person's messages.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable

from meshd.core.errors import ControlError

__all__ = ["MIN_PREFIX_LEN", "NODE_ID_HEX_LEN", "resolve_node"]

#: NodeId = 16 bytes, shown as 32 lowercase hex characters
NODE_ID_HEX_LEN = 32
#: shortest id prefix accepted, in hex digits (git's minimum abbreviation)
MIN_PREFIX_LEN = 4
_HEX = frozenset(string.hexdigits)
#: longest query considered at all (a display name is short)
_MAX_QUERY = 256


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _fold(name: str) -> str:
    return _norm(name).casefold()


def _by_name(q: str, names: dict[str, str]) -> list[str]:
    """Nodes whose display name is ``q``: exact (NFC) matches, else case-insensitive ones."""
    nq = _norm(q)
    exact = sorted(nid for nid, name in names.items() if name and _norm(name) == nq)
    if exact:
        return exact
    fq = _fold(q)
    return sorted(nid for nid, name in names.items() if name and _fold(name) == fq)


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

    by_name = _by_name(q, names)
    by_prefix = (sorted(nid for nid in names if nid.startswith(ql))
                 if is_hex and len(q) >= MIN_PREFIX_LEN else [])
    matches = sorted(set(by_name) | set(by_prefix))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        candidates = [{"node_id": nid, "name": names[nid]} for nid in matches]
        listing = ", ".join(f"{c['name'] or '?'} ({c['node_id'][:8]})" for c in candidates)
        raise ControlError("ambiguous", f"{query!r} matches {len(matches)} nodes: {listing}; "
                                        "give a longer id prefix or the full NodeId",
                           {"candidates": candidates})
    hint = (f"; an id prefix needs at least {MIN_PREFIX_LEN} hex digits"
            if is_hex and len(q) < MIN_PREFIX_LEN else "")
    raise ControlError("not_found", f"no known node matches {query!r}{hint}", {"query": query})
