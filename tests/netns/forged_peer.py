"""A node that presents a certificate for a NodeId that is not its own (run inside a namespace).

It listens with ``LinkManager(tls_identity_override=...)`` for a bounded time and
prints one JSON line per link it managed to establish (it should establish none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from meshd.core.identity import Announcement, Identity, NodeId, Role
from meshd.links.manager import LinkManager


class _Listener:
    def link_up(self, peer: NodeId, announcement: Announcement, remote: tuple[str, int],
                initiator: bool) -> None:
        print(json.dumps({"event": "link_up", "peer": peer.hex()}), flush=True)

    def link_down(self, peer: NodeId, reason: str) -> None:
        pass

    def datagram_received(self, peer: NodeId, data: bytes) -> None:
        pass


async def main(host: str, port: int, seconds: float) -> None:
    me, other = Identity.generate(), Identity.generate()
    ann = me.announce(1, time.time(), "mallory", Role.CAR)
    links = LinkManager(me, lambda: ann, _Listener(), tls_identity_override=other)
    await links.listen(host, port)
    print(json.dumps({"event": "listening", "node_id": me.node_id.hex()}), flush=True)
    await asyncio.sleep(seconds)
    print(json.dumps({"event": "done", "drops": dict(links.drops.counts)}), flush=True)
    await links.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=8.0)
    a = p.parse_args()
    asyncio.run(main(a.host, a.port, a.seconds))
