"""Configuration file and flag merging."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from carmesh.cli import build_parser, config_flags
from carmesh.dev.harness import MESHD
from meshd.config import ConfigError, load_config, parse_hostport
from meshd.core.identity import Role


def test_toml_keys_are_flag_names_and_flags_win(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('name = "car-7"\nrole = "dealer"\ninterface = ["veth0"]\n'
                 'state-dir = "/tmp/x"\npeer = "127.0.0.1:7421"\nauto-answer = true\n')
    cfg = load_config(f)
    assert cfg.name == "car-7" and cfg.role is Role.DEALER and cfg.interface == ("veth0",)
    assert cfg.state_dir == Path("/tmp/x") and cfg.peer == ("127.0.0.1:7421",)
    assert cfg.auto_answer is True
    args = config_flags(build_parser().parse_args(["--name", "car-8", "--role", "phone"]))
    merged = cfg.merged(args)
    assert merged.name == "car-8" and merged.role is Role.PHONE and merged.interface == ("veth0",)


def test_bad_configuration_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('nmae = "typo"\n')
    with pytest.raises(ConfigError, match="nmae"):
        load_config(f)
    f.write_text('role = "tank"\n')
    with pytest.raises(ConfigError, match="role"):
        load_config(f)
    f.write_text('listen = "not an address"\n')
    with pytest.raises(ConfigError):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:7420", ("127.0.0.1", 7420)),
    ("[::1]:9000", ("::1", 9000)),
    ("10.1.2.3", ("10.1.2.3", 7420)),
])
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default_port=7420) == expected


@pytest.mark.parametrize("text", ["host:1", "1.2.3.4:99999", "1.2.3.4:x", ":5"])
def test_parse_hostport_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text, default_port=7420)


@pytest.mark.parametrize(("flags", "says"), [
    (["--answer-play", "/nonexistent/hello.wav", "--auto-answer"], "no such file to play"),
    (["--answer-record", "/nonexistent/dir/heard.wav"], "is not a directory"),
    (["--answer-play", "tone:5"], "tone frequency"),
    (["--trust", "/nonexistent/trust.toml"], "trust configuration"),
])
def test_meshd_refuses_unusable_files_at_start_and_exits(tmp_path: Path, flags: list[str],
                                                         says: str) -> None:
    """A bad path fails the start with a message, and the process ends (nothing left running)."""
    r = subprocess.run([*MESHD, "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0", *flags],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1, r.stderr
    assert says in r.stderr


def test_store_quota_takes_bytes_or_units_and_refuses_nonsense() -> None:
    from meshd.config import Config, ConfigError, parse_size

    assert parse_size("512M") == 512 * 1024**2 and parse_size("2G") == 2 * 1024**3
    assert parse_size(20_000_000) == 20_000_000 and parse_size("1GiB") == 1024**3
    assert Config().merged({"store_quota": "64m"}).store_quota == 64 * 1024**2
    for bad in ("lots", "1k", True, 1.5, "-5G"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_mail_copies_takes_0_to_64_and_refuses_nonsense() -> None:
    from meshd.config import MAX_MAIL_COPIES, Config, ConfigError
    from sync.custody import MAX_COPIES

    assert MAX_MAIL_COPIES == MAX_COPIES  # meshd keeps its own copy of sync's bound
    assert Config().mail_copies is None
    assert Config().merged({"mail_copies": "8"}).mail_copies == 8
    assert Config().merged({"mail_copies": 0}).mail_copies == 0
    for bad in ("many", -1, 65, True, 2.5):
        with pytest.raises(ConfigError, match="mail_copies"):
            Config().merged({"mail_copies": bad})
