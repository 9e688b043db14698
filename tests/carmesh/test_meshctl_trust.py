"""meshctl trust init: offline, mode 0600, never in the state directory, never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carmesh.meshctl import main
from carmesh.meshctl.trust import load_root_key
from library_replica.bulletins import fingerprint, format_fingerprint


def test_init_writes_a_private_root_key_without_a_daemon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, key = tmp_path / "state", tmp_path / "usb" / "root.key"
    key.parent.mkdir()
    assert main(["--state-dir", str(state), "--json", "trust", "init", "--root-key", str(key),
                 "--community", "Town"]) == 0
    doc = json.loads(capsys.readouterr().out)
    secret, community = load_root_key(key)
    pub = secret.public_key().public_bytes_raw()
    assert doc == {"root_key_file": str(key.resolve()), "root": pub.hex(),
                   "fingerprint": format_fingerprint(fingerprint(pub)), "community": "Town"}
    assert community == "Town" and key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert main(["--state-dir", str(state), "trust", "init", "--root-key", str(key)]) == 1
    assert key.read_bytes() == before  # never overwritten
    inside = state / "root.key"
    state.mkdir()
    assert main(["--state-dir", str(state), "trust", "init", "--root-key", str(inside)]) == 2
    assert not inside.exists()
    assert main(["--state-dir", str(state), "trust", "init", "--root-key", str(inside),
                 "--force"]) == 0
    assert inside.exists()
