"""meshctl tui: the admin console."""

from __future__ import annotations

import argparse

from carmesh.meshctl.common import (
    ExitCode,
    Output,
    register,
)
from meshd.control.client import ControlClient


@register("tui", "the admin console (Textual): live views of this node and the mesh")
async def _tui(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    # The console keeps its own connection and reconnects by itself when the daemon
    # restarts; this first connection only proved a daemon answers.
    await client.close()
    if out.json:
        return out.fail(ExitCode.USAGE, "tui is interactive: it has no --json output")
    from tui.app import run_console  # textual loads only for this command

    await run_console(args.socket_path)
    return ExitCode.OK
