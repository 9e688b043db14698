"""The composition root: build a node and plug in the application services.

This is the one module that knows both the node and the application packages
(``sync``, ``library_replica``, ``voice``); the node itself imports none of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from meshd.config import Config
from meshd.node import Node

__all__ = ["CLOCK_OFFSET_ENV", "build_node", "wall_clock_from_env"]

logger = logging.getLogger(__name__)

#: test-only: seconds added to the daemon's system clock, to run a node with a wrong clock
#: on one machine (tests/sync/test_daemon_clock.py); never set it in production
CLOCK_OFFSET_ENV = "CARMESH_TEST_CLOCK_OFFSET_S"


def wall_clock_from_env() -> Callable[[], float]:
    """The daemon's raw wall clock: ``time.time``, skewed by ``$CARMESH_TEST_CLOCK_OFFSET_S``."""
    raw = os.environ.get(CLOCK_OFFSET_ENV)
    if not raw:
        return time.time
    offset = float(raw)
    logger.warning("test hook %s: the system clock is taken as %+.0f s off", CLOCK_OFFSET_ENV,
                   offset)
    return lambda: time.time() + offset


async def build_node(config: Config) -> Node:
    """A ``Node`` for ``config`` with every application service registered."""
    from sync.node_service import SyncNodeService, open_store

    node = Node(config, wall_clock=wall_clock_from_env())
    store = await open_store(node.state_dir, wall_clock=node.mesh_time)
    try:
        node.add_service(SyncNodeService(node, store))
        from library_replica.node_service import LibraryNodeService

        library = LibraryNodeService(node, store, trust_path=config.trust, inbox=node.messenger,
                                     wall_clock=node.mesh_time)
        node.add_service(library)
        node.mail_fallback = library.queue_mail
        from voice.service import VoiceService

        node.add_service(VoiceService(node, auto_answer=config.auto_answer,
                                      answer_play=config.answer_play,
                                      answer_record=config.answer_record))
    except BaseException:
        await store.close()  # its database thread would keep the process alive
        raise
    return node
