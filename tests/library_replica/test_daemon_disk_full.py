"""A real daemon whose state directory is a small tmpfs filled to the last byte (as root).

Issue 11, item 8: a write on a full disk is refused as "disk full" (exit 1), the node
restarts on a disk that is still full (reads, links and relaying go on), and once
space is freed writes work again without a restart.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import Cluster, Daemon, free_udp_port, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "8m") -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "carmesh-test",
                    str(where)], check=True, timeout=10)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=10)


def fill(mount: Path) -> Path:
    """Write a file until the file system has no byte left; returns it."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 512, 1):  # the last bytes in ever smaller pieces
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass
    st = os.statvfs(mount)
    assert st.f_bavail == 0
    return filler


def _search(d: Daemon, query: str) -> list[str]:
    rc, res = d.meshctl("library", "search", query)
    assert rc == 0, res
    return sorted(r["title"] for r in res["results"])


def _add(d: Daemon, title: str, body: str) -> tuple[int, Any]:
    return d.meshctl("library", "add", "--collection", "work", "--title", title, "--body", body,
                     timeout=60)


def test_full_disk_refuses_writes_clearly_and_starts_read_only() -> None:
    with Cluster(log_level="info") as cl, small_tmpfs(cl.root / "a") as mount:
        pa, pb = free_udp_port(), free_udp_port()
        flags = ["--no-web", "--metrics", "off"]
        b = cl.add("b", ["--listen", f"127.0.0.1:{pb}", *flags])
        a = cl.add("a", ["--listen", f"127.0.0.1:{pa}", "--peer", f"127.0.0.1:{pb}", *flags])
        a.wait_ready()
        b.wait_ready()
        wait_until(lambda: "b" in a.neighbours(), 20, what="a links to b")
        rc, res = _add(a, "shelter", "体育館は避難所です")
        assert rc == 0, res
        filler = fill(mount)

        # a write: refused as what it is, exit 1 (was "OperationalError: database or disk
        # is full")
        rc, res = _add(a, "water", "給水は公園で。" * 500)
        assert rc == 1, res
        assert res["error"]["message"].startswith("disk full"), res
        assert res["error"]["data"]["disk_full"] is True

        # a restart on the still full disk (was: a crash in OpStore.open)
        assert a.stop() == 0
        a.start()
        status = a.wait_ready(30)
        assert status["ready"]
        wait_until(lambda: "b" in a.neighbours(), 20, what="a links to b on a full disk")
        assert _search(a, "避難所") == ["shelter"]  # reads are served
        rc, res = _add(a, "water", "給水は公園で。" * 500)
        assert rc == 1 and res["error"]["message"].startswith("disk full"), res
        rc, res = a.meshctl("ping", "b", "--count", "1")
        assert rc == 0, res

        # room again: writes work and are found, without a restart
        filler.unlink()
        rc, res = _add(a, "water", "給水は公園で。" * 500)
        assert rc == 0, res
        assert _search(a, "給水") == ["water"]
        wait_until(lambda: _search(b, "給水") == ["water"], 30, what="b has the new document")
        assert "Traceback" not in a.log()
