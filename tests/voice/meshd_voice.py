"""``meshd`` with the voice service plugged in: a test-only stand-in for the composition root's wiring.

``python -m tests.voice.meshd_voice [meshd flags]`` runs ``meshd.cli.meshd_main`` with
``meshd.daemon.build_node`` wrapped to ``add_service(VoiceService(...))`` from the config's
``auto_answer``/``answer_play``/``answer_record`` — exactly what ``meshd.daemon`` is to do.  Once
the daemon plugs voice in itself (its control API then serves ``call``), this adds nothing.
"""

from __future__ import annotations

import sys

import meshd.daemon
from meshd.cli import meshd_main
from meshd.config import Config
from meshd.node import Node
from voice.service import VoiceService

_build_node = meshd.daemon.build_node


async def build_node(config: Config) -> Node:
    node = await _build_node(config)
    if "call" not in node.control.handlers:
        node.add_service(VoiceService(node, auto_answer=config.auto_answer,
                                      answer_play=config.answer_play,
                                      answer_record=config.answer_record))
    return node


if __name__ == "__main__":
    meshd.daemon.build_node = build_node
    sys.exit(meshd_main())
