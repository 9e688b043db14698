"""The composition root: build a node and plug in the application services.

This is the one module that knows both the node and the application packages
(``sync``, ``library_replica``, ``voice``, ``web``); the node itself imports none of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
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
        sync_service = SyncNodeService(node, store, mail_copies=config.mail_copies or 0)
        node.add_service(sync_service)
        from library_replica.compaction import DAY_MS, CompactionPolicy
        from library_replica.node_service import LibraryNodeService

        policy = CompactionPolicy()
        if config.compact_after is not None:
            policy = replace(policy, max_ops=config.compact_after)
        if config.compact_quiet is not None:
            policy = replace(policy, quiet_ms=int(config.compact_quiet * 1000))
        if config.tombstone_horizon is not None:
            policy = replace(policy, horizon_ms=int(config.tombstone_horizon * DAY_MS))
        library = LibraryNodeService(node, store, trust_path=config.trust, inbox=node.messenger,
                                     wall_clock=node.mesh_time, compaction=policy)
        node.add_service(library)
        # a revoked node key (lost or stolen device) gets no link here either
        node.refuse_keys(library.trust.revoked)
        node.mail_fallback = library.queue_mail
        from library_replica.safety_service import SafetyNodeService

        # a lost device's successor corrects the safety registrations its predecessor made
        safety = SafetyNodeService(node, store, succeeds=library.trust.keys.continues)
        library.add_trust_listener(safety.successors_changed)
        node.add_service(safety)
        from voice.service import VoiceService

        node.add_service(VoiceService(node, auto_answer=config.auto_answer,
                                      answer_play=config.answer_play,
                                      answer_record=config.answer_record))
        from meshd.services.leaves import LeafService

        # browsers attached to this node as leaves of the mesh (their sealed mail held here)
        node.add_service(LeafService(node, clock=node.now))
        if not config.no_web:
            _add_web(node, config)
        # every authoriser is registered and nothing has replayed yet: own ops a clock that
        # ran ahead stamped in the future are signed again at the right time (sync.reissue)
        await sync_service.reissue_future_own()
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
