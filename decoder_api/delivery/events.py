"""The decoder's side of the transcript event contract (``contract.events``): its finals become
``transcript.v1`` events here.

``events_from_finals`` turns an engine's finals into events: empty finals are never produced,
word confidences are clamped into 0..1 and the engine's words become the contract's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contract.events import SOURCE_DECODER, CallEndedEvent, TranscriptEvent, Word, rfc3339_utc
from decoder_api.engines.base import Final


@dataclass(frozen=True, slots=True)
class EventSource:
    """Who produces the events: the engine and model that decoded, and the producing component."""

    engine: str
    model: str
    language: str
    source: str = SOURCE_DECODER


def events_from_finals(
    finals: Iterable[Final],
    *,
    session_id: str,
    user_id: str,
    origin: EventSource,
    metadata: Mapping[str, Any] | None = None,
    produced_at: str | None = None,
) -> list[TranscriptEvent]:
    """One event per non-empty final, all stamped with the same ``produced_at``."""
    stamp = produced_at or rfc3339_utc()
    return [
        TranscriptEvent(
            session_id=session_id,
            user_id=user_id,
            utterance=final.utterance,
            text=final.text,
            start_ms=final.start_ms,
            end_ms=final.end_ms,
            engine=origin.engine,
            model=origin.model,
            language=origin.language,
            produced_at=stamp,
            words=_clamped(final.words),
            source=origin.source,
            metadata=dict(metadata) if metadata else None,
            channel=final.channel,
            speaker=final.speaker,
        )
        for final in finals
        if final.text.strip()
    ]


def call_ended_event(
    *,
    session_id: str,
    user_id: str,
    reason: str,
    started_at_s: float,
    audio_ms: int,
    channels: int,
    speakers: tuple[str, ...],
    finals: Iterable[Final],
    origin: EventSource,
    metadata: Mapping[str, Any] | None = None,
) -> CallEndedEvent:
    """The ``call.ended.v1`` event of a session that ended now; ``finals`` counts the published ones
    (non-empty), so a consumer knows it has the whole call once it saw utterances 0 to finals - 1."""
    now = rfc3339_utc()
    return CallEndedEvent(
        session_id=session_id,
        user_id=user_id,
        reason=reason,
        started_at=rfc3339_utc(started_at_s),
        ended_at=now,
        audio_ms=max(audio_ms, 0),
        channels=channels,
        speakers=speakers,
        finals=sum(1 for f in finals if f.text.strip()),
        engine=origin.engine,
        model=origin.model,
        language=origin.language,
        produced_at=now,
        source=origin.source,
        metadata=dict(metadata) if metadata else None,
    )


def _clamped(words: tuple[Word, ...] | None) -> tuple[Word, ...] | None:
    """The contract's words, confidences within 0..1 (an engine's rounding must not make a final
    unpublishable)."""
    if words is None:
        return None
    return tuple(
        Word(w.word, max(w.start_ms, 0), max(w.end_ms, 0), min(max(w.conf, 0.0), 1.0)) for w in words
    )
