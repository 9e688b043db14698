"""meshctl library: the community library."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    ExitCode,
    Output,
    _clock,
    _global_options,
    _num,
    _positive_int,
    _str,
    _table,
    register,
)
from meshd.control.client import ControlClient
from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError
from meshd.core.tasks import cancel_and_wait

LIBRARY_BULK_TIMEOUT_S = 600.0


def _library_setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="add a document; prints its id")
    a.add_argument("--collection", required=True, metavar="C")
    a.add_argument("--title", required=True, metavar="T")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--body", metavar="TEXT")
    g.add_argument("--file", type=Path, metavar="PATH", help="read the body from PATH (UTF-8)")
    a.add_argument("--tag", action="append", default=[], metavar="X", help="repeatable")
    a.add_argument("--lang", metavar="L")
    e = sub.add_parser("edit", help="change a document's body or title")
    e.add_argument("id", metavar="ID", help="document id or a unique prefix (4+ hex)")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--body", metavar="TEXT")
    g.add_argument("--file", type=Path, metavar="PATH")
    g.add_argument("--title", metavar="T")
    sub.add_parser("show", help="print a document").add_argument("id", metavar="ID")
    s = sub.add_parser("search", help="ranked full-text search (any language)")
    s.add_argument("query", metavar="QUERY")
    s.add_argument("--collection", metavar="C")
    s.add_argument("--limit", type=_positive_int, default=10, metavar="N")
    sub.add_parser("history", help="who changed a document, and when").add_argument(
        "id", metavar="ID")
    imp = sub.add_parser("import", help="import a folder of Markdown files (the daemon reads "
                         "it); a folder imported before, here or elsewhere, is updated")
    imp.add_argument("dir", type=Path, metavar="DIR")
    imp.add_argument("--source", metavar="NAME",
                     help="the folder's import identity (default: its directory name); give "
                          "the same NAME to import a copy kept under another name")
    sub.add_parser("export", help="export the library as Markdown files (the daemon writes)"
                   ).add_argument("dir", type=Path, metavar="DIR")
    sub.add_parser("delete", help="delete a document everywhere (a tombstone: history kept, "
                   "an authority can restore it)").add_argument("id", metavar="ID")
    sub.add_parser("restore", help="restore a deleted document (authority keys only)"
                   ).add_argument("id", metavar="ID")
    ls = sub.add_parser("list", help="documents by collection and title")
    ls.add_argument("--collection", metavar="C")
    ls.add_argument("--deleted", action="store_true", help="include deleted documents")
    sub.add_parser("version", help="this node's library version (digest of document heads "
                   "per collection)")
    rp = sub.add_parser("repair", help="one-time repair: delete duplicate documents (same "
                        "collection and title) that earlier imports created, keeping the newest")
    rp.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    for sp in sub.choices.values():
        _global_options(sp, suppress=True)


def _read_body(args: argparse.Namespace) -> str | None:
    if getattr(args, "file", None) is not None:
        try:
            return str(args.file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ControlError("bad_request", f"cannot read {args.file}: {exc}") from None
    body = getattr(args, "body", None)
    return body if isinstance(body, str) else None


async def _with_progress(client: ControlClient, method: str, params: dict[str, Any],
                         out: Output) -> Any:
    """Call ``method`` while drawing its ``library.progress`` events on stderr (not with --json)."""
    if out.json:
        return await client.call(method, params, timeout=LIBRARY_BULK_TIMEOUT_S)
    sub = await client.subscribe(["library.progress"])

    async def draw() -> None:
        width = 30
        async for _event, data in sub:
            done, total = data.get("done"), data.get("total")
            if not isinstance(done, int) or not isinstance(total, int) or total <= 0:
                continue
            filled = width * min(done, total) // total
            out.err.write(f"\r{_str(data.get('phase')):<8} [{'#' * filled}{'.' * (width - filled)}]"
                          f" {done}/{total} {_str(data.get('path') or '')[-30:]:<30}")
            out.err.flush()

    task = asyncio.create_task(draw())
    try:
        return await client.call(method, params, timeout=LIBRARY_BULK_TIMEOUT_S)
    finally:
        await cancel_and_wait(task, NoDaemon)
        out.err.write("\r" + " " * 90 + "\r")
        out.err.flush()


def _show_document(d: dict[str, Any], out: Output) -> None:
    out.line(f"{_str(d.get('title'))}  [{_str(d.get('collection'))}]"
             + ("  (deleted)" if d.get("deleted") else ""))
    out.line(f"id {_str(d.get('doc_id'))}  tags {_str(d.get('tags') or None)}  "
             f"lang {_str(d.get('lang') or None)}  updated {_clock(d.get('updated_ms'))}  "
             f"changes {_str(d.get('changes'))}")
    out.line("")
    out.line(str(d.get("body", "")))


@register("library", "the community library: add, edit, show, search, history, import, "
          "export, delete, restore, list, version, repair",
          _library_setup)
async def _library(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    act = args.action
    res: Any
    if act == "add":
        params = {"collection": args.collection, "title": args.title, "body": _read_body(args),
                  "tags": args.tag}
        if args.lang:
            params["lang"] = args.lang
        res = await client.call("library.add", params, timeout=CALL_TIMEOUT_S * 3)
        if out.json:
            out.document(res)
        else:
            out.line(str(res.get("doc_id")))
        return ExitCode.OK
    if act == "edit":
        params = {"id": args.id}
        body = _read_body(args)
        if body is not None:
            params["body"] = body
        if args.title is not None:
            params["title"] = args.title
        res = await client.call("library.edit", params, timeout=CALL_TIMEOUT_S * 3)
        if out.json:
            out.document(res)
        else:
            out.line(f"edited {_str(res.get('doc_id'))} ({_str(res.get('ops'))} op(s))")
        return ExitCode.OK
    if act == "show":
        res = await client.call("library.show", {"id": args.id}, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            _show_document(res, out)
        return ExitCode.OK
    if act == "search":
        params = {"query": args.query, "limit": args.limit}
        if args.collection:
            params["collection"] = args.collection
        res = await client.call("library.search", params, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        hits = res.get("results") or []
        if not hits:
            out.line("no results")
        for h in hits:
            out.line(f"{str(h.get('doc_id'))[:12]}  [{_str(h.get('collection'))}] "
                     f"{_str(h.get('title'))}")
            out.line("    " + " ".join(str(h.get("snippet", "")).split()))
        return ExitCode.OK
    if act == "history":
        res = await client.call("library.history", {"id": args.id}, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        rows = [(_clock(h.get("time_ms")), str(h.get("author", ""))[:8],
                 _str(h.get("author_name") or None), _str(h.get("kind")),
                 ",".join(h.get("fields") or []) or "-",
                 f"+{_str(h.get('inserted'))}/-{_str(h.get('deleted'))}")
                for h in res.get("history") or []]
        for text in _table(rows, ("TIME", "AUTHOR", "NAME", "KIND", "FIELDS", "BODY")):
            out.line(text)
        return ExitCode.OK
    if act in ("delete", "restore"):
        res = await client.call(f"library.{act}", {"id": args.id}, timeout=CALL_TIMEOUT_S * 3)
        if out.json:
            out.document(res)
        else:
            out.line(f"{'deleted' if act == 'delete' else 'restored'} "
                     f"{_str(res.get('doc_id'))} {_str(res.get('title'))}")
        return ExitCode.OK
    if act == "list":
        params = {"deleted": bool(args.deleted)}
        if args.collection:
            params["collection"] = args.collection
        res = await client.call("library.list", params, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        docs = res.get("documents") or []
        if not docs:
            out.line("no documents")
        doc_rows = [(str(d.get("doc_id", ""))[:12], _str(d.get("collection")),
                 _str(d.get("title")) + ("  (deleted)" if d.get("deleted") else ""),
                 _str(d.get("lang") or None), _clock(d.get("updated_ms"))) for d in docs]
        for text in _table(doc_rows, ("ID", "COLLECTION", "TITLE", "LANG", "UPDATED")):
            out.line(text)
        return ExitCode.OK
    if act == "version":
        res = await client.call("library.version", timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        out.line(f"library version {_str(res.get('version'))}")
        for coll, v in sorted((res.get("collections") or {}).items()):
            out.line(f"    {coll}: {_str(v.get('version'))} ({_str(v.get('documents'))} "
                     "documents)")
        return ExitCode.OK
    if act == "repair":
        res = await client.call("library.repair", {"dry_run": bool(args.dry_run)},
                                timeout=LIBRARY_BULK_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        for g in res.get("groups") or []:
            out.line(f"[{_str(g.get('collection'))}] {_str(g.get('title'))}: keep "
                     f"{str(g.get('kept'))[:12]}, delete "
                     f"{', '.join(str(x)[:12] for x in g.get('deleted') or [])}")
        verb = "would delete" if res.get("dry_run") else "deleted"
        out.line(f"{verb} {_str(res.get('deleted'))} duplicate(s)")
        return ExitCode.OK
    method = "library.import" if act == "import" else "library.export"
    call_params: dict[str, Any] = {"path": str(args.dir.absolute())}
    if act == "import" and args.source is not None:
        call_params["source"] = args.source
    res = await _with_progress(client, method, call_params, out)
    # an import where some files had errors did not do all it was asked: exit 1
    rc = ExitCode.FAILED if res.get("errors") else ExitCode.OK
    if out.json:
        out.document(res)
        return rc
    out.line(f"{act} {_str(res.get('path'))}: {_str(res.get('summary'))} "
             f"in {_num(res.get('elapsed_s'), 2)} s")
    for e in res.get("errors") or []:
        out.error(f"{_str(e.get('path'))}: {_str(e.get('error'))}")
    return rc
