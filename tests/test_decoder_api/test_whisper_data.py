"""The whisper engine on the committed sample data: real speech WER, and call turns as finals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from decoder_api.audio import decode_file
from decoder_api.engines.base import RecognizerOptions
from decoder_api.engines.models import resolve_model
from decoder_api.engines.whisper import WhisperEngine
from decoder_api.sessions.transcripts import stream_pcm
from devtools.evaluation import ManifestEntry, word_error_rate
from tests.conftest import RATE_HZ

REAL_SPEECH_SOURCES = ("debian:pocketsphinx-testdata", "pypi:moonshine-voice")
CALLS = tuple(f"call{n}.wav" for n in range(6))


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    loaded = WhisperEngine(resolve_model("whisper", None, None))
    yield loaded
    loaded.close()


def transcribe(engine: WhisperEngine, entry: ManifestEntry) -> list[str]:
    pcm = decode_file(entry.path, RATE_HZ).pcm
    options = RecognizerOptions(RATE_HZ, partials=False)
    return [f.text for f in stream_pcm(engine.create(options), pcm, 200).finals]


def test_real_speech_word_error_rate(engine: WhisperEngine, manifest: list[ManifestEntry]) -> None:
    """LibriVox and moonshine recordings (not the synthetic calls), the whole set at once."""
    real = [
        e
        for e in manifest
        if e.turn is None
        and e.source in REAL_SPEECH_SOURCES
        and not e.path.name.startswith(("cards", "goforward"))
    ]
    assert {e.path.name for e in real} >= {"beckett.wav", "two_cities.wav", "librivox-0870.wav"}
    hypotheses = [" ".join(transcribe(engine, e)) for e in real]
    assert word_error_rate([e.transcript for e in real], hypotheses) <= 0.08


@pytest.mark.parametrize("call", CALLS)
def test_each_turn_of_a_call_is_its_own_final(
    engine: WhisperEngine, manifest: list[ManifestEntry], call: str
) -> None:
    turns = [e for e in manifest if e.path.name == call and e.turn is not None]
    whole = next(e for e in manifest if e.path.name == call and e.turn is None)
    finals = transcribe(engine, whole)
    assert len(finals) == len(turns)
    for text, turn in zip(finals, turns, strict=True):
        assert word_error_rate([turn.transcript], [text]) <= 0.15, (turn.transcript, text)
