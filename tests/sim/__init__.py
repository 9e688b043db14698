"""Deterministic network simulator: ``from tests.sim import Network, LinkParams, line, ...``."""

from tests.sim.network import (
    LinkParams,
    LogEntry,
    Mobility,
    Network,
    SimError,
    SimNode,
    pairs_within,
    sim_id,
)
from tests.sim.topology import components, grid, line, random_geometric, ring, shortest_hops

__all__ = [
    "LinkParams",
    "LogEntry",
    "Mobility",
    "Network",
    "SimError",
    "SimNode",
    "components",
    "grid",
    "line",
    "pairs_within",
    "random_geometric",
    "ring",
    "shortest_hops",
    "sim_id",
]
