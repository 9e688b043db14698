"""Topology builders for the simulator: edge lists over node indices 0..n-1."""

from __future__ import annotations

import math
import random
from collections import deque

__all__ = [
    "Edges",
    "components",
    "grid",
    "line",
    "random_geometric",
    "ring",
    "shortest_hops",
]

Edges = list[tuple[int, int]]


def line(n: int) -> Edges:
    """0 - 1 - ... - n-1."""
    return [(i, i + 1) for i in range(n - 1)]


def ring(n: int) -> Edges:
    """A line closed into a cycle."""
    return [*line(n), (n - 1, 0)] if n > 2 else line(n)


def grid(w: int, h: int) -> Edges:
    """A w x h lattice; node (x, y) has index y * w + x."""
    edges: Edges = []
    for y in range(h):
        for x in range(w):
            i = y * w + x
            if x + 1 < w:
                edges.append((i, i + 1))
            if y + 1 < h:
                edges.append((i, i + w))
    return edges


def random_geometric(n: int, radius: float, seed: int, *, connect: bool = True,
                     size: float = 1.0) -> tuple[list[tuple[float, float]], Edges]:
    """n points uniform in a size x size square, an edge between points closer than ``radius``.

    With ``connect`` each smaller component is joined to the rest by its
    shortest possible edge, so the graph is connected (as a car park is, mostly).
    """
    rng = random.Random(seed)
    pts = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(n)]
    edges: Edges = []
    cell: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(pts):
        cell.setdefault((int(x // radius), int(y // radius)), []).append(i)
    for i, (x, y) in enumerate(pts):
        cx, cy = int(x // radius), int(y // radius)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cell.get((cx + dx, cy + dy), ()):
                    if i < j and math.dist(pts[i], pts[j]) <= radius:
                        edges.append((i, j))
    edges.sort()
    if connect:
        comps = components(n, edges)
        while len(comps) > 1:
            main, other = comps[0], comps[1]
            best = min((math.dist(pts[a], pts[b]), min(a, b), max(a, b))
                        for a in other for b in main)
            edges.append((best[1], best[2]))
            comps = components(n, edges)
    return pts, edges


def components(n: int, edges: Edges) -> list[list[int]]:
    """Connected components, largest first (ties by smallest member)."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    seen = [False] * n
    comps: list[list[int]] = []
    for s in range(n):
        if seen[s]:
            continue
        seen[s] = True
        comp, q = [s], deque([s])
        while q:
            u = q.popleft()
            for v in adj[u]:
                if not seen[v]:
                    seen[v] = True
                    comp.append(v)
                    q.append(v)
        comps.append(sorted(comp))
    comps.sort(key=lambda c: (-len(c), c[0]))
    return comps


def shortest_hops(n: int, edges: Edges, src: int) -> list[int]:
    """Hop distance from ``src`` to every node (-1 if unreachable)."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    dist = [-1] * n
    dist[src] = 0
    q = deque([src])
    while q:
        u = q.popleft()
        for v in adj[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                q.append(v)
    return dist
