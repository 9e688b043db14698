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
from tests.sim.town import Radio, TownMap, TownMobility, Walker

__all__ = [
    "LinkParams",
    "LogEntry",
    "MessageReceived",
    "Mobility",
    "Network",
    "Radio",
    "SimError",
    "SimNode",
    "StreamKey",
    "StreamMux",
    "StreamOpened",
    "TownMap",
    "TownMobility",
    "Walker",
    "components",
    "grid",
    "line",
    "pairs_within",
    "random_geometric",
    "ring",
    "shortest_hops",
    "sim_id",
]
