"""Dealer workflow: import a folder of Markdown documents, export the library to one.

Theory of operation
-------------------
Each ``.md`` file is one document.  A front matter block between ``---``
lines gives ``title``, ``collection``, ``tags`` (``[a, b]`` or ``- a`` lines),
``lang`` and, in exported files, ``id`` (32 hex characters).  Without an ``id``
the document id is derived from the importing author and the file's path
relative to the folder and the folder's *source* name (``--source``, by
default the directory's name), never from who imports: importing the same
folder again, here or at another node, updates the same documents instead of
adding copies.  New documents get *seeded* bodies
(``Library.prepare_seeded_create``): two nodes importing the same file build
the same Yjs items, so after sync there is one document with one copy of the
text.  Export writes the ``id`` back, so export, edit, import round-trips.
Imports before this scheme derived ids from the importing author
(``legacy_doc_id``): when a file's document is new, the live copies those
imports made of it are deleted (``merged`` in the summary).

``plan_import`` compares every file with the library and returns the ops to
sign, in order (``library.create`` for new documents, ``library.edit`` for
changed ones, more than one for a long body; unchanged files produce nothing) and a summary of what changed.
``export_folder`` writes ``<collection>/<title>-<id8>.md`` for every live
document and rewrites only files whose content differs.  Both report progress
through a callback (``TextProgress`` draws a bar on a terminal).

Files are read in sorted order; a file that is too large, not UTF-8 or has a
malformed front matter is skipped and listed in the summary's errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from library_replica.documents import Library
from library_replica.ops import LibraryError, new_doc_id
from meshd.core.errors import LocalProtocolError

__all__ = [
    "SAMPLE_DIR",
    "ExportSummary",
    "ImportOp",
    "ImportSummary",
    "MarkdownDoc",
    "Progress",
    "TextProgress",
    "default_source",
    "export_folder",
    "import_doc_id",
    "legacy_doc_id",
    "parse_markdown",
    "plan_import",
    "render_markdown",
]

MAX_FILE_BYTES = 1024 * 1024
#: the bilingual sample library shipped with the package (demo loads)
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
DEFAULT_COLLECTION = "know-how"

#: progress(done, total, current path)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class MarkdownDoc:
    """One parsed Markdown file."""

    title: str
    collection: str
    tags: tuple[str, ...]
    lang: str
    body: str
    doc_id: bytes | None  # from the front matter's ``id``, if any


@dataclass(frozen=True, slots=True)
class ImportOp:
    """An op to sign and submit: kind, document id, body."""

    kind: str
    doc_id: bytes
    body: bytes
    path: str


@dataclass(slots=True)
class ImportSummary:
    """What an import changed."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    #: ids of copies earlier imports made of the same files, now deleted
    merged: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One human line, e.g. ``3 added, 1 changed, 12 unchanged, 0 errors``."""
        return (f"{len(self.added)} added, {len(self.changed)} changed, "
                f"{len(self.unchanged)} unchanged, {len(self.errors)} errors"
                + (f", {len(self.merged)} earlier copies merged" if self.merged else ""))


@dataclass(slots=True)
class ExportSummary:
    """What an export wrote."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One human line."""
        return (f"{len(self.added)} added, {len(self.changed)} changed, "
                f"{len(self.unchanged)} unchanged")


class TextProgress:
    """A progress callback drawing ``[#####.....] 12/40 path`` on a terminal stream."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self._stream = stream
        self._width = width

    def __call__(self, done: int, total: int, path: str) -> None:
        filled = self._width * done // total if total else self._width
        bar = "#" * filled + "." * (self._width - filled)
        end = "\n" if done >= total else ""
        self._stream.write(f"\r[{bar}] {done}/{total} {path[-40:]:<40}{end}")
        self._stream.flush()


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1]
    return v


def _split_list(v: str) -> list[str]:
    inner = v.strip()[1:-1]
    return [t for t in (_unquote(x) for x in inner.split(",")) if t]


def parse_markdown(text: str) -> MarkdownDoc:
    """Parse one Markdown document with optional front matter; raises ``LibraryError``."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    meta: dict[str, str | list[str]] = {}
    body = text
    if text.startswith("---\n"):
        end = text.find("\n---", 3)
        if end < 0:
            raise LibraryError("front matter is not closed")
        block = text[4:end]
        body = text[end + 4 :].removeprefix("\n")
        key: str | None = None
        for raw in block.split("\n"):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            item = re.match(r"^\s*-\s+(.*)$", raw)
            if item and key is not None:
                cur = meta.setdefault(key, [])
                if not isinstance(cur, list):
                    raise LibraryError(f"front matter: {key} mixes a value and a list")
                cur.append(_unquote(item.group(1)))
                continue
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:\s*(.*)$", raw)
            if not m:
                raise LibraryError(f"front matter line not understood: {raw[:40]!r}")
            key, value = m.group(1).lower(), m.group(2).strip()
            if value.startswith("[") and value.endswith("]"):
                meta[key] = _split_list(value)
            elif value:
                meta[key] = _unquote(value)
    title = meta.get("title", "")
    collection = meta.get("collection", DEFAULT_COLLECTION)
    lang = meta.get("lang", "")
    tags = meta.get("tags", [])
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(title, str) or not isinstance(collection, str) or not isinstance(lang, str):
        raise LibraryError("front matter: title, collection and lang are single values")
    if not title:
        heading = re.search(r"^#\s+(.+)$", body, re.MULTILINE)
        title = heading.group(1).strip() if heading else ""
    if not title:
        raise LibraryError("no title (front matter or a '# ' heading)")
    doc_id: bytes | None = None
    raw_id = meta.get("id")
    if raw_id is not None:
        if not isinstance(raw_id, str) or not re.fullmatch(r"[0-9a-f]{32}", raw_id):
            raise LibraryError("front matter: id is 32 lowercase hex characters")
        doc_id = bytes.fromhex(raw_id)
    return MarkdownDoc(title, collection, tuple(dict.fromkeys(tags)), lang, body, doc_id)


def render_markdown(doc_id: bytes, title: str, collection: str, tags: tuple[str, ...],
                    lang: str, body: str) -> str:
    """The Markdown text of a document, front matter first (``parse_markdown`` reads it back)."""

    def q(s: str) -> str:
        return '"' + s.replace('"', "'") + '"'

    lines = ["---", f"id: {doc_id.hex()}", f"title: {q(title)}", f"collection: {collection}",
             "tags: [" + ", ".join(q(t.replace(",", " ")) for t in tags) + "]"]
    if lang:
        lines.append(f"lang: {lang}")
    lines.append("---")
    return "\n".join(lines) + "\n" + body + ("" if body.endswith("\n") else "\n")


def _walk(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Relative paths of the ``.md`` files under ``folder``, never through a symbolic link.

    Symbolic links are not followed (a link to a password file must not be
    replicated mesh-wide): one that leads outside the folder is listed as an
    error; one that stays inside is skipped, its target is imported by its own path.
    """
    root = folder.resolve()
    files: list[str] = []
    errors: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = base / name
            if not p.is_symlink() or not (name.endswith(".md") or name in dirnames):
                continue
            rel = p.relative_to(root).as_posix()
            if not p.resolve().is_relative_to(root):
                errors.append((rel, "symbolic link out of the folder: not followed"))
        files += [(base / f).relative_to(root).as_posix() for f in filenames
                  if f.endswith(".md") and not (base / f).is_symlink()]
    return sorted(files), errors


def _read_nofollow(path: Path) -> bytes:
    """The bytes of a regular file, refusing a symbolic link (``O_NOFOLLOW``) or a huge file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LibraryError("symbolic link: not followed") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise LibraryError("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise LibraryError(f"larger than {MAX_FILE_BYTES} bytes")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise LibraryError(f"larger than {MAX_FILE_BYTES} bytes")
    return data


def import_doc_id(source: str, rel: str) -> bytes:
    """The document id of the file at ``rel`` (a POSIX path) in the folder named ``source``."""
    return new_doc_id(b"import/2\x00" + source.encode("utf-8") + b"\x00" + rel.encode("utf-8"))


def legacy_doc_id(author: bytes, rel: str) -> bytes:
    """The id an import made before ``import_doc_id`` (per importing author: copies)."""
    return new_doc_id(b"md\x00" + author + rel.encode())


def default_source(folder: Path) -> str:
    """The import identity of a folder when none is given: its name."""
    return folder.resolve().name


def plan_import(library: Library, author: bytes, folder: Path,
                progress: Progress | None = None, *, source: str | None = None,
                may_restore: bool = True) -> tuple[list[ImportOp], ImportSummary]:
    """Op bodies that bring the library in line with ``folder``, and a summary.

    ``source`` names the folder (default: its directory name); ``may_restore``
    False reports files whose document was deleted as errors instead of restoring them.
    """
    source = default_source(folder) if source is None else source
    creators = library.create_authors()
    files, link_errors = _walk(folder)
    root = folder.resolve()
    summary = ImportSummary()
    summary.errors += link_errors
    ops: list[ImportOp] = []
    for n, rel in enumerate(files, 1):
        path = root / rel
        try:
            try:
                text = _read_nofollow(path).decode("utf-8")
            except UnicodeDecodeError:
                raise LibraryError("not UTF-8") from None
            md = parse_markdown(text)
            body = md.body
            doc_id = md.doc_id or import_doc_id(source, rel)
            current = library.get(doc_id)
            if current is None:
                ops += [ImportOp(p.kind, doc_id, p.body, rel)
                        for p in library.prepare_seeded_create(
                            doc_id, collection=md.collection, title=md.title, body=body,
                            tags=md.tags, lang=md.lang)]
                summary.added.append(rel)
                # copies an earlier import made of this file (ids per importing author)
                for old in sorted(legacy_doc_id(a, rel) for a in creators):
                    d = library.get(old)
                    if d is not None and not d.deleted and old != doc_id:
                        p = library.prepare_delete()
                        ops.append(ImportOp(p.kind, old, p.body, rel))
                        summary.merged.append(old.hex())
            elif current.deleted and not may_restore:
                raise LibraryError("deleted in the library: an authority can restore it "
                                   "(meshctl library restore)")
            else:
                if not current.body.endswith("\n") and body.endswith("\n"):
                    body = body[:-1]  # the newline export adds after a body without one
                new_body = body if body != current.body else None
                title = md.title if md.title != current.title else None
                coll = md.collection if md.collection != current.collection else None
                tags = md.tags if md.tags != current.tags else None
                lang = md.lang if md.lang != current.lang else None
                if (new_body, title, coll, tags, lang) == (None,) * 5 and not current.deleted:
                    summary.unchanged.append(rel)
                else:
                    if current.deleted:  # the folder has it: bring it back
                        p = library.prepare_delete(restore=True)
                        ops.append(ImportOp(p.kind, doc_id, p.body, rel))
                    if (new_body, title, coll, tags, lang) != (None,) * 5:
                        ops += [ImportOp(p.kind, doc_id, p.body, rel)
                                for p in library.prepare_edit(doc_id, author, body=new_body,
                                                              title=title, collection=coll,
                                                              tags=tags, lang=lang)]
                    summary.changed.append(rel)
        except (LibraryError, LocalProtocolError, OSError) as exc:
            summary.errors.append((rel, str(exc)))
        if progress is not None:
            progress(n, len(files), rel)
    return ops, summary


def _slug(title: str) -> str:
    s = re.sub(r"[^\w]+", "-", title, flags=re.UNICODE).strip("-_")
    return s[:40] or "document"


def _existing(path: Path) -> bytes | None:
    """The current bytes of an exported file; None if absent or not a plain file (a link)."""
    try:
        return _read_nofollow(path)
    except FileNotFoundError:
        return None
    except LibraryError:
        return None


def _write_fresh(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a new file renamed over it: never through a link.

    The temporary file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``; the rename
    replaces a pre-placed symbolic link itself instead of writing where it points.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _collection_dir(folder: Path, collection: str) -> Path:
    """``folder/collection``, created if missing; refused if it is a symbolic link."""
    d = folder / collection
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        os.mkdir(d, 0o755)
        return d
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise LibraryError(f"{collection}/ in the export folder is a symbolic link or not a "
                           "directory: refusing to write through it")
    return d


def export_folder(library: Library, folder: Path,
                  progress: Progress | None = None) -> ExportSummary:
    """Write every live document to ``folder/<collection>/<title>-<id8>.md``.

    Never writes through a symbolic link placed in the folder (see ``_write_fresh``);
    a collection directory that is a link is refused (``LibraryError``).
    """
    docs = sorted(library.documents(), key=lambda d: (d.collection, d.title, d.doc_id))
    summary = ExportSummary()
    folder.mkdir(parents=True, exist_ok=True)
    for n, d in enumerate(docs, 1):
        rel = f"{d.collection}/{_slug(d.title)}-{d.doc_id.hex()[:8]}.md"
        path = _collection_dir(folder, d.collection) / rel.split("/", 1)[1]
        data = render_markdown(d.doc_id, d.title, d.collection, d.tags, d.lang,
                               d.body).encode("utf-8")
        existed = os.path.lexists(path)
        if existed and _existing(path) == data:
            summary.unchanged.append(rel)
        else:
            _write_fresh(path, data)
            (summary.changed if existed else summary.added).append(rel)
        if progress is not None:
            progress(n, len(docs), rel)
    return summary
