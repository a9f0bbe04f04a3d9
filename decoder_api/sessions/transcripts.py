"""Feeding whole audio through a streaming recognizer, and the JSON shape of its results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from decoder_api.audio import chunk_bytes, iter_chunks
from decoder_api.engines.base import Final, Recognizer, Word


@dataclass(frozen=True, slots=True)
class Transcript:
    """All finals of one stream."""

    finals: tuple[Final, ...]
    duration_ms: int

    @property
    def text(self) -> str:
        return join_finals(self.finals)


def join_finals(finals: tuple[Final, ...] | list[Final]) -> str:
    return " ".join(f.text for f in finals)


def stream_pcm(
    recognizer: Recognizer,
    pcm: bytes,
    chunk_ms: int,
    on_chunk: Callable[[int, str], None] | None = None,
) -> Transcript:
    """Feed ``pcm`` chunk by chunk, exactly as a live client would, then flush."""
    finals: list[Final] = []
    size = chunk_bytes(recognizer.sample_rate_hz, chunk_ms)
    for chunk in iter_chunks(pcm, size):
        finals.extend(recognizer.accept(chunk))
        if on_chunk is not None:
            on_chunk(len(chunk), recognizer.partial())
    finals.extend(recognizer.flush())
    duration_ms = len(pcm) // 2 * 1000 // recognizer.sample_rate_hz
    return Transcript(tuple(finals), duration_ms)


def word_to_dict(word: Word) -> dict[str, Any]:
    return {"word": word.word, "start_ms": word.start_ms, "end_ms": word.end_ms, "conf": word.conf}


def final_to_dict(final: Final) -> dict[str, Any]:
    """The wire form of a final utterance; ``words`` only when they were requested, ``channel`` and
    ``speaker`` only in a stereo session."""
    out: dict[str, Any] = {
        "utterance": final.utterance,
        "text": final.text,
        "start_ms": final.start_ms,
        "end_ms": final.end_ms,
    }
    if final.words is not None:
        out["words"] = [word_to_dict(w) for w in final.words]
    if final.channel is not None:
        out["channel"] = final.channel
    if final.speaker is not None:
        out["speaker"] = final.speaker
    return out
