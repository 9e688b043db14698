"""``--play mic`` fails with one clear line, not ``ValueError: no container format 'pulse'`` (issue 11, item 13)."""

from __future__ import annotations

from typing import Any

import av
import pytest

from meshd.core.errors import LocalProtocolError
from voice import media
from voice.endpoint import check_media_options
from voice.media import open_source


def test_mic_without_pulse_or_alsa_is_refused_at_the_argument_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(av, "formats_available", {"wav", "mp3"})
    with pytest.raises(LocalProtocolError, match="neither PulseAudio nor ALSA"):
        check_media_options("mic", None)
    with pytest.raises(LocalProtocolError, match="neither PulseAudio nor ALSA"):
        open_source("mic")
    check_media_options("tone:440", None)  # the others still pass
    check_media_options("silence", None)


def test_mic_that_cannot_be_opened_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def player(file: str, format: str | None = None, **kw: Any) -> Any:
        raise ValueError(f"no container format {format!r}")

    monkeypatch.setattr(av, "formats_available", {"alsa"})
    monkeypatch.setattr(media, "MediaPlayer", player)
    check_media_options("mic", None)
    with pytest.raises(LocalProtocolError) as ei:
        open_source("mic")
    assert str(ei.value) == ("--play mic: cannot open the microphone (alsa: no container format "
                             "'alsa'); play a file or tone:HZ instead")
