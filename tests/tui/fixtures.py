"""A model filled with fixed data, for deterministic snapshots and view tests."""

from __future__ import annotations

from tui.model import MeshModel

#: the wall time the fixed model is seen at
NOW = 1_764_185_000.0

ME = "a1" * 16
BRAVO = "b2" * 16
CHARLIE = "c3" * 16
DELTA = "d4" * 16


def _nb(node_id: str, name: str, port: int, rtt: float | None, loss: float, cost: int,
        up_s: float) -> dict[str, object]:
    return {"node_id": node_id, "short_id": node_id[:8], "name": name, "role": "car",
            "address": f"10.88.23.{port - 7300}:{port}", "state": "up", "rtt_ms": rtt, "loss": loss,
            "tx_packets": 100, "rx_packets": 98, "tx_bytes": 9000, "rx_bytes": 8800,
            "cost": cost, "etx": 1.0, "up_since": NOW - up_s, "initiator": True}


def filled_model() -> MeshModel:
    """Three neighbours with 30 s of history, routes, topology, a call, sync, library, board."""
    m = MeshModel()
    m.set_connected(True, "/tmp/cm/alpha/control.sock", NOW - 60)
    m.apply("status", {"node_id": ME, "short_id": ME[:8], "name": "alpha", "role": "car",
                       "version": "0.1.0", "ready": True, "uptime_s": 3725.0,
                       "state_dir": "/tmp/cm/alpha", "listen": ["127.0.0.1:7420"],
                       "interfaces": [], "neighbours": 2, "routes": 3,
                       "drops": {"bad_hello": 2}}, NOW)
    for i in range(30):
        m.apply("neighbours", {"neighbours": [
            _nb(BRAVO, "bravo", 7421, 1.0 + (i % 7) * 0.5, 0.0 if i % 9 else 0.1, 96, 3600),
            _nb(CHARLIE, "charlie", 7422, 4.0 + (i % 5), 0.3 if i > 25 else 0.05, 256, 95),
        ]}, NOW - 30 + i)
    m.apply("routes", {"routes": [
        {"destination": BRAVO, "name": "bravo", "next_hop": BRAVO, "next_hop_name": "bravo",
         "metric": 96, "seqno": 12, "age_s": 1.5},
        {"destination": CHARLIE, "name": "charlie", "next_hop": CHARLIE,
         "next_hop_name": "charlie", "metric": 256, "seqno": 7, "age_s": 3.0},
        {"destination": DELTA, "name": "delta", "next_hop": BRAVO, "next_hop_name": "bravo",
         "metric": 192, "seqno": 40, "age_s": 12.0},
    ]}, NOW)
    m.apply("topology", {
        "nodes": [{"node_id": ME, "name": "alpha", "role": "car"},
                  {"node_id": BRAVO, "name": "bravo", "role": "car"},
                  {"node_id": CHARLIE, "name": "charlie", "role": "phone"},
                  {"node_id": DELTA, "name": "delta", "role": "dealer"}],
        "links": [{"a": ME, "b": BRAVO, "cost": 96}, {"a": ME, "b": CHARLIE, "cost": 256},
                  {"a": BRAVO, "b": DELTA, "cost": 96}, {"a": CHARLIE, "b": DELTA, "cost": 300}],
    }, NOW)
    for i in range(20):
        m.apply("calls", {"calls": [
            {"call_id": "0a1b2c3d4e5f60718293", "peer": BRAVO, "peer_name": "bravo",
             "role": "callee", "state": "ended", "reason": "hung up by peer",
             "duration_s": 12.0, "setup_ms": 160.9,
             "quality": {"rtt_ms": 9.9, "jitter_ms": 3.1, "loss": 0.0}},
            {"call_id": "9f8e7d6c5b4a39281706", "peer": DELTA, "peer_name": "delta",
             "role": "caller", "state": "active", "reason": None, "duration_s": 62.0 + i,
             "setup_ms": 75.2,
             "quality": {"rtt_ms": 20.0 + (i % 4) * 3, "jitter_ms": 2.5, "loss": 0.01}}]}, NOW)
    m.apply("sync.status", {"ops": 1520, "pending": 3, "quarantined": [], "peers": {
        BRAVO: {"up": True, "last_sync": NOW - 4, "ops_in": 120, "ops_out": 80,
                "bytes_in": 52000, "bytes_out": 31000, "sessions": 3, "failures": 0,
                "refused_in": 0, "catch_up": {"in_expected": 400, "in_done": 100,
                                              "out_expected": 0, "out_done": 0}},
        CHARLIE: {"up": True, "last_sync": NOW - 20, "ops_in": 5, "ops_out": 9,
                  "bytes_in": 2100, "bytes_out": 3900, "sessions": 1, "failures": 1,
                  "refused_in": 0, "catch_up": None}}}, NOW)
    m.apply_search("避難", {"results": [
        {"doc_id": "doc1", "title": "避難所の開設手順", "collection": "know-how",
         "snippet": "地域の[避難]所を開設するときは…"},
        {"doc_id": "doc2", "title": "Evacuation routes", "collection": "work",
         "snippet": "[避難] routes along the river"}]})
    m.apply_document({"doc_id": "doc1", "title": "避難所の開設手順", "collection": "know-how",
                      "tags": ["shelter"], "body": "1. 鍵を開ける\n2. 名簿を用意する"})
    m.apply("situation.list", {"records": [
        {"owner": BRAVO, "owner_name": "bravo", "kind": "person",
         "fields": {"safety": "safe", "people": 3}},
        {"owner": DELTA, "owner_name": "delta", "kind": "shelter",
         "fields": {"capacity": 120, "needs": "water"}}]}, NOW)
    m.apply("bulletin.list", {"bulletins": [
        {"id": "bul1", "title": "Water point open", "author_name": "city",
         "body": "Water at the school gym from 10:00 until the tanks are empty; bring your own "
                 "containers, at most 20 litres a household."}],
        "trust": {"authority": True}}, NOW)
    m.apply("relay.flows", {"flows": [
        {"source": BRAVO, "source_name": "bravo", "destination": DELTA,
         "destination_name": "delta", "service": "media", "flow_id": 688698988,
         "packets": 3120, "bytes": 412000, "dropped": 12, "loss": 0.0038, "rate_pps": 50.0,
         "age_s": 62.5, "idle_s": 0.02},
        {"source": DELTA, "source_name": "delta", "destination": BRAVO,
         "destination_name": "bravo", "service": "media", "flow_id": 688698988,
         "packets": 3098, "bytes": 409000, "dropped": 0, "loss": 0.0, "rate_pps": 49.5,
         "age_s": 62.4, "idle_s": 0.03}]}, NOW)
    m.apply("messages", {"messages": [
        {"message_id": "m1", "from": BRAVO, "from_name": "bravo", "sent_ms": 1_764_184_900_000,
         "received_ms": 1_764_184_900_500, "text": "避難所は開いています"},
        {"message_id": "m2", "from": DELTA, "from_name": "delta[red]", "sent_ms": 1_764_184_950_000,
         "received_ms": 1_764_184_990_000, "text": "need water\x1b[2J at the gym", "via": "mail"}]},
        NOW)
    m.apply("mail.list", {"outbox": [
        {"message_id": "5be0c7a1d2e3f4", "to": DELTA, "to_name": "delta",
         "queued_ms": 1_764_184_000_000, "expires_ms": 1_764_788_800_000, "status": "delivered",
         "delivered_ms": 1_764_184_600_000},
        {"message_id": "77aa00bb11cc22", "to": CHARLIE, "to_name": "charlie",
         "queued_ms": 1_764_184_800_000, "expires_ms": 1_764_789_600_000, "status": "queued",
         "delivered_ms": None}], "carried": 3}, NOW)
    m.apply_event("neighbour.lost", {"node_id": DELTA, "reason": "hello timeout"}, NOW - 30, NOW)
    m.apply_event("route.changed", {"destination": DELTA, "next_hop": BRAVO}, NOW - 29, NOW)
    return m
