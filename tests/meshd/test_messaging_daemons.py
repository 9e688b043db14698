"""Delivered means stored: real ``meshd`` daemons on loopback, real ``meshctl send``.

A receiver killed with SIGKILL right after senders printed "delivered" has every
one of those messages after its restart; a receiver that cannot write its inbox
acknowledges nothing, the sender says so (exit 1) and ``status`` shows the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from meshd.control.client import ControlClient
from meshd.core.errors import ControlError
from meshd.paths import default_socket_path
from tests.daemons import MESHCTL, Cluster, Daemon, free_udp_port, wait_until

pytestmark = pytest.mark.slow


def _pair(cl: Cluster) -> tuple[Daemon, Daemon, list[str]]:
    pa, pb = free_udp_port(), free_udp_port()
    b_args = ["--listen", f"127.0.0.1:{pb}"]
    a = cl.add("ann", ["--listen", f"127.0.0.1:{pa}", "--peer", f"127.0.0.1:{pb}"])
    b = cl.add("bob", b_args)
    a.wait_ready()
    b.wait_ready()
    wait_until(lambda: "bob" in a.neighbours() and "ann" in b.neighbours(), 20, what="link")
    wait_until(lambda: a.meshctl("send", "bob", "hello", "--timeout", "5")[0] == 0, 30,
               what="a route from ann to bob")
    return a, b, b_args


def _send_cmd(a: Daemon, text: str) -> list[str]:
    return [*MESHCTL, "--state-dir", str(a.state_dir), "--json", "send", "bob", text,
            "--timeout", "20"]


async def test_receiver_killed_right_after_delivered_loses_nothing() -> None:
    """200 sends at once through ann's control socket; bob is killed (-9) the moment 50 are
    acknowledged, while the rest are in flight."""
    with Cluster(log_level="info") as cl:
        loop = asyncio.get_running_loop()
        a, b, b_args = await loop.run_in_executor(None, _pair, cl)
        n, kill_at = 200, 50
        delivered: list[str] = []
        enough = asyncio.Event()

        async def send(client: ControlClient, text: str) -> None:
            with contextlib.suppress(ControlError):
                res = await client.call("send", {"node": "bob", "text": text, "timeout": 20.0})
                if res["status"] == "delivered":
                    delivered.append(text)
                    if len(delivered) >= kill_at:
                        enough.set()

        async with await ControlClient.connect(default_socket_path(a.state_dir)) as client:
            sends = [loop.create_task(send(client, f"note {i}")) for i in range(n)]
            await asyncio.wait_for(enough.wait(), 60)
            b.kill9()
            seen_at_kill = len(delivered)
            await asyncio.gather(*sends)
        assert seen_at_kill >= kill_at
        b.args = b_args
        b.start()
        await loop.run_in_executor(None, b.wait_ready)
        rc, inbox = b.meshctl("messages")
        assert rc == 0
        stored = [m["text"] for m in inbox["messages"]]
        missing = sorted(set(delivered) - set(stored))
        assert not missing, f"{len(missing)} of {len(delivered)} delivered messages lost: {missing}"
        assert len(stored) == len(set(stored)), "a message stored twice"


def test_inbox_that_cannot_be_written_is_not_acknowledged(tmp_path: Path) -> None:
    with Cluster(log_level="info") as cl:
        a, b, _ = _pair(cl)
        inbox = b.state_dir / "messages.jsonl"
        inbox.unlink()
        inbox.mkdir()  # appending to it fails (EISDIR), even as root
        for text in ("lost 1", "lost 2"):
            r = subprocess.run(_send_cmd(a, text), capture_output=True, timeout=40, check=False)
            assert r.returncode == 1, (r.stdout, r.stderr)
            err = json.loads(r.stdout)["error"]
            assert err["code"] == "failed" and "could not store" in err["message"], err
            assert err["data"]["why"] == "io_error" and err["data"]["name"] == "bob"
        rc, status = b.meshctl("status")
        assert rc == 0 and "messages.jsonl" in status["inbox_error"]
        assert b.log().count("cannot store received messages") == 1  # logged once
        rc, msgs = b.meshctl("messages")
        assert [m["text"] for m in msgs["messages"]] == ["hello"]  # the one before
        shutil.rmtree(inbox)
        rc, res = a.meshctl("send", "bob", "stored again", "--timeout", "10")
        assert rc == 0 and res["status"] == "delivered"
        rc, status = b.meshctl("status")
        assert status["inbox_error"] is None
        assert [m["text"] for m in b.meshctl("messages")[1]["messages"]] == ["hello", "stored again"]
