"""State directory and control socket permissions (issue 11, item 11): refuse what others can write."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from meshd.core.errors import LocalProtocolError
from meshd.paths import check_socket_owner, secure_state_dir


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_new_state_dir_is_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        d = secure_state_dir(tmp_path / "a" / "state")
    finally:
        os.umask(old)
    assert mode(d) == 0o700


@pytest.mark.parametrize("bad", [0o777, 0o770, 0o702, 0o1777])
def test_a_group_or_world_writable_state_dir_is_refused_with_the_fix(tmp_path: Path,
                                                                       bad: int) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, bad)
    with pytest.raises(LocalProtocolError) as ei:
        secure_state_dir(d)
    msg = str(ei.value)
    assert f"unsafe state directory {d}" in msg and f"chmod go-w {d}" in msg
    assert f"mode {bad:04o}" in msg
    assert mode(d) == bad  # not silently changed: it is not ours to fix


@pytest.mark.parametrize("ok", [0o700, 0o750, 0o755])
def test_a_private_or_read_only_shared_state_dir_is_used(tmp_path: Path, ok: int) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, ok)
    assert secure_state_dir(d) == d
    assert mode(d) == ok


def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    other = os.stat(d).st_uid + 1
    monkeypatch.setattr(os, "geteuid", lambda: other)
    with pytest.raises(LocalProtocolError, match=rf"owned by uid {other - 1}, not by you"):
        secure_state_dir(d)


def test_a_file_is_not_a_state_dir(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text("x")
    with pytest.raises(LocalProtocolError, match="not a directory"):
        secure_state_dir(f)


def _bind(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


def test_meshctl_refuses_a_socket_others_could_have_planted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "s"
    d.mkdir(mode=0o700)
    path = d / "control.sock"
    check_socket_owner(path)  # missing: left to the caller
    with _bind(path):
        check_socket_owner(path)  # ours, in a private directory
        os.chmod(d, 0o777)
        with pytest.raises(LocalProtocolError, match=r"writable by others \(mode 0777\)"):
            check_socket_owner(path)
        os.chmod(d, 0o1777)  # sticky, like /tmp: nobody can replace our socket
        check_socket_owner(path)
        os.chmod(d, 0o700)
        me = os.stat(path).st_uid
        if me == 0:  # root: hand the socket to another user (root's own are always accepted)
            os.chown(path, 4242, -1)
            owner = 4242
        else:  # a normal user: pretend to be someone else
            monkeypatch.setattr(os, "geteuid", lambda: me + 1)
            owner = me
        with pytest.raises(LocalProtocolError, match=rf"owned by uid {owner}, not by you"):
            check_socket_owner(path)
