"""kill -9 during a 10,000-op catch-up: nothing acknowledged is lost, the database stays sound."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import Op
from sync.session import ACK, END, OPS, RECON_DONE
from sync.session import decode_varint as _read_varint
from sync.session import encode_varint as _varint
from tests.sync.helpers import chain

ROOT = Path(__file__).resolve().parents[2]


async def _spawn(db: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sync.durability_child", str(db), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)


async def _frame(proc: asyncio.subprocess.Process, msg: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(len(msg).to_bytes(4, "big") + msg)
    await proc.stdin.drain()


async def _read(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    head = await proc.stdout.readexactly(4)
    return await proc.stdout.readexactly(int.from_bytes(head, "big"))


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (the child's verification workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _still_running(pids: list[int], timeout_s: float) -> list[int]:
    """Those of ``pids`` still running after waiting up to ``timeout_s`` for them to exit."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


async def _push(proc: asyncio.subprocess.Process, ops: list[Op], acked: set[bytes],
                kill_after_s: float | None, kill_at_acked: int | None = None,
                batch: int = 100, window: int = 4, orphans: list[int] | None = None) -> bool:
    """Push ``ops`` as a peer would; record acknowledged ids; True if the session completed.

    Before a kill, the child's own child processes are added to ``orphans``.
    """
    await _frame(proc, bytes([RECON_DONE]))
    todo = [o for o in ops if o.op_id not in acked]
    in_flight: dict[int, list[bytes]] = {}
    next_batch = 0
    deadline = None if kill_after_s is None else time.monotonic() + kill_after_s
    reading: asyncio.Task[bytes] | None = None  # never cancelled mid-frame
    peer_end = False  # the child says END as soon as it knows it has nothing to send
    try:
        while todo or in_flight:
            while todo and len(in_flight) < window:
                part, todo = todo[:batch], todo[batch:]
                payload = b"".join(_varint(len(o.raw)) + o.raw for o in part)
                await _frame(proc, bytes([OPS]) + _varint(next_batch) + payload)
                in_flight[next_batch] = [o.op_id for o in part]
                next_batch += 1
            if ((deadline is not None and time.monotonic() >= deadline)
                    or (kill_at_acked is not None and len(acked) >= kill_at_acked)):
                if orphans is not None:
                    orphans.extend(_children(proc.pid))
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                if reading is not None:
                    reading.cancel()
                return False
            timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
            if reading is None:
                reading = asyncio.ensure_future(_read(proc))
            done, _ = await asyncio.wait({reading}, timeout=timeout)
            if not done:
                continue
            frame = reading.result()
            reading = None
            if frame[0] == ACK:
                n, _ = _read_varint(frame, 1)
                acked.update(in_flight.pop(n))
            elif frame[0] == END:
                peer_end = True
        await _frame(proc, bytes([END]))
        while not peer_end:
            last = await reading if reading is not None else await _read(proc)
            reading = None
            peer_end = last[0] == END
        await proc.wait()
        return True
    except (asyncio.IncompleteReadError, ConnectionError):
        await proc.wait()
        return False


@pytest.mark.slow
async def test_kill_9_during_catch_up_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    hlc0 = int(time.time() * 1000 - 3_600_000) << 16
    keys = [Ed25519PrivateKey.generate() for _ in range(20)]
    ops = [o for i, k in enumerate(keys)
           for o in chain(k, 500, start_hlc=hlc0 + i, kind="library.edit", body=b"\xc4" * 120)]
    ops.sort(key=lambda o: o.hlc)
    db = tmp_path / "ops.db"
    acked: set[bytes] = set()
    orphans: list[int] = []
    kills = 0
    for _ in range(12):
        proc = await _spawn(db)
        # kill at a random point of progress, or after a random time, whichever is first
        target = len(acked) + rng.randrange(1, max(2, len(ops) - len(acked)))
        done = await _push(proc, ops, acked, kill_after_s=rng.uniform(0.3, 3.0),
                           # the first child is always killed at a point of progress: a
                           # store fast enough to take every op within the random time
                           # would otherwise never be killed at all
                           kill_at_acked=(target if kills == 0 or rng.random() < 0.7
                                          else None),
                           orphans=orphans)
        if done:
            break
        kills += 1
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            stored: set[bytes] = set()
            if {"ops", "pending"} <= tables:  # (a kill before the schema was made: nothing)
                stored = {r[0] for r in con.execute("SELECT op_id FROM ops")}
                stored |= {r[0] for r in con.execute("SELECT op_id FROM pending")}
        finally:
            con.close()
        assert acked <= stored, f"{len(acked - stored)} acknowledged ops lost after kill {kills}"
        print(f"kill {kills}: {len(acked)} acknowledged, {len(stored)} stored, "
              f"{len(orphans)} worker processes left to exit")
    else:
        proc = await _spawn(db)
        assert await _push(proc, ops, acked, kill_after_s=None)
    assert kills >= 1
    # verification workers of killed children exit on their own (they watch their parent)
    assert await asyncio.to_thread(_still_running, orphans, 10.0) == []
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM ops").fetchone()[0] == len(ops)
        assert con.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    finally:
        con.close()
