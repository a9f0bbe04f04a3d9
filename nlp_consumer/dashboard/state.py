"""``CallBoard``: the bounded, thread-safe state behind the dashboard.

Each call (``session_id``) keeps its last ``max_turns`` enriched turns (with the speaker and channel
of a stereo call's turns) and, once the call ended, its ``call.summary.v1`` event (a summary read
before any turn of its call waits, bounded, for the call to appear); at most ``max_calls``
calls are kept (the least recently active is dropped first) and a call without a new turn for
``expire_s`` is removed. Every change bumps a global version; a client that last saw version
``v`` asks ``changes_since(v)`` and gets only the calls changed since then plus the ids removed
since then, so a burst of turns of one call reaches a client as one row update.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]
TOMBSTONES = 10_000


@dataclass(frozen=True, slots=True)
class Turn:
    event_id: str
    utterance: int
    text: str
    label: str
    polarity: float
    score: float
    explanation: tuple[tuple[str, float, int], ...]
    keywords: tuple[str, ...]
    start_ms: int
    end_ms: int
    speaker: str | None = None
    channel: int | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Turn:
        sentiment = event["sentiment"]
        return cls(
            event_id=str(event["event_id"]),
            utterance=int(event["utterance"]),
            text=str(event["text"]),
            label=str(sentiment["label"]),
            polarity=float(sentiment["polarity"]),
            score=float(sentiment["score"]),
            explanation=tuple(
                (str(w["word"]), float(w["weight"]), int(w["index"])) for w in event["explanation"]
            ),
            keywords=tuple(str(k) for k in event["keywords"]),
            start_ms=int(event["start_ms"]),
            end_ms=int(event["end_ms"]),
            speaker=event.get("speaker"),
            channel=event.get("channel"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "utterance": self.utterance,
            "text": self.text,
            "label": self.label,
            "polarity": self.polarity,
            "score": self.score,
            "explanation": [{"word": w, "weight": x, "index": i} for w, x, i in self.explanation],
            "keywords": list(self.keywords),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "speaker": self.speaker,
            "channel": self.channel,
        }


@dataclass
class Call:
    session_id: str
    user_id: str
    turns: dict[int, Turn] = field(default_factory=dict)  # by utterance
    last_seen_s: float = 0.0  # wall clock of the last new turn (or of the summary)
    version: int = 0
    summary_event: dict[str, Any] | None = None  # call.summary.v1, once the call ended

    def latest(self) -> Turn:
        return self.turns[max(self.turns)]

    def summary(self) -> dict[str, Any]:
        latest = self.latest()
        ordered = [self.turns[u] for u in sorted(self.turns)]
        return {
            "id": self.session_id,
            "user": self.user_id,
            "turns": len(self.turns),
            "latest": latest.to_dict(),
            "keywords": _call_keywords(ordered),
            "mean_polarity": round(sum(t.polarity for t in ordered) / len(ordered), 4),
            "last_seen_ms": int(self.last_seen_s * 1000),
            "speakers": self.speakers(),
            "ended": self.summary_event is not None,
        }

    def speakers(self) -> list[str]:
        """The speakers in channel order: the summary's when the call ended, else those heard."""
        if self.summary_event is not None:
            return [str(s["speaker"]) for s in self.summary_event["speakers"]]
        heard = sorted({(t.channel if t.channel is not None else 99, t.speaker) for t in self.turns.values()})
        return [speaker for _, speaker in heard if speaker]

    def detail(self) -> dict[str, Any]:
        return self.summary() | {
            "transcript": [self.turns[u].to_dict() for u in sorted(self.turns)],
            "call_summary": self.summary_event,
        }


class CallBoard:
    def __init__(
        self, expire_s: float, max_calls: int = 1000, max_turns: int = 200, clock: Clock = time.time
    ) -> None:
        self.expire_s = expire_s
        self.max_calls = max_calls
        self.max_turns = max_turns
        self._clock = clock
        self._calls: OrderedDict[str, Call] = OrderedDict()  # least recently active first
        self._removed: deque[tuple[int, str]] = deque(maxlen=TOMBSTONES)
        self._early: OrderedDict[str, dict[str, Any]] = OrderedDict()  # summaries before their call
        self._version = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    @property
    def version(self) -> int:
        return self._version

    def add(self, event: Mapping[str, Any], seen_s: float | None = None) -> bool:
        """Record one enriched event; False when it was a duplicate or too old to show."""
        now = self._clock() if seen_s is None else seen_s
        turn = Turn.from_event(event)
        with self._lock:
            call = self._calls.get(event["session_id"])
            if call is None:
                call = Call(str(event["session_id"]), str(event.get("user_id", "")))
                call.summary_event = self._early.pop(call.session_id, None)
                self._calls[call.session_id] = call
            elif call.turns.get(turn.utterance) == turn:
                return False
            call.turns[turn.utterance] = turn
            while len(call.turns) > self.max_turns:
                del call.turns[min(call.turns)]
            call.last_seen_s = max(call.last_seen_s, now)
            self._calls.move_to_end(call.session_id)
            self._bump(call)
            while len(self._calls) > self.max_calls:
                self._drop(next(iter(self._calls)))
            self._changed.notify_all()
            return True

    def add_summary(self, event: Mapping[str, Any], seen_s: float | None = None) -> bool:
        """Attach a call's summary (a call.summary.v1 document); False when it was a duplicate.
        A summary read before any turn of its call is kept until the call appears."""
        now = self._clock() if seen_s is None else seen_s
        session_id = str(event["session_id"])
        with self._lock:
            call = self._calls.get(session_id)
            if call is None:
                self._early[session_id] = dict(event)
                while len(self._early) > self.max_calls:
                    self._early.popitem(last=False)
                return False
            if call.summary_event == event:
                return False
            call.summary_event = dict(event)
            call.last_seen_s = max(call.last_seen_s, now)
            self._calls.move_to_end(session_id)
            self._bump(call)
            self._changed.notify_all()
            return True

    def expire(self) -> list[str]:
        """Remove the calls idle for ``expire_s``; their ids."""
        cutoff = self._clock() - self.expire_s
        with self._lock:
            idle = [sid for sid, call in self._calls.items() if call.last_seen_s < cutoff]
            for sid in idle:
                self._drop(sid)
            if idle:
                self._changed.notify_all()
            return idle

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            return self._version, [c.summary() for c in reversed(self._calls.values())]

    def changes_since(self, version: int) -> tuple[int, list[dict[str, Any]], list[str]] | None:
        """(new version, changed call summaries, removed ids); None when ``version`` is too old."""
        with self._lock:
            if self._removed and version < self._removed[0][0] - 1 and len(self._removed) == TOMBSTONES:
                return None
            changed = [c.summary() for c in self._calls.values() if c.version > version]
            removed = [sid for v, sid in self._removed if v > version and sid not in self._calls]
            return self._version, changed, removed

    def detail(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            call = self._calls.get(session_id)
            return None if call is None else call.detail()

    def wait(self, version: int, timeout_s: float) -> None:
        """Block until the board moves past ``version`` or ``timeout_s`` passes."""
        with self._lock:
            self._changed.wait_for(lambda: self._version > version, timeout_s)

    def __len__(self) -> int:
        return len(self._calls)

    def _bump(self, call: Call) -> None:
        self._version += 1
        call.version = self._version

    def _drop(self, session_id: str) -> None:
        del self._calls[session_id]
        self._version += 1
        self._removed.append((self._version, session_id))


def _call_keywords(turns: list[Turn], limit: int = 6) -> list[str]:
    """The call's key phrases, most recent turn first, without repeats."""
    seen: list[str] = []
    for turn in reversed(turns):
        for keyword in turn.keywords:
            if keyword not in seen:
                seen.append(keyword)
            if len(seen) == limit:
                return seen
    return seen
