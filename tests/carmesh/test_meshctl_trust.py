"""meshctl trust init: offline, mode 0600, never in the state directory, never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carmesh.meshctl import main
from carmesh.meshctl.trust import load_root_key, load_statement
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


def test_key_new_writes_a_private_key_file_and_statements_are_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, key = tmp_path / "state", tmp_path / "desk" / "dealer.key"
    key.parent.mkdir()
    assert main(["--state-dir", str(state), "--json", "trust", "key", "new", str(key)]) == 0
    doc = json.loads(capsys.readouterr().out)
    secret, _ = load_root_key(key)
    assert doc == {"key_file": str(key.resolve()),
                   "key": secret.public_key().public_bytes_raw().hex()}
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert main(["--state-dir", str(state), "trust", "key", "new", str(key)]) == 1
    assert key.read_bytes() == before
    state.mkdir()
    assert main(["--state-dir", str(state), "trust", "key", "new", str(state / "k")]) == 2
    assert not (state / "k").exists()
    # a statement file: kind and body, nothing else is taken
    good = tmp_path / "ok.statement"
    good.write_text('kind = "trust.revoke"\nbody = "8101"\n', encoding="utf-8")
    assert load_statement(good) == ("trust.revoke", b"\x81\x01")
    for text in ('kind = "trust.update"\nbody = "00"\n', 'kind = "trust.revoke"\n',
                 'kind = "trust.revoke"\nbody = "zz"\n', "not toml ="):
        bad = tmp_path / "bad.statement"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError):
            load_statement(bad)
