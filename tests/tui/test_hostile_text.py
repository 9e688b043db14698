"""Remote text in the console: escape sequences, bidi overrides and markup are shown, never obeyed."""

from __future__ import annotations

from tests.tui.fixtures import BRAVO, CHARLIE, ME, NOW
from tests.tui.helpers import screen_text
from tui.app import MeshConsole
from tui.model import MeshModel

ESC_NAME = "\x1b[2J\x1b[31mSYSTEM"
RLO_NAME = "\u202eefac"  # reads as "cafe" on a bidi terminal
FAKE_LINE = "hi\nSYSTEM: evacuate north"


def hostile_model() -> MeshModel:
    m = MeshModel()
    m.set_connected(True, "s", NOW)
    m.apply("status", {"node_id": ME, "name": "alpha", "ready": True}, NOW)
    m.apply("neighbours", {"neighbours": [
        {"node_id": BRAVO, "name": ESC_NAME, "state": "up"},
        {"node_id": CHARLIE, "name": RLO_NAME + "[/]", "state": "up"}]}, NOW)
    m.apply("situation.list", {"records": [
        {"owner": BRAVO, "owner_name": ESC_NAME, "kind": "person",
         "fields": {"note": "\x9b2J\u2066x\u2069", "status\x1b[8m": "safe"}}]}, NOW)
    m.apply("bulletin.list", {"bulletins": [
        {"title": "\x1b]0;owned\x07Title", "author_name": RLO_NAME, "body": FAKE_LINE}]}, NOW)
    m.apply_event("message.received", {"from": BRAVO, "text": FAKE_LINE}, NOW, NOW)
    return m


def test_model_keeps_only_escaped_text() -> None:
    m = hostile_model()
    assert m.neighbours[BRAVO].name == "\\x1b[2J\\x1b[31mSYSTEM"
    assert m.neighbours[CHARLIE].name == "\\u202eefac[/]"
    assert m.situation[0]["fields"] == {"note": "\\x9b2J\\u2066x\\u2069",
                                        "status\\x1b[8m": "safe"}
    assert m.bulletins[0]["title"] == "\\x1b]0;owned\\x07Title"
    assert m.bulletins[0]["body"] == FAKE_LINE  # a body keeps its lines
    line = m.log[-1].text
    assert "text=hi\\x0aSYSTEM" in line and "\n" not in line


async def test_every_view_shows_hostile_text_escaped() -> None:
    app = MeshConsole(model=hostile_model(), clock=lambda: NOW, utc=True)
    seen = ""
    async with app.run_test(size=(120, 30)) as pilot:
        for key in "onrtcslbg":
            await pilot.press(key)
            await pilot.pause()
            text = screen_text(app)
            for bad in ("\x1b", "\x9b", "\x07", "\u202e", "\u2066", "\u2069"):
                assert bad not in text, (key, bad)
            seen += text
    assert "\\x1b[2J\\x1b[31mSYSTEM" in seen
    assert "\\u202eefac[/]" in seen  # literal brackets: not taken as markup
