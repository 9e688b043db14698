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
from tests.sim.streams import MessageReceived, StreamKey, StreamMux, StreamOpened
from tests.sim.topology import components, grid, line, random_geometric, ring, shortest_hops

__all__ = [
    "LinkParams",
    "LogEntry",
    "MessageReceived",
    "Mobility",
    "Network",
    "SimError",
    "SimNode",
    "StreamKey",
    "StreamMux",
    "StreamOpened",
    "components",
    "grid",
    "line",
    "pairs_within",
    "random_geometric",
    "ring",
    "shortest_hops",
    "sim_id",
]
