"""What flows through the recorder: the decoder's replies and the call events shown or published.

Wire formats (the decoder's JSON, Vosk messages) are parsed at the edge, in ``client.py`` and
``ws_client.py``; everything else sees these dataclasses. A partial (interim) hypothesis and a
final utterance are different types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contract.events import Word  # the words of a final, as published


@dataclass(frozen=True, slots=True)
class Final:
    """A finished utterance; times in ms from the start of the session's audio."""

    utterance: int
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] | None = None
    channel: int | None = None  # of a stereo call (0-based); None for mono
    speaker: str | None = None  # the name the session gave that channel


@dataclass(frozen=True, slots=True)
class ChannelPartial:
    """The open utterance's hypothesis on one channel of a stereo call."""

    channel: int
    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """An open session; engine, model and language are empty when the protocol does not say.
    ``speakers`` names the channels of a stereo session (empty for mono)."""

    session_id: str
    sample_rate_hz: int
    engine: str = ""
    model: str = ""
    language: str = ""
    channels: int = 1
    speakers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChunkReply:
    """The decoder's answer to one chunk: the open utterance's hypothesis and any new finals;
    a stereo call's reply also has each channel's hypothesis (``partials``)."""

    partial: str
    finals: tuple[Final, ...]
    audio_ms: int
    partials: tuple[ChannelPartial, ...] = ()


@dataclass(frozen=True, slots=True)
class EndReply:
    """The last finals (flushed at the end) and the whole transcript as the server kept it."""

    finals: tuple[Final, ...]
    transcript: str


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One call of this run: ``call_id`` counts calls, ``caller`` is the simulated caller (0: none)."""

    call_id: int
    source: str
    user_id: str
    caller: int = 0
    total_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CallStarted:
    call: CallInfo
    session: SessionInfo


@dataclass(frozen=True, slots=True)
class ChunkDecoded:
    """A chunk was answered: ``latency_ms`` is its round trip, ``sent_ms`` the audio sent so far;
    ``partials``: each channel's hypothesis in a stereo call (empty for mono)."""

    call: CallInfo
    partial: str
    sent_ms: int
    latency_ms: float
    partials: tuple[ChannelPartial, ...] = ()


@dataclass(frozen=True, slots=True)
class FinalReceived:
    call: CallInfo
    session: SessionInfo
    final: Final
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class CallSummary:
    """How one call went; ``error`` is None when it ended normally."""

    call: CallInfo
    session_id: str | None
    transcript: str
    utterances: int
    audio_ms: int
    wall_s: float
    chunks: int = 0
    latency_sum_ms: float = 0.0
    error: str | None = None

    @property
    def mean_latency_ms(self) -> float | None:
        """Mean round trip of a chunk to its partial."""
        return self.latency_sum_ms / self.chunks if self.chunks else None

    @property
    def real_time_factor(self) -> float | None:
        return self.wall_s / (self.audio_ms / 1000) if self.audio_ms else None


@dataclass(frozen=True, slots=True)
class CallEnded:
    summary: CallSummary


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """A snapshot of a simulation: calls open now and so far, finals, errors, latency."""

    elapsed_s: float
    active: int
    max_active: int
    started: int
    completed: int
    failed: int
    finals: int
    mean_latency_ms: float | None


CallEvent = CallStarted | ChunkDecoded | FinalReceived | CallEnded
Observer = Callable[[CallEvent], None]


def final_from_json(body: dict[str, Any]) -> Final:
    """A final in the native API's form (``utterance``, ``text``, ``start_ms``, ``end_ms``, ``words``?,
    and in a stereo session ``channel`` and ``speaker``)."""
    words = body.get("words")
    channel = body.get("channel")
    speaker = body.get("speaker")
    return Final(
        utterance=int(body["utterance"]),
        text=str(body["text"]),
        start_ms=int(body["start_ms"]),
        end_ms=int(body["end_ms"]),
        words=None if words is None else tuple(word_from_json(w) for w in words),
        channel=None if channel is None else int(channel),
        speaker=None if speaker is None else str(speaker),
    )


def partials_from_json(items: Any) -> tuple[ChannelPartial, ...]:
    """A stereo reply's ``partials``: ``[{"channel", "speaker", "text"}]`` (nothing for mono)."""
    if not isinstance(items, list):
        return ()
    return tuple(
        ChannelPartial(int(p["channel"]), str(p["speaker"]), str(p.get("text", "")))
        for p in items
        if isinstance(p, dict)
    )


def word_from_json(body: dict[str, Any]) -> Word:
    return Word(str(body["word"]), int(body["start_ms"]), int(body["end_ms"]), float(body.get("conf", 0.0)))


def final_to_json(final: Final) -> dict[str, Any]:
    out: dict[str, Any] = {
        "utterance": final.utterance,
        "text": final.text,
        "start_ms": final.start_ms,
        "end_ms": final.end_ms,
    }
    if final.words is not None:
        out["words"] = [
            {"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms, "conf": w.conf} for w in final.words
        ]
    if final.channel is not None:
        out["channel"] = final.channel
    if final.speaker is not None:
        out["speaker"] = final.speaker
    return out


def speaker_line(final: Final) -> str:
    """A final as one transcript line: ``speaker: text`` in a stereo call, the text alone in mono."""
    return f"{final.speaker}: {final.text}" if final.speaker else final.text
