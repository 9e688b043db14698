"""Default places on disk, shared by the daemon and its clients (meshctl, the console)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshd.core.errors import LocalProtocolError

__all__ = ["PRIVATE_UMASK", "SOCKET_NAME", "STATE_DIR_ENV", "check_socket_owner",
           "default_socket_path", "default_state_dir", "secure_state_dir"]

#: the umask the daemon runs with: what it creates in the state directory is 0600 / 0700
PRIVATE_UMASK = 0o077

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


def _unsafe_reason(st: os.stat_result, euid: int) -> str | None:
    """Why a directory with stat ``st`` cannot hold keys and the control socket, or None."""
    if st.st_uid != euid:
        return f"is owned by uid {st.st_uid}, not by you (uid {euid})"
    if st.st_mode & 0o022:
        who = "group and others" if st.st_mode & 0o022 == 0o022 else (
            "its group" if st.st_mode & 0o020 else "others")
        return f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def secure_state_dir(path: Path) -> Path:
    """Create ``path`` mode 0700 (tightened against the umask), or check an existing one.

    Like ssh with ``~/.ssh``: an existing directory that another user owns or
    that group or others may write is refused (``LocalProtocolError`` saying how
    to fix it), because whoever can write there can replace ``control.sock`` and
    receive what meshctl sends, or swap the node's keys.  Nothing is changed in
    a directory we did not create.
    """
    euid = os.geteuid()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; make it exactly 0700
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise LocalProtocolError(f"state directory {path} is not a directory")
    reason = _unsafe_reason(st, euid)
    if reason is not None:
        fix = (f"chmod go-w {path}  (or chmod 700 {path})" if st.st_uid == euid
               else "use a state directory of your own, e.g. --state-dir ~/.local/state/carmesh")
        raise LocalProtocolError(
            f"unsafe state directory {path}: it {reason}; another local user could replace "
            f"its control socket or keys. Refusing to use it. Fix: {fix}")
    return path


def check_socket_owner(socket_path: Path) -> None:
    """Refuse a control socket that another user owns or that sits where others may swap it.

    meshctl sends messages and commands there: a socket planted by another local
    user would receive them.  The socket must belong to us (or root), and its
    directory must not be writable by others unless sticky (like /tmp, where
    nobody can replace a file they do not own).  A missing socket is left to the
    caller ("no daemon").
    """
    euid = os.geteuid()
    try:
        sock_st = os.lstat(socket_path)
        dir_st = os.stat(socket_path.parent)
    except FileNotFoundError:
        return
    reason = None
    if sock_st.st_uid not in (euid, 0):
        reason = f"the socket is owned by uid {sock_st.st_uid}, not by you (uid {euid})"
    elif dir_st.st_mode & 0o022 and not dir_st.st_mode & stat.S_ISVTX:
        reason = (f"its directory is writable by others "
                  f"(mode {stat.S_IMODE(dir_st.st_mode):04o})")
    if reason is not None:
        raise LocalProtocolError(
            f"refusing control socket {socket_path}: {reason}; another local user could be "
            f"listening there. Fix: chmod 700 {socket_path.parent}, then restart meshd")
