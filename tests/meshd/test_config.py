"""Configuration file and flag merging."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.cli import build_parser
from meshd.config import ConfigError, load_config, parse_hostport
from meshd.identity import Role


def test_toml_keys_are_flag_names_and_flags_win(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('name = "car-7"\nrole = "dealer"\ninterface = ["veth0"]\n'
                 'state-dir = "/tmp/x"\npeer = "127.0.0.1:7421"\nauto-answer = true\n')
    cfg = load_config(f)
    assert cfg.name == "car-7" and cfg.role is Role.DEALER and cfg.interface == ("veth0",)
    assert cfg.state_dir == Path("/tmp/x") and cfg.peer == ("127.0.0.1:7421",)
    assert cfg.auto_answer is True
    args = vars(build_parser().parse_args(["--name", "car-8", "--role", "phone"]))
    args.pop("config")
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
