"""Default places on disk, shared by the daemon and its clients (meshctl, the console)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SOCKET_NAME", "STATE_DIR_ENV", "default_socket_path", "default_state_dir"]

#: environment variable that overrides the default state directory (meshd and meshctl)
STATE_DIR_ENV = "CARMESH_STATE_DIR"
#: file name of the control socket inside the state directory
SOCKET_NAME = "control.sock"

def default_state_dir() -> Path:
    """``$CARMESH_STATE_DIR``, else ``$XDG_STATE_HOME/carmesh``, else ``~/.local/state/carmesh``."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    # the XDG spec says a relative value is invalid and must be ignored
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "carmesh"
    return Path.home() / ".local" / "state" / "carmesh"


def default_socket_path(state_dir: Path | None = None) -> Path:
    """``<state_dir>/control.sock``; ``state_dir`` defaults to ``default_state_dir()``."""
    return (state_dir if state_dir is not None else default_state_dir()) / SOCKET_NAME
