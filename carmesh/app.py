"""The composition root: build a node and plug in the application services.

This is the one module that knows both the node and the application packages
(``sync``, ``library_replica``, ``voice``); the node itself imports none of them.
"""

from __future__ import annotations

import logging

from meshd.config import Config
from meshd.node import Node

__all__ = ["build_node"]

logger = logging.getLogger(__name__)


async def build_node(config: Config) -> Node:
    """A ``Node`` for ``config`` with every application service registered."""
    from sync.node_service import SyncNodeService, open_store

    node = Node(config)
    store = await open_store(node.state_dir)
    try:
        node.add_service(SyncNodeService(node, store))
        from library_replica.node_service import LibraryNodeService

        library = LibraryNodeService(node, store, trust_path=config.trust, inbox=node.messenger)
        node.add_service(library)
        node.mail_fallback = library.queue_mail
        from library_replica.safety_service import SafetyNodeService

        node.add_service(SafetyNodeService(node, store))
        from voice.service import VoiceService

        node.add_service(VoiceService(node, auto_answer=config.auto_answer,
                                      answer_play=config.answer_play,
                                      answer_record=config.answer_record))
    except BaseException:
        await store.close()  # its database thread would keep the process alive
        raise
    return node
