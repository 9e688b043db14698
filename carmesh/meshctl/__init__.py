"""``meshctl``: talk to a running ``meshd`` through its control socket.

Every subcommand is one entry in ``COMMANDS`` (see ``register``): a name, a
help line, a function that adds its arguments to an argparse sub-parser, and an
async ``run(client, args, out) -> exit code``.  Each command group is a module of
this package (node, calls, watch, library, board, safety, trust, sync, console);
importing one registers its commands.  ``main`` imports only the group of the command
given (``_COMMAND_GROUP``; all of them for help, a usage error or a command not listed
there): a call of ``meshctl status`` does not load what ``trust`` needs (the cryptography
and key-certificate modules were about three quarters of every call's start-up).
A sub-command that works on files alone
(``trust init``) sets ``offline_run`` and runs without a daemon.

``--state-dir``, ``--socket`` and ``--json`` are accepted before or after the
subcommand: each sub-parser repeats them with ``default=SUPPRESS``, so a value
given after the subcommand wins and an absent one leaves the top-level value.

Exit codes (the contract in docs/cli.md): 0 success; 1 the operation failed;
2 usage (argparse errors, an ambiguous NODE, a request the daemon calls bad);
3 no daemon answering on the socket; 4 target unreachable or timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# importing a group registers its commands
from carmesh.meshctl.common import (
    COMMANDS,
    CONNECT_TIMEOUT_S,
    Command,
    ExitCode,
    Output,
    _global_options,
    exit_code_for,
    register,
)
from carmesh.meshctl.node import _status_wait
from meshd.control.client import ControlClient
from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError, LocalProtocolError
from meshd.paths import default_socket_path, default_state_dir

__all__ = ["COMMANDS", "Command", "ExitCode", "Output", "exit_code_for", "main", "register"]


class _UsageError(Exception):
    """A command line argparse refused: ``(usage, message)`` of the parser that refused it."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises on a usage error, so ``main`` can also answer it in JSON."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.format_usage(), f"{self.prog}: error: {message}")


#: the command groups (modules of this package), in the order ``meshctl --help`` lists them
_GROUPS = ("node", "calls", "watch", "console", "sync", "library", "board", "safety", "trust")
#: the group of each command (a test checks it against the commands the groups register)
_COMMAND_GROUP = {
    **dict.fromkeys(("status", "neighbours", "ping", "send", "messages", "leaves", "routes",
                     "traceroute", "topology", "mail"), "node"),
    **dict.fromkeys(("call", "answer", "decline", "hangup", "calls"), "calls"),
    "watch": "watch", "tui": "console", "sync": "sync", "library": "library",
    "situation": "board", "bulletin": "board", "safety": "safety", "trust": "trust",
}
#: options that take a value, before the command
_VALUED = ("--state-dir", "--socket")


def _load_groups(groups: Sequence[str] = _GROUPS) -> None:
    """Import command group modules (registering their commands)."""
    for group in groups:
        importlib.import_module(f"{__name__}.{group}")


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the first one that is not a global option)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def _help_rank(cmd: Command) -> int:
    names = [f"{__name__}.{g}" for g in _GROUPS]
    return names.index(cmd.run.__module__) if cmd.run.__module__ in names else len(names)


def build_parser(groups: Sequence[str] = _GROUPS) -> argparse.ArgumentParser:
    """The argument parser, with one sub-parser per command of ``groups`` (default: all)."""
    _load_groups(groups)
    parser = _Parser(
        prog="meshctl", description="Talk to a running meshd through its control socket.",
        epilog="exit codes: 0 success, 1 failed, 2 usage, 3 no daemon, 4 unreachable/timeout")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = {f"{__name__}.{g}" for g in groups}
    for cmd in sorted((c for c in COMMANDS.values() if c.run.__module__ in names),
                      key=_help_rank):
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _global_options(sp, suppress=True)
        cmd.setup(sp)
    return parser


async def _run(args: argparse.Namespace, out: Output) -> int:
    cmd = COMMANDS[args.command]
    if args.command == "status" and args.wait > 0 and args.node is None:
        return await _status_wait(args, out)
    offline = getattr(args, "offline_run", None)
    if offline is not None:  # works on files only (e.g. `trust init`): no daemon needed
        return int(await offline(args, out))
    try:
        client = await ControlClient.connect(args.socket_path, timeout=CONNECT_TIMEOUT_S)
    except NoDaemon as exc:
        return out.fail(ExitCode.NO_DAEMON, str(exc))
    try:
        return await cmd.run(client, args, out)
    finally:
        await client.close()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded, captured): nothing to silence
        pass


def main(argv: list[str] | None = None) -> int:
    """Run meshctl with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    words = sys.argv[1:] if argv is None else argv
    group = _COMMAND_GROUP.get(_command_in(words) or "")
    help_asked = any(w in ("-h", "--help") for w in words)
    parser = build_parser((group,) if group is not None and not help_asked else _GROUPS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help exits 0
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except _UsageError as exc:
        usage, message = exc.args
        sys.stderr.write(usage)
        print(message, file=sys.stderr, flush=True)
        if "--json" in (sys.argv[1:] if argv is None else argv):
            Output(True).document({"error": {"code": "usage", "message": message, "data": {}}})
        return ExitCode.USAGE
    out = Output(bool(args.json))
    if args.command is None:
        parser.print_usage(sys.stderr)
        return out.fail(ExitCode.USAGE, "a command is required (see meshctl --help)")
    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    args.socket_path = args.socket if args.socket is not None else default_socket_path(state_dir)
    try:
        return int(asyncio.run(_run(args, out)))
    except BrokenPipeError:  # `meshctl ... | head`: the reader has all it wanted
        _silence_stdout()
        return ExitCode.OK
    except NoDaemon as exc:
        return out.fail(ExitCode.NO_DAEMON, str(exc))
    except ControlError as exc:
        return out.control_error(exc)
    except LocalProtocolError as exc:  # e.g. a socket path that is too long
        return out.fail(ExitCode.USAGE, str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
