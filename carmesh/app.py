"""The composition root: build a node and plug in the application services.

This is the one module that knows both the node and the application packages
(``sync``, ``library_replica``, ``voice``, ``web``); the node itself imports none of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshd.config import Config
from meshd.node import Node

__all__ = ["CLOCK_OFFSET_ENV", "build_node", "wall_clock_from_env", "web_seams"]

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
    from meshd.config import DEFAULT_STORE_QUOTA
    from sync.apply import Quotas

    # trust updates and bulletins are outside the non-members' pool and never evicted
    quotas = Quotas(store_quota_bytes=config.store_quota or DEFAULT_STORE_QUOTA,
                    protected_namespaces=frozenset({"trust", "bulletin"}))
    store = await open_store(node.state_dir, wall_clock=node.mesh_time, quotas=quotas)
    try:
        node.add_service(SyncNodeService(node, store))
        from library_replica.node_service import LibraryNodeService

        library = LibraryNodeService(node, store, trust_path=config.trust, inbox=node.messenger,
                                     wall_clock=node.mesh_time)
        node.add_service(library)
        # a revoked node key (lost or stolen device) gets no link here either
        node.refuse_keys(library.trust.revoked)
        node.mail_fallback = library.queue_mail
        from library_replica.safety_service import SafetyNodeService

        node.add_service(SafetyNodeService(node, store))
        from voice.service import VoiceService

        node.add_service(VoiceService(node, auto_answer=config.auto_answer,
                                      answer_play=config.answer_play,
                                      answer_record=config.answer_record))
        from meshd.services.leaves import LeafService

        # browsers attached to this node as leaves of the mesh (their sealed mail held here)
        node.add_service(LeafService(node, clock=node.now))
        if not config.no_web:
            _add_web(node, config)
    except BaseException:
        await store.close()  # its database thread would keep the process alive
        raise
    return node


def web_seams(node: Node) -> tuple[Callable[[str, dict[str, Any]], Awaitable[Any]],
                                   Callable[[Callable[[str, dict[str, Any]], None]],
                                            Callable[[], None]]]:
    """(call, subscribe) for the web app: the control socket's own handlers and events."""
    handlers = node.control.handlers  # the live dict: services added later are seen too

    async def call(method: str, params: dict[str, Any]) -> Any:
        return await handlers[method](params)

    return call, node.control.add_listener


def _add_web(node: Node, config: Config) -> None:
    """The citizens' web app, calling the very handlers the control socket serves."""
    from web.service import WebService

    call, subscribe = web_seams(node)
    node.add_service(WebService(call=call, subscribe=subscribe, state_dir=node.state_dir,
                                name=node.name, local=config.web_local, https=config.web,
                                wall_clock=node.mesh_time))
