"""The ``meshd`` command: run one carmesh node in the foreground.

Flags follow DESIGN.md's command contract; every flag has a key of the same
name in the ``--config`` TOML file, and flags win over the file.  Logs go to
stderr; SIGTERM or SIGINT shuts down cleanly and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from meshd import __version__
from meshd.config import DEFAULT_METRICS, LOG_FORMATS, Config, ConfigError, load_config
from meshd.core.errors import MeshError
from meshd.core.identity import Role
from meshd.paths import PRIVATE_UMASK, default_socket_path, default_state_dir

__all__ = ["build_parser", "meshd_main"]

EPILOG = """\
examples:
  meshd --name car-1 --interface wlan0            join the mesh on wlan0 (zeroconf discovery)
  meshd --state-dir /tmp/n1 --listen 127.0.0.1:7420 --peer 127.0.0.1:7421
                                                  loopback node with a static peer
With no --interface the node runs on loopback only and zeroconf stays off.
Talk to a running node with `meshctl --state-dir DIR status`.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshd", description="Run a carmesh node: discovery, encrypted links, routing, "
        "relayed calls and the replicated library.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"meshd {__version__}")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML file; every flag has a key of the same name (flags win)")
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="keys, database and control socket (default: $XDG_STATE_HOME/carmesh)")
    p.add_argument("--name", help="display name shown to other nodes (default: ROLE-SHORTID)")
    p.add_argument("--role", choices=[r.value for r in Role], help="car, phone or dealer (default car)")
    p.add_argument("--stub", action="store_true", default=None,
                   help="route as a stub, for a phone among cars: announce only this node, "
                        "relay nothing, reach everything else through the best car in range "
                        "(routers send a stub only their own route)")
    p.add_argument("--interface", action="append", metavar="IFNAME",
                   help="network interface the mesh runs on (repeatable); none: loopback only")
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="QUIC listen address (repeatable; default port 7420 on each interface)")
    p.add_argument("--peer", action="append", metavar="[NODEID@]HOST:PORT",
                   help="static peer (repeatable); without NODEID the first contact pins it")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument("--log-format", choices=list(LOG_FORMATS),
                   help="text lines (default) or json: one JSON object per line")
    p.add_argument("--admin", action="append", metavar="NODEID",
                   help="a node (full NodeId) that sees this node's whole status over the mesh, "
                        "not only the public facts (repeatable)")
    p.add_argument("--metrics", metavar="ADDR:PORT|off",
                   help=f"OpenMetrics endpoint for Prometheus (default http://{DEFAULT_METRICS}"
                        "/metrics, loopback only unless an address is given)")
    p.add_argument("--trust", type=Path, metavar="FILE",
                   help="community trust configuration (root and authority keys)")
    p.add_argument("--store-quota", metavar="BYTES",
                   help="the op store's total size (e.g. 512M, 2G; default 1G): beyond it the "
                        "oldest ops of non-members, then of members, are evicted")
    p.add_argument("--compact-after", metavar="EDITS",
                   help="compact a library document into a snapshot once it has this many "
                        "changes since the last one (default 200; members only)")
    p.add_argument("--compact-quiet", metavar="SECONDS",
                   help="a document is compacted only after this long without a change "
                        "(default 600)")
    p.add_argument("--mail-copies", metavar="N",
                   help="carry sealed mail by custody: the writer hands out N copies "
                        "(binary spray-and-wait), a node with one left gives it only to the "
                        "recipient; 0, the default, floods mail to every node like bulletins "
                        "(fewer bytes with N, but fewer messages delivered: docs/benchmarks.md)")
    p.add_argument("--tombstone-horizon", metavar="DAYS",
                   help="a deleted document keeps its text this long, then only its tombstone "
                        "(default 30)")
    p.add_argument("--recover-store", action="store_true",
                   help="move a damaged op store (and the search index) aside, then start with"
                   " empty ones that resync from the neighbours")
    web = p.add_argument_group("web app")
    web.add_argument("--web", action="append", metavar="ADDR:PORT",
                     help="also serve the web app over HTTPS here (repeatable)")
    web.add_argument("--web-local", metavar="HOST:PORT",
                     help="loopback HTTP address of the web app (default 127.0.0.1:7480)")
    web.add_argument("--no-web", action="store_true", default=None,
                     help="serve no web app at all")
    calls = p.add_argument_group("calls")
    calls.add_argument("--auto-answer", action="store_true", default=None,
                       help="answer incoming calls automatically")
    calls.add_argument("--answer-play", type=Path, metavar="FILE",
                       help="audio file an auto-answered call plays")
    calls.add_argument("--answer-record", type=Path, metavar="FILE",
                       help="where an auto-answered call records what it hears")
    return p


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from carmesh.logjson import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    for noisy in ("aioquic", "aioice", "aiortc", "zeroconf"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


async def _run(config: Config) -> int:
    from carmesh.app import build_node

    node = await build_node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)
    return 0


def _recover_store(state_dir: Path) -> bool:
    """``--recover-store``: move the op store and the search index aside (False: refused)."""
    from library_replica.node_service import INDEX_NAME
    from sync.node_service import DB_NAME, RESYNC_MARKER

    log = logging.getLogger("meshd")
    sock = default_socket_path(state_dir)
    with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
        s.connect(str(sock))
        log.error("a node is running on %s: stop it before --recover-store", state_dir)
        return False
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name in (DB_NAME, INDEX_NAME):
        base = state_dir / name
        if not base.exists():
            continue
        for suffix in ("", "-wal", "-shm"):
            part = state_dir / (name + suffix)
            if part.exists():
                part.replace(state_dir / f"{name}.damaged-{stamp}{suffix}")
        log.warning("moved %s aside to %s.damaged-%s; starting with an empty one that resyncs"
                    " from the neighbours", base, name, stamp)
    # this node's own chain is gone with the store: its next op would fork it (seq 1 again)
    # until the neighbours have given it back; the node holds local writes until then
    (state_dir / RESYNC_MARKER).write_text(f"--recover-store at {stamp}\n")
    return True


#: flags that act once instead of configuring the node (no config key of the same name)
ACTION_FLAGS = ("config", "recover_store")


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags that are configuration (``Config.merged`` takes them)."""
    return {k: v for k, v in vars(args).items() if k not in ACTION_FLAGS}


def meshd_main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshd`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = config_flags(args)
    try:
        config = load_config(args.config).merged(flags)
    except ConfigError as exc:
        parser.error(str(exc))
    _setup_logging(config.log_level, config.log_format)
    # everything the daemon creates (databases, logs of messages, the socket) is ours alone
    os.umask(PRIVATE_UMASK)
    if args.recover_store and not _recover_store(config.state_dir or default_state_dir()):
        return 1
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        return int(runner(_run(config)))
    except MeshError as exc:
        logging.getLogger("meshd").error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(meshd_main())
