"""Simulator measurements for ``bench/routing.py``: convergence time and control traffic.

``measure(n)`` builds a random geometric mesh of ``n`` nodes (average degree about
5, like a car park), switches every node on at virtual time 0 (the worst storm),
and reports in virtual time: when every sampled pair first became reachable,
and the steady-state control traffic (hellos and routing) per link per second
over a window after convergence, with the wall time the simulation took.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from tests.sim.checks import unreachable_pairs
from tests.sim.mesh import build_mesh
from tests.sim.topology import random_geometric

__all__ = ["measure"]


def measure(n: int, *, seed: int = 7, window_s: float = 40.0, max_t: float = 60.0,
            sample: int = 20) -> dict[str, Any]:
    radius = math.sqrt(5.0 / (math.pi * n))  # expected degree about 5 in the unit square
    _, edges = random_geometric(n, radius, seed=seed)
    t0 = time.perf_counter()
    net, ids = build_mesh(n, edges, seed=seed, log_routes=False)
    sources = random.Random(seed).sample(ids, min(sample, n))
    converged = None
    t = 0.0
    while t < max_t:
        t += 1.0
        net.run_until(t)
        if not unreachable_pairs(net, ids, sources=sources):
            converged = t
            break
    start_bytes, start_t = net.stats.bytes_sent, net.now
    net.run_until(t + window_s)
    per_link = (net.stats.bytes_sent - start_bytes) / len(edges) / (net.now - start_t)
    return {"nodes": n, "links": len(edges), "converged_virtual_s": converged,
            "control_bytes_per_link_per_s": round(per_link, 1),
            "per_link_per_s_per_destination": round(per_link / n, 3),
            "wall_s": round(time.perf_counter() - t0, 1)}
