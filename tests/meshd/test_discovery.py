"""Pure parts of discovery and pins: address choice, TXT parsing, peer table, static peers, pins."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import DNSService, IPVersion, ServiceStateChange  # type: ignore[attr-defined]

from meshd.core.errors import DecodeError, LocalProtocolError, VerificationError
from meshd.discovery import (
    MAX_PENDING_RESOLVES,
    MAX_TXT_SIZE,
    SERVICE_TYPE,
    Discovery,
    InterfaceError,
    InterfaceWatch,
    PeerSeen,
    PeerTable,
    _open_netlink,
    encode_txt,
    instance_name,
    interface_addresses,
    parse_txt,
    pick_address,
    plan_binding,
)
from meshd.pins import PinConflictError, PinStore, StaticPeer, parse_peer

ID_A = bytes.fromhex("00112233445566778899aabbccddeeff")
ID_B = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def iface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(text)


def rdata(*items: bytes) -> bytes:
    """Encode TXT strings the way they travel (length-prefixed, RFC 1035 §3.3.14)."""
    return b"".join(bytes([len(i)]) + i for i in items)


def txt_of(props: dict[str, str]) -> bytes:
    return rdata(*(f"{k}={v}".encode() for k, v in props.items()))


GOOD = encode_txt(ID_A, "car-7", "car", 7420)


# --- pick_address ---------------------------------------------------------------------------


def test_pick_address_takes_the_candidate_on_our_subnet() -> None:
    ours = [iface("10.77.0.1/24")]
    # a node on two links advertises both of its addresses; only one is on our link
    assert pick_address(["10.77.1.1", "10.77.0.2"], ours) == "10.77.0.2"


def test_pick_address_none_when_no_subnet_is_shared() -> None:
    assert pick_address(["192.168.1.5", "10.78.0.2"], [iface("10.77.0.1/24")]) is None


def test_pick_address_respects_prefix_length() -> None:
    ours = [iface("10.0.0.1/30")]
    assert pick_address(["10.0.0.5", "10.0.0.2"], ours) == "10.0.0.2"
    assert pick_address(["10.0.0.5"], ours) is None


def test_pick_address_ipv6_and_skips_link_local() -> None:
    ours = [iface("fd00:77::1/64"), iface("10.1.0.1/24")]
    assert pick_address(["fe80::2%to-b", "fd00:77::2"], ours) == "fd00:77::2"
    # link-local addresses are on every link's fe80::/64; never picked
    assert pick_address(["fe80::2"], [iface("fe80::1/64")]) is None


def test_pick_address_ignores_garbage_and_our_own_address() -> None:
    ours = [iface("10.77.0.1/24")]
    assert pick_address(["not-an-ip", "", "10.77.0.1", "10.77.0.9"], ours) == "10.77.0.9"


def test_pick_address_several_interfaces() -> None:
    ours = [iface("10.77.0.2/24"), iface("10.77.1.1/24")]
    assert pick_address(["10.77.1.2"], ours) == "10.77.1.2"


# --- which addresses zeroconf binds -----------------------------------------------------------


def test_plan_binding_ipv4_interfaces() -> None:
    plan = plan_binding({"to-a": [iface("10.77.0.2/24"), iface("fe80::1/64")],
                         "to-c": [iface("10.77.1.1/24")]})
    assert plan.bind == ["10.77.0.2", "10.77.1.1"]
    assert plan.ip_version is IPVersion.V4Only
    assert plan.advertised == ["10.77.0.2", "10.77.1.1"]  # never a link-local address


def test_plan_binding_ipv6_only_interface_uses_ipv6() -> None:
    plan = plan_binding({"to-a": [iface("fd99::2/64"), iface("fd98::2/64"), iface("fe80::1/64")],
                         "to-c": [iface("10.77.1.1/24"), iface("fd77:0:0:1::1/64")]})
    assert plan.bind == ["10.77.1.1", "fd99::2"]  # one IPv6 address per v6-only interface
    assert plan.ip_version is IPVersion.All
    assert plan.advertised == ["10.77.1.1", "fd99::2", "fd98::2", "fd77:0:0:1::1"]
    only6 = plan_binding({"to-a": [iface("fd99::2/64")]})
    assert only6.ip_version is IPVersion.V6Only
    assert only6.ours == [iface("fd99::2/64")]


def test_plan_binding_refuses_an_interface_without_usable_address() -> None:
    with pytest.raises(InterfaceError, match="'to-x' has no usable IP address"):
        plan_binding({"to-a": [iface("10.0.0.1/24")], "to-x": [iface("fe80::1/64")]})
    with pytest.raises(InterfaceError):
        plan_binding({"to-x": []})


# --- TXT parsing ----------------------------------------------------------------------------


def test_txt_round_trip() -> None:
    rec = parse_txt(txt_of(GOOD))
    assert rec.node_id == ID_A
    assert (rec.name, rec.role, rec.version, rec.port) == ("car-7", "car", 1, 7420)


def test_txt_long_multibyte_name_fits_and_round_trips() -> None:
    props = encode_txt(ID_A, "🚗" * 64, "car", 7420)
    assert len(f"name={props['name']}".encode()) <= 255
    rec = parse_txt(txt_of(props))
    assert rec.name == props["name"]
    assert rec.name.startswith("🚗" * 50)


def test_txt_keys_case_insensitive_first_wins_unknown_ignored() -> None:
    data = rdata(b"ID=" + ID_A.hex().encode(), b"id=" + ID_B.hex().encode(), b"role=phone",
                 b"name=\xe9\x81\xbf\xe9\x9b\xa3", b"v=1", b"port=9", b"extra=1", b"flag", b"")
    rec = parse_txt(data)
    assert rec.node_id == ID_A
    assert rec.name == "避難"
    assert rec.role == "phone"


@pytest.mark.parametrize(("props", "detail"), [
    ({k: v for k, v in GOOD.items() if k != "id"}, "missing id"),
    ({**GOOD, "id": "zz" * 16}, "id"),
    ({**GOOD, "id": ID_A.hex()[:8]}, "id"),  # the short form is not enough
    ({k: v for k, v in GOOD.items() if k != "port"}, "missing port"),
    ({**GOOD, "port": "0"}, "port"),
    ({**GOOD, "port": "65536"}, "port"),
    ({**GOOD, "port": "-1"}, "port"),
    ({**GOOD, "port": "७४२०"}, "port"),  # Devanagari digits pass str.isdigit()
    ({**GOOD, "v": "x"}, "v"),
    ({**GOOD, "role": "tank"}, "role"),
    ({k: v for k, v in GOOD.items() if k != "name"}, "missing name"),
    ({**GOOD, "name": "a\nb"}, "name"),
    ({**GOOD, "name": "x" * 65}, "name"),
])
def test_txt_malformed_is_refused(props: dict[str, str], detail: str) -> None:
    with pytest.raises(DecodeError) as exc:
        parse_txt(txt_of(props))
    assert detail in exc.value.detail


def test_txt_truncated_and_oversize_and_bad_utf8() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        parse_txt(txt_of(GOOD) + b"\x10abc")
    with pytest.raises(DecodeError) as exc:
        parse_txt(txt_of(GOOD) + rdata(b"p=" + b"x" * 250) * 2)
    assert exc.value.reason == "oversize"
    assert len(txt_of(GOOD) + rdata(b"p=" + b"x" * 250) * 2) > MAX_TXT_SIZE
    with pytest.raises(DecodeError):
        parse_txt(rdata(b"name=\xff\xfe") + txt_of(GOOD))


@given(st.binary(max_size=600))
def test_txt_random_bytes_only_ever_decode_error(data: bytes) -> None:
    try:
        parse_txt(data)
    except DecodeError:
        pass


# --- peer table -----------------------------------------------------------------------------


def peer(node_id: bytes = ID_A, host: str = "10.77.0.2", name: str = "b") -> PeerSeen:
    return PeerSeen(node_id=node_id, name=name, role="car", host=host, port=7420)


def test_peer_table_reports_new_and_changed_only() -> None:
    t = PeerTable()
    assert t.update("b-1", peer()) is True
    assert t.update("b-1", peer()) is False  # refresh, nothing new
    assert t.update("b-1", peer(host="10.77.0.3")) is True  # moved
    assert t.peers() == [peer(host="10.77.0.3")]


def test_peer_table_gone_only_when_last_instance_goes() -> None:
    t = PeerTable()
    t.update("b-old", peer())
    t.update("b-new", peer(name="b2"))
    assert len(t.peers()) == 1
    assert t.remove("b-old") is None
    assert t.remove("unknown") is None
    assert t.remove("b-new") == ID_A
    assert t.peers() == []


def test_peer_table_capacity() -> None:
    t = PeerTable(max_peers=2)
    t.update("x", peer(ID_A))
    t.update("y", peer(ID_B))
    with pytest.raises(DecodeError):
        t.update("z", peer(bytes(16)))
    assert t.update("x", peer(ID_A, host="10.77.0.9")) is True  # existing entries still update


def test_instance_name_is_one_label_and_unique_per_node() -> None:
    assert instance_name("car 7", ID_A) == "car 7-00112233"
    assert "." not in instance_name("a.b.c", ID_A)
    long = instance_name("避" * 40, ID_A)
    assert len(long.encode()) <= 63
    assert long.endswith("-00112233")
    assert instance_name("", ID_B) == "node-ffeeddcc"


# --- the adapter without a network -----------------------------------------------------------


class FakeInfo:
    """What ``Discovery._accept`` reads from a resolved zeroconf ServiceInfo."""

    def __init__(self, text: bytes | None, addresses: list[str]) -> None:
        self.text = text
        self._addresses = addresses

    def parsed_scoped_addresses(self) -> list[str]:
        return self._addresses


def make_discovery(seen: list[PeerSeen], gone: list[bytes]) -> Discovery:
    d = Discovery(node_id=ID_B, name="me", role="car", port=7420, interfaces=[],
                  on_seen=seen.append, on_gone=gone.append)
    d._ours = [iface("10.77.0.1/24")]
    return d


def test_accept_drops_malformed_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[PeerSeen] = []
    gone: list[bytes] = []
    d = make_discovery(seen, gone)
    bad = txt_of({**GOOD, "id": "nothex"})
    with caplog.at_level(logging.WARNING, logger="meshd.discovery"):
        for _ in range(5):
            d._accept("x._carmesh._udp.local.", FakeInfo(bad, ["10.77.0.2"]))
        d._accept("y._carmesh._udp.local.", FakeInfo(None, ["10.77.0.2"]))
        d._accept("z._carmesh._udp.local.", FakeInfo(txt_of({**GOOD, "v": "9"}), ["10.77.0.2"]))
        d._accept("w._carmesh._udp.local.", FakeInfo(txt_of(GOOD), ["192.168.9.9"]))
    assert seen == []
    assert d.drops.counts["txt"] == 6
    assert d.drops.counts["version"] == 1
    assert d.drops.counts["no-subnet"] == 1
    assert len([r for r in caplog.records if "dropped (txt)" in r.getMessage()
                and "x._carmesh" in r.getMessage()]) == 1


def test_accept_reports_peer_filters_self_and_forgets() -> None:
    seen: list[PeerSeen] = []
    gone: list[bytes] = []
    d = make_discovery(seen, gone)
    own = encode_txt(ID_B, "me", "car", 7420)
    d._accept("me-ffeeddcc._carmesh._udp.local.", FakeInfo(txt_of(own), ["10.77.0.1"]))
    assert seen == []
    d._accept("car-7._carmesh._udp.local.", FakeInfo(txt_of(GOOD), ["10.77.1.1", "10.77.0.2"]))
    d._accept("car-7._carmesh._udp.local.", FakeInfo(txt_of(GOOD), ["10.77.1.1", "10.77.0.2"]))
    assert seen == [PeerSeen(node_id=ID_A, name="car-7", role="car", host="10.77.0.2", port=7420)]
    assert d.peers() == seen
    d._forget("car-7._carmesh._udp.local.")
    assert gone == [ID_A]
    assert d.peers() == []


async def test_start_without_interfaces_does_not_start_zeroconf() -> None:
    d = Discovery(node_id=ID_A, name="x", role="car", port=7420, interfaces=[],
                  on_seen=lambda p: None, on_gone=lambda n: None)
    await d.start()
    assert not d.running
    await d.close()


async def test_start_with_missing_interface_is_a_clear_error() -> None:
    d = Discovery(node_id=ID_A, name="x", role="car", port=7420, interfaces=["cm-no-such0"],
                  on_seen=lambda p: None, on_gone=lambda n: None)
    with pytest.raises(InterfaceError, match="no network interface named 'cm-no-such0'"):
        await d.start()
    assert not d.running


async def test_start_with_addressless_interface_is_a_clear_error(monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    monkeypatch.setattr("meshd.discovery.interface_addresses",
                        lambda name: [iface("fe80::1/64")])
    d = Discovery(node_id=ID_A, name="x", role="car", port=7420, interfaces=["eth9"],
                  on_seen=lambda p: None, on_gone=lambda n: None)
    with pytest.raises(InterfaceError, match="no usable IP address"):
        await d.start()


def test_interface_addresses_of_loopback() -> None:
    addrs = interface_addresses("lo")
    assert iface("127.0.0.1/8") in addrs
    with pytest.raises(InterfaceError):
        interface_addresses("cm-no-such0")


# --- static peers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("10.0.0.2:7420", StaticPeer(None, "10.0.0.2", 7420)),
    ("[::1]:7420", StaticPeer(None, "::1", 7420)),
    ("[FD00::0001]:1", StaticPeer(None, "fd00::1", 1)),
    ("car7.local:65535", StaticPeer(None, "car7.local", 65535)),
    (f"{ID_A.hex().upper()}@127.0.0.1:7420", StaticPeer(ID_A, "127.0.0.1", 7420)),
    (f" {ID_A.hex()}@[::1]:7421 ", StaticPeer(ID_A, "::1", 7421)),
])
def test_parse_peer(spec: str, expected: StaticPeer) -> None:
    assert parse_peer(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty"),
    ("10.0.0.2", "missing ':PORT'"),
    ("10.0.0.2:", "port '' is not a number"),
    ("10.0.0.2:x", "not a number"),
    ("10.0.0.2:0", "outside 1..65535"),
    ("10.0.0.2:70000", "outside 1..65535"),
    ("::1:7420", "brackets"),
    ("[::1]7420", "expected ':PORT'"),
    ("[::1:7420", "missing ']'"),
    ("[10.0.0.1]:7420", "not an IPv6 address"),
    (":7420", "host is empty"),
    ("bad_host!:7420", "neither an IP address nor a host name"),
    ("host\n:7420", "neither an IP address nor a host name"),
    ("00112233@10.0.0.2:7420", "full 32-character hex id"),
    ("zz" * 16 + "@10.0.0.2:7420", "full 32-character hex id"),
])
def test_parse_peer_errors_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as exc:
        parse_peer(spec)
    assert message in str(exc.value)


@given(st.text(max_size=80))
def test_parse_peer_random_text_only_value_error(spec: str) -> None:
    try:
        peer = parse_peer(spec)
    except ValueError:
        return
    assert 1 <= peer.port <= 65535
    assert peer.host


def test_static_peer_str_round_trips() -> None:
    for spec in (f"{ID_A.hex()}@[::1]:7420", "10.0.0.2:7420"):
        assert str(parse_peer(spec)) == spec


# --- pins -----------------------------------------------------------------------------------


def test_pin_store_trust_on_first_use_persisted(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "pins.json"
    store = PinStore(path)
    assert store.get("10.0.0.2", 7420) is None
    with caplog.at_level(logging.WARNING, logger="meshd.pins"):
        store.pin("10.0.0.2", 7420, ID_A)
    assert "trust on first use" in caplog.text
    assert ID_A.hex() in caplog.text
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not path.with_name("pins.json.tmp").exists()
    again = PinStore(path)
    assert again.get("10.0.0.2", 7420) == ID_A
    assert again.get("10.0.0.2", 7421) is None
    assert json.loads(path.read_text())["pins"] == {"10.0.0.2:7420": ID_A.hex()}


def test_pin_store_refuses_a_different_id(tmp_path: Path) -> None:
    store = PinStore(tmp_path / "pins.json")
    store.pin("::1", 7420, ID_A)
    store.pin("0:0::1", 7420, ID_A)  # same address spelled differently: no-op
    with pytest.raises(PinConflictError):
        store.pin("::1", 7420, ID_B)
    assert store.verify_or_pin("::1", 7420, ID_A) is False
    with pytest.raises(VerificationError) as exc:
        store.verify_or_pin("::1", 7420, ID_B)
    assert exc.value.reason == "pin"
    assert store.verify_or_pin("::1", 7421, ID_B) is True
    assert PinStore(tmp_path / "pins.json").get("::1", 7421) == ID_B


def test_pin_store_unpin(tmp_path: Path) -> None:
    store = PinStore(tmp_path / "pins.json")
    store.pin("Car7.Local.", 7420, ID_A)
    assert store.get("car7.local", 7420) == ID_A
    assert store.unpin("car7.local", 7420) is True
    assert store.unpin("car7.local", 7420) is False
    assert PinStore(tmp_path / "pins.json").items() == []


@pytest.mark.parametrize("content", [
    "not json",
    "[]",
    json.dumps({"version": 2, "pins": {}}),
    json.dumps({"version": 1, "pins": {"10.0.0.2:7420": "abc"}}),
    json.dumps({"version": 1, "pins": {"10.0.0.2:7420": 5}}),
])
def test_pin_store_refuses_a_corrupt_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pins.json"
    path.write_text(content)
    with pytest.raises(LocalProtocolError):
        PinStore(path)


def test_pin_store_rejects_wrong_length_id(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError):
        PinStore(tmp_path / "pins.json").pin("10.0.0.2", 7420, b"short")


# --- browser events -> resolutions -> callbacks (zeroconf's resolver replaced) ---------------


class ScriptedInfo:
    """Stands in for AsyncServiceInfo: resolves after ``gate`` opens, with the scripted record."""

    records: ClassVar[dict[str, tuple[bytes | None, list[str]]]] = {}
    gate: ClassVar[asyncio.Event]

    def __init__(self, type_: str, name: str) -> None:
        self.name = name
        self.text: bytes | None = None
        self._addresses: list[str] = []

    async def async_request(self, zc: object, timeout_ms: int) -> bool:
        await ScriptedInfo.gate.wait()
        if self.name not in ScriptedInfo.records:
            return False
        self.text, self._addresses = ScriptedInfo.records[self.name]
        return True

    def parsed_scoped_addresses(self) -> list[str]:
        return self._addresses


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedInfo]:
    monkeypatch.setattr("meshd.discovery.AsyncServiceInfo", ScriptedInfo)
    ScriptedInfo.records = {}
    ScriptedInfo.gate = asyncio.Event()
    return ScriptedInfo


async def settle(d: Discovery) -> None:
    for _ in range(10):
        await asyncio.sleep(0)
    while d._tasks:
        await asyncio.gather(*list(d._tasks))


async def test_events_added_updated_removed(scripted: type[ScriptedInfo]) -> None:
    seen: list[PeerSeen] = []
    gone: list[bytes] = []
    d = make_discovery(seen, gone)
    name = "car-7._carmesh._udp.local."
    scripted.records[name] = (txt_of(GOOD), ["10.77.0.2"])
    scripted.gate.set()
    d._on_service_state_change(None, SERVICE_TYPE, name, ServiceStateChange.Added)  # type: ignore[arg-type]
    await settle(d)
    assert [p.host for p in seen] == ["10.77.0.2"]
    scripted.records[name] = (txt_of(GOOD), ["10.77.0.3"])  # the car got a new address
    d._on_service_state_change(None, SERVICE_TYPE, name, ServiceStateChange.Updated)  # type: ignore[arg-type]
    await settle(d)
    assert [p.host for p in seen] == ["10.77.0.2", "10.77.0.3"]
    d._on_service_state_change(None, SERVICE_TYPE, name, ServiceStateChange.Removed)  # type: ignore[arg-type]
    assert gone == [ID_A]
    assert d._generation == {}


async def test_goodbye_during_resolution_wins(scripted: type[ScriptedInfo]) -> None:
    seen: list[PeerSeen] = []
    gone: list[bytes] = []
    d = make_discovery(seen, gone)
    name = "car-7._carmesh._udp.local."
    scripted.records[name] = (txt_of(GOOD), ["10.77.0.2"])
    d._on_service_state_change(None, SERVICE_TYPE, name, ServiceStateChange.Added)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    d._on_service_state_change(None, SERVICE_TYPE, name, ServiceStateChange.Removed)  # type: ignore[arg-type]
    scripted.gate.set()
    await settle(d)
    assert seen == []  # the stale resolution did not bring the departed car back
    assert d.peers() == []
    assert d._generation == {}


async def test_unresolvable_and_malformed_services_leave_no_state(
        scripted: type[ScriptedInfo]) -> None:
    seen: list[PeerSeen] = []
    d = make_discovery(seen, [])
    scripted.gate.set()
    scripted.records["bad._carmesh._udp.local."] = (b"\x05id=zz", ["10.77.0.2"])
    for i in range(50):
        d._on_service_state_change(None, SERVICE_TYPE, f"ghost{i}._carmesh._udp.local.",  # type: ignore[arg-type]
                                   ServiceStateChange.Added)
    d._on_service_state_change(None, SERVICE_TYPE, "bad._carmesh._udp.local.",  # type: ignore[arg-type]
                               ServiceStateChange.Added)
    await settle(d)
    assert seen == []
    assert d._generation == {}
    assert d.drops.counts["txt"] == 1


async def test_resolution_flood_is_bounded(scripted: type[ScriptedInfo]) -> None:
    d = make_discovery([], [])
    for i in range(MAX_PENDING_RESOLVES + 10):
        d._on_service_state_change(None, SERVICE_TYPE, f"s{i}._carmesh._udp.local.",  # type: ignore[arg-type]
                                   ServiceStateChange.Added)
    assert len(d._tasks) == MAX_PENDING_RESOLVES
    assert d.drops.counts["flood"] == 10
    scripted.gate.set()
    await settle(d)
    assert d._tasks == set()


async def test_start_twice_is_refused() -> None:
    d = Discovery(node_id=ID_A, name="x", role="car", port=7420, interfaces=[],
                  on_seen=lambda p: None, on_gone=lambda n: None)
    await d.close()
    with pytest.raises(LocalProtocolError):
        await d.start()


# --- liveness queries: linked peers are not asked, gone peers are still removed ----------------

CAR7 = "car-7._carmesh._udp.local."


T0 = 1_000_000.0  # zeroconf takes created=0 for "now"


def srv(created_ms: float, ttl_s: int = 20) -> DNSService:
    return DNSService(CAR7, 33, 1, ttl_s, 0, 0, 7420, "cm-a.local.", created=T0 + created_ms)


def plan(d: Discovery, now_ms: float, records: dict[str, list[DNSService]]) -> list[str]:
    return d._liveness_plan(T0 + now_ms, records.__getitem__)


def linked_discovery(links: set[bytes], gone: list[bytes]) -> Discovery:
    seen: list[PeerSeen] = []
    d = Discovery(node_id=ID_B, name="me", role="car", port=7420, interfaces=[],
                  on_seen=seen.append, on_gone=gone.append, ttl_s=20,
                  linked=lambda n: n in links)
    d._ours = [iface("10.77.0.1/24")]
    d._accept(CAR7, FakeInfo(txt_of(GOOD), ["10.77.0.2"]))
    assert [p.node_id for p in seen] == [ID_A]
    return d


def test_liveness_asks_an_unlinked_peer_past_half_its_ttl_and_forgets_it_expired() -> None:
    gone: list[bytes] = []
    d = linked_discovery(set(), gone)
    records = {CAR7: [srv(0)]}
    assert plan(d, 5_000, records) == []
    assert plan(d, 11_000, records) == [CAR7]
    assert plan(d, 21_000, records) == []
    assert gone == [ID_A]
    assert d.peers() == []


def test_liveness_does_not_ask_a_linked_peer_nor_forget_it_while_linked() -> None:
    gone: list[bytes] = []
    links = {ID_A}
    d = linked_discovery(links, gone)
    records = {CAR7: [srv(0)]}
    for now in (11_000, 16_000, 21_000, 60_000, 600_000):
        assert plan(d, now, records) == []
    assert gone == []
    assert [p.node_id for p in d.peers()] == [ID_A]
    # the link goes: asked once more, forgotten at the next check when nothing answered
    links.clear()
    assert plan(d, 605_000, records) == [CAR7]
    assert gone == []
    assert plan(d, 610_000, records) == []
    assert gone == [ID_A]
    assert d.peers() == []


def test_liveness_keeps_a_peer_that_answers_after_its_link_went() -> None:
    gone: list[bytes] = []
    links = {ID_A}
    d = linked_discovery(links, gone)
    records = {CAR7: [srv(0)]}
    assert plan(d, 30_000, records) == []
    links.clear()
    assert plan(d, 35_000, records) == [CAR7]
    records[CAR7] = [srv(35_500)]  # its answer
    assert plan(d, 40_000, records) == []
    assert gone == []
    assert plan(d, 47_000, records) == [CAR7]  # stale again: asked
    assert plan(d, 56_000, records) == []
    assert gone == [ID_A]  # that one went unanswered


def test_liveness_goodbye_of_a_linked_peer_still_removes_it() -> None:
    gone: list[bytes] = []
    d = linked_discovery({ID_A}, gone)
    records = {CAR7: [srv(0)]}
    assert plan(d, 25_000, records) == []
    d._on_service_state_change(None, SERVICE_TYPE, CAR7,  # type: ignore[arg-type]
                               ServiceStateChange.Removed)
    assert gone == [ID_A]
    assert plan(d, 30_000, records) == []
    assert d._held == {}


async def test_interface_watch_without_netlink_looks_every_interval_and_reports_changes() -> None:
    IfAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface
    reads: list[int] = []
    changes: list[dict[str, list[IfAddr]]] = []
    addr: list[IfAddr] = [iface("10.77.0.1/24")]
    looked = asyncio.Event()

    def read(names: list[str]) -> tuple[dict[str, list[IfAddr]], dict[str, str]]:
        reads.append(1)
        if len(reads) >= 5:
            looked.set()
        return ({"to-b": addr} if len(reads) >= 3 else {}), {}

    async def on_change(usable: dict[str, list[IfAddr]]) -> None:
        changes.append(usable)

    watch = InterfaceWatch(["to-b"], on_change, interval_s=0.001, netlink=False, read=read)
    assert await watch.check()
    task = asyncio.ensure_future(watch.run())
    try:
        await asyncio.wait_for(looked.wait(), 30)
    finally:
        task.cancel()
    assert changes == [{}, {"to-b": addr}]


async def test_interface_watch_looks_again_once_subscribed_to_netlink() -> None:
    """An address that appears between the first look (``check`` at start) and the netlink
    subscription (``run``, later) sent its kernel message to nobody: the watch looks once
    more after subscribing instead of missing it until the safety look a minute later."""
    if _open_netlink() is None:
        pytest.skip("no rtnetlink here")
    IfAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface
    addr: list[IfAddr] = [iface("10.77.0.1/24")]
    present: dict[str, list[IfAddr]] = {}
    changes: list[dict[str, list[IfAddr]]] = []
    changed = asyncio.Event()

    def read(names: list[str]) -> tuple[dict[str, list[IfAddr]], dict[str, str]]:
        return dict(present), {} if present else {"to-b": "interface 'to-b' is missing"}

    async def on_change(usable: dict[str, list[IfAddr]]) -> None:
        changes.append(usable)
        changed.set()

    watch = InterfaceWatch(["to-b"], on_change, interval_s=3600.0, read=read)
    assert await watch.check()
    assert changes == [{}]
    changed.clear()
    present["to-b"] = addr  # appears now: no netlink message will ever tell the watch
    task = asyncio.ensure_future(watch.run())
    try:
        await asyncio.wait_for(changed.wait(), 10)  # < NETLINK_FALLBACK_S
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert changes == [{}, {"to-b": addr}]
