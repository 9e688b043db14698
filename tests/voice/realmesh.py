"""Real nodes for voice tests and the benchmark: in-process ``meshd.node.Node`` endpoints, ``meshd`` relays.

The two call endpoints are real ``Node`` objects in this process (real QUIC
links, real routing, real forwarding) with a ``VoiceService`` attached the way
the daemon's composition root will attach it; the relay cars in between are
real ``meshd`` processes (``carmesh.dev.harness.Cluster``), so a relay can be killed
with SIGKILL mid-call.  Everything listens on 127.0.0.1 with static peers; run
it inside a private network namespace (``tests.voice.scenarios.run_isolated``)
so that aiortc sees only loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carmesh.dev.harness import Cluster, Daemon, free_udp_port
from meshd.config import Config
from meshd.core.identity import NodeId
from meshd.node import Node
from voice.service import VoiceService


@dataclass
class Endpoint:
    """An in-process node with its voice service (``node.add_service``)."""

    name: str
    node: Node
    voice: VoiceService
    port: int
    task: asyncio.Task[None]
    stop: asyncio.Event

    @property
    def node_id(self) -> NodeId:
        return self.node.identity.node_id


@dataclass
class Mesh:
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    relays: dict[str, Daemon] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)


async def start_endpoint(name: str, root: Path, port: int, peers: list[int], **voice: Any) -> Endpoint:
    cfg = Config(state_dir=root / name, name=name, listen=(f"127.0.0.1:{port}",),
                 peer=tuple(f"127.0.0.1:{p}" for p in peers), log_level="warning")
    node = Node(cfg)
    voice.setdefault("auto_answer", False)
    voice.setdefault("answer_play", None)
    voice.setdefault("answer_record", None)
    # plugged in the way the composition root (carmesh.app) plugs services in: before run()
    svc = VoiceService(node, relay_host="127.0.0.1", **voice)
    node.add_service(svc)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(node.run(stop))
    for _ in range(200):
        if node.ready:
            break
        await asyncio.sleep(0.05)
    return Endpoint(name, node, svc, port, task, stop)


async def wait_route(a: Endpoint, b: Endpoint, timeout: float = 20.0) -> None:
    """Until each endpoint has a route to and the announcement of the other."""
    for _ in range(int(timeout / 0.05)):
        if (a.node.next_hop(b.node_id) and b.node.next_hop(a.node_id)
                and a.node.announcement_of(b.node_id) and b.node.announcement_of(a.node_id)):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no route between {a.name} and {b.name} within {timeout} s")


@contextlib.asynccontextmanager
async def real_mesh(links: list[tuple[str, str]], endpoints: dict[str, dict[str, Any]]
                    ) -> AsyncIterator[Mesh]:
    """Nodes joined by ``links``; names in ``endpoints`` run here with voice, the others as meshd."""
    names = sorted({n for lk in links for n in lk})
    mesh = Mesh(ports={n: free_udp_port() for n in names})
    root = Path(tempfile.mkdtemp(prefix="cmv", dir="/tmp"))
    with Cluster(log_level="warning") as cluster:
        try:
            for n in names:
                # each link is dialled by the node that comes first in ``links`` order
                peers = [mesh.ports[b] for a, b in links if a == n]
                if n in endpoints:
                    mesh.endpoints[n] = await start_endpoint(n, root, mesh.ports[n], peers,
                                                             **endpoints[n])
                else:
                    args = ["--listen", f"127.0.0.1:{mesh.ports[n]}"]
                    for p in peers:
                        args += ["--peer", f"127.0.0.1:{p}"]
                    mesh.relays[n] = cluster.add(n, args)
            yield mesh
        finally:
            for ep in mesh.endpoints.values():
                ep.stop.set()  # the node closes its services (voice included) on the way out
            for ep in mesh.endpoints.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ep.task, 10)
