"""One call's decoder state: ``Session`` owns its recognizer, finals and clocks behind one lock.

One decode at a time per session, many sessions in parallel on the server's threads. The state
it keeps for failover (the audio tail since the last final, the next chunk number) is written to
the registry through ``on_chunk``; ``to_record``/``restore`` move it between instances.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from decoder_api.engines.base import Final, Recognizer, RecognizerOptions, samples_to_ms
from decoder_api.sessions.channels import MONO, ChannelLayout, StereoRecognizer, check_frames
from decoder_api.sessions.errors import ChunkOutOfOrder, SessionBusy, SessionEnded, SessionExpired
from decoder_api.sessions.registry import ChunkUpdate, SessionRecord
from decoder_api.sessions.transcripts import join_finals

logger = logging.getLogger(__name__)

FinalsSink = Callable[["Session", Sequence[Final]], None]
ChunkSink = Callable[["Session", ChunkUpdate], None]
PartialSink = Callable[["Session", str], None]
EndedSink = Callable[["Session", str], None]  # the session and why it ended (call.ended reason)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_sessions: int = 64
    idle_s: float = 60.0
    max_duration_s: float = 4 * 3600.0
    max_utterance_s: float = 30.0
    lock_timeout_s: float = 10.0
    max_per_key: int = 0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What the client chose when opening the session."""

    sample_rate_hz: int = 16000
    words: bool = False
    phrases: tuple[str, ...] | None = None
    max_alternatives: int = 0
    user_id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    partials: bool = True
    layout: ChannelLayout = MONO  # stereo: one recognizer (with these options) per channel

    def recognizer_options(self) -> RecognizerOptions:
        """The options of the recognizer of one channel (of the only one, in a mono session)."""
        return RecognizerOptions(
            self.sample_rate_hz, self.words, self.phrases, self.max_alternatives, partials=self.partials
        )


@dataclass(frozen=True, slots=True)
class ChunkResult:
    partial: str
    finals: list[Final]
    audio_ms: int


def config_to_dict(config: SessionConfig) -> dict[str, Any]:
    return {
        "sample_rate_hz": config.sample_rate_hz,
        "words": config.words,
        "phrases": list(config.phrases) if config.phrases is not None else None,
        "max_alternatives": config.max_alternatives,
        "user_id": config.user_id,
        "metadata": dict(config.metadata),
        "partials": config.partials,
        "channels": config.layout.channels,
        "speakers": list(config.layout.speakers),
    }


def config_from_dict(raw: dict[str, Any]) -> SessionConfig:
    phrases = raw.get("phrases")
    return SessionConfig(
        sample_rate_hz=int(raw["sample_rate_hz"]),
        words=bool(raw["words"]),
        phrases=tuple(phrases) if phrases is not None else None,
        max_alternatives=int(raw.get("max_alternatives", 0)),
        user_id=str(raw.get("user_id", "")),
        metadata=dict(raw.get("metadata", {})),
        partials=bool(raw.get("partials", True)),
        layout=ChannelLayout(int(raw.get("channels", 1)), tuple(raw.get("speakers", ()))),
    )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Mark:
    """Where a session stood before an operation, to go back to when its finals are refused."""

    samples: int
    utterance_start: int
    next_seq: int
    finals: int
    restarts: tuple[int, ...] = ()  # a stereo session's channel restart points


class Session:
    """One call: its recognizer, finals so far and clocks, guarded by ``lock``.

    ``partition`` is the finals topic partition the call is pinned to (None until known): it
    is saved with the session so that whoever continues the call publishes to it too.
    """

    def __init__(
        self,
        session_id: str,
        token_hash: str,
        config: SessionConfig,
        recognizer: Recognizer,
        limits: SessionLimits,
        on_finals: FinalsSink,
        owner_key_hash: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_chunk: ChunkSink | None = None,
        on_partial: PartialSink | None = None,
        partition: int | None = None,
    ) -> None:
        self.id = session_id
        self.partition = partition
        self.config = config
        self.owner_key_hash = owner_key_hash
        self.created_at = time.time()
        self.lock = threading.Lock()
        self.finals: list[Final] = []
        self.state = "open"
        self.token_hash = token_hash
        self._recognizer: Recognizer | None = recognizer
        self._limits = limits
        self._on_finals = on_finals
        self._clock = clock
        self._started = clock()
        self.last_active = self._started
        self._samples = 0
        self._utterance_start = 0
        self.next_seq = 0
        self._last_reply: tuple[int, ChunkResult] | None = None
        self._on_chunk = on_chunk or (lambda session, update: None)
        self._on_partial = on_partial
        self._last_partial = ""
        self.tail: list[bytes] = []
        self.tail_start = 0
        self.registry_dirty = False

    @property
    def audio_ms(self) -> int:
        """Audio decoded so far (per channel: positions count frames)."""
        return samples_to_ms(self._samples, self.config.sample_rate_hz)

    @property
    def stereo(self) -> StereoRecognizer | None:
        """The recognizer of a stereo session (None for mono, or once released)."""
        recognizer = self._recognizer
        return recognizer if isinstance(recognizer, StereoRecognizer) else None

    def partials(self) -> tuple[str, ...]:
        """Each channel's partial (caller holds the lock); empty for mono sessions."""
        stereo = self.stereo
        return stereo.partials() if stereo is not None else ()

    @property
    def transcript(self) -> str:
        return join_finals(self.finals)

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token_hash, hash_secret(token))

    def idle_s(self, now: float) -> float:
        return now - self.last_active

    def age_s(self, now: float) -> float:
        return now - self._started

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the session for one operation; a session busy for too long answers 409."""
        if not self.lock.acquire(timeout=self._limits.lock_timeout_s):
            raise SessionBusy("another request for this session is still running")
        try:
            yield
        finally:
            self.lock.release()

    def feed(self, pcm: bytes) -> ChunkResult:
        """Decode one chunk (caller holds the lock)."""
        recognizer = self._open_recognizer()
        check_frames(pcm, self.config.layout)
        self.last_active = self._clock()
        before = self._mark()
        finals = recognizer.accept(pcm)
        self._samples += len(pcm) // self.config.layout.frame_bytes
        finals += self._enforce_utterance_limit(recognizer, finals)
        self.next_seq += 1
        self._record(finals, undo=before)
        self._track_tail(pcm, clear=bool(finals), finals=finals)
        partial = recognizer.partial()
        if self._on_partial is not None and partial and partial != self._last_partial:
            self._on_partial(self, partial)
        self._last_partial = partial
        return ChunkResult(partial, finals, self.audio_ms)

    def feed_numbered(self, seq: int, pcm: bytes) -> ChunkResult:
        """Decode chunk ``seq`` exactly once (caller holds the lock).

        A client that lost a response may resend the same chunk with the same number: it gets
        the same reply again and the audio is not decoded twice. Gaps are refused.
        """
        if self._last_reply is not None and seq == self._last_reply[0]:
            return self._last_reply[1]
        if seq != self.next_seq:
            raise ChunkOutOfOrder(f"expected chunk {self.next_seq}, got {seq}", expected=self.next_seq)
        result = self.feed(pcm)
        self._last_reply = (seq, result)
        return result

    def reset(self) -> None:
        """Drop the open utterance (caller holds the lock)."""
        self._open_recognizer().reset()
        self._utterance_start = self._samples
        self.last_active = self._clock()
        self._track_tail(b"", clear=True)

    def finalize(self) -> list[Final]:
        """Finalise the open utterance now; the stream stays open for the next one (caller holds the lock)."""
        before = self._mark()
        finals = self._open_recognizer().flush()
        self._utterance_start = self._samples
        self.last_active = self._clock()
        self._record(finals, undo=before)
        self._track_tail(b"", clear=True, finals=finals)
        return finals

    def end(self, state: str = "ended") -> list[Final]:
        """Finalise the stream and release the recognizer (caller holds the lock)."""
        if self.state != "open":
            return []
        before = self._mark()
        finals = self._open_recognizer().flush()
        self._record(finals, undo=before)
        self.state = state
        self.last_active = self._clock()
        self.release()
        return finals

    def release(self) -> None:
        recognizer, self._recognizer = self._recognizer, None
        if recognizer is not None:
            recognizer.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "state": self.state,
            "user_id": self.config.user_id,
            "sample_rate": self.config.sample_rate_hz,
            "channels": self.config.layout.channels,
            "speakers": list(self.config.layout.speakers),
            "audio_ms": self.audio_ms,
            "utterances": len(self.finals),
            "next_seq": self.next_seq,
            "transcript": self.transcript,
            "created_at": self.created_at,
        }

    def _open_recognizer(self) -> Recognizer:
        if self.state == "expired":
            raise SessionExpired("the session expired after inactivity or reached its maximum duration")
        if self._recognizer is None or self.state != "open":
            raise SessionEnded("the session has ended")
        return self._recognizer

    def _enforce_utterance_limit(self, recognizer: Recognizer, finals: list[Final]) -> list[Final]:
        if finals:
            self._utterance_start = self._samples
        limit = self._limits.max_utterance_s * self.config.sample_rate_hz
        if self._samples - self._utterance_start < limit:
            return []
        self._utterance_start = self._samples
        return recognizer.flush()

    def to_record(self, owner: str, allocator: str = "", graph: str = "") -> SessionRecord:
        """The session as the registry keeps it, owned by ``owner`` decoding on ``allocator`` with
        ``graph`` (caller holds the lock)."""
        return SessionRecord(
            session_id=self.id,
            owner=owner,
            allocator=allocator,
            graph=graph,
            config=config_to_dict(self.config),
            token_hash=self.token_hash,
            owner_key_hash=self.owner_key_hash,
            next_seq=self.next_seq,
            position_samples=self._samples,
            tail_start_samples=self.tail_start,
            next_utterance=len(self.finals),
            finals=tuple(self.finals),
            tail=tuple(self.tail),
            created_at=self.created_at,
            partition=self.partition,
            channel_restarts=self._restarts(),
        )

    def restore(self, record: SessionRecord) -> list[Final]:
        """Continue a call decoded elsewhere: replay its audio since the last final.

        Returns finals the replay produced (none for Vosk, whose replay is exact).
        """
        recognizer = self._open_recognizer()
        self._resume(record.tail_start_samples, record.next_utterance, record.channel_restarts)
        self.finals = list(record.finals)
        self.created_at = record.created_at or self.created_at
        self._samples = self.tail_start = self._utterance_start = record.tail_start_samples
        replayed: list[Final] = []
        for chunk in record.tail:
            replayed += recognizer.replay(chunk)
            self._samples += len(chunk) // self.config.layout.frame_bytes
            self.tail.append(chunk)
        self.next_seq = record.next_seq
        self._last_reply = (record.next_seq - 1, ChunkResult(recognizer.partial(), [], self.audio_ms))
        if replayed:
            self._record(replayed)
            self._track_tail(b"", clear=True, finals=replayed)
        return replayed

    def _resume(self, tail_start: int, next_utterance: int, restarts: tuple[int, ...]) -> None:
        """Place the recognizer where the audio to replay starts (each channel at its own point)."""
        stereo = self.stereo
        if stereo is not None and restarts:
            stereo.resume_channels(restarts, next_utterance)
        else:
            self._open_recognizer().resume(tail_start, next_utterance)

    def _restarts(self) -> tuple[int, ...]:
        stereo = self.stereo
        return stereo.restart_points if stereo is not None else ()

    def _track_tail(self, pcm: bytes, clear: bool, finals: Sequence[Final] = ()) -> None:
        """Keep the audio since the last final (what a takeover replays) and tell the registry.

        A stereo session keeps the audio from the earlier of its channels' restart points: a
        final of one channel does not end the other's utterance.
        """
        dropped = 0
        stereo = self.stereo
        if stereo is not None:
            if pcm:
                self.tail.append(pcm)
            dropped = self._trim_tail(stereo.replay_start)
            clear = not self.tail
        elif clear:
            self.tail, self.tail_start = [], self._samples
        elif pcm:
            self.tail.append(pcm)
        update = ChunkUpdate(
            pcm,
            clear,
            self.next_seq,
            self._samples,
            len(self.finals),
            self.tail_start,
            tuple(finals),
            self.partition,
            drop_chunks=dropped if stereo is not None else 0,
            append=bool(pcm),
            channel_restarts=self._restarts(),
        )
        self._on_chunk(self, update)

    def _trim_tail(self, start: int) -> int:
        """Drop the tail's chunks before frame ``start``; returns how many."""
        dropped = 0
        frame_bytes = self.config.layout.frame_bytes
        while self.tail and self.tail_start + len(self.tail[0]) // frame_bytes <= start:
            self.tail_start += len(self.tail.pop(0)) // frame_bytes
            dropped += 1
        if not self.tail:
            self.tail_start = self._samples
        return dropped

    def _record(self, finals: list[Final], undo: _Mark | None = None) -> None:
        """Keep and hand on new finals. When the sink refuses them (the outbox cannot journal:
        disk full, Redis down) and ``undo`` is given, the session goes back to where it was
        before the operation, so the client's retry decodes the same audio again and no final
        is lost or skipped."""
        if finals:
            self.finals.extend(finals)
            try:
                self._on_finals(self, finals)
            except Exception:
                if undo is not None:
                    self._undo(undo)
                raise

    def _mark(self) -> _Mark:
        return _Mark(self._samples, self._utterance_start, self.next_seq, len(self.finals), self._restarts())

    def _undo(self, mark: _Mark) -> None:
        """Back to ``mark``: the recognizer is rebuilt from the audio since the last final, as a
        takeover does (exact for Vosk)."""
        self._samples, self._utterance_start, self.next_seq = (
            mark.samples,
            mark.utterance_start,
            mark.next_seq,
        )
        del self.finals[mark.finals :]
        recognizer = self._open_recognizer()
        self._resume(self.tail_start, len(self.finals), mark.restarts)
        for chunk in self.tail:
            recognizer.replay(chunk)
        logger.warning(
            "finals_not_journaled session_id=%s next_seq=%d replayed_chunks=%d",
            self.id,
            self.next_seq,
            len(self.tail),
        )
