"""Per-session decoder state and the store that bounds it.

A ``Session`` owns one recognizer and everything else about one call, behind its own lock:
one decode at a time per session, many sessions in parallel on the server's threads. The
``SessionStore`` enforces the limits (count, idle time, duration), expires sessions from a
reaper thread and closes everything on shutdown; nothing lives outside it, so memory does
not grow with sessions that come and go.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from decoder_api.engines.base import Final, Recognizer, RecognizerOptions, samples_to_ms
from decoder_api.errors import DecoderError
from decoder_api.metrics import DecoderMetrics
from decoder_api.registry import ChunkUpdate, LocalRegistry, Registry, RegistryUnavailable, SessionRecord
from decoder_api.transcripts import join_finals

logger = logging.getLogger(__name__)

REMEMBERED_EXPIRED = 10_000

FinalsSink = Callable[["Session", Sequence[Final]], None]
ChunkSink = Callable[["Session", ChunkUpdate], None]
PartialSink = Callable[["Session", str], None]
# Accepts the caller for a session (its credentials: token and owner key hashes) or raises
# Unauthorized/Forbidden; called before a session is touched, taken over or replayed.
Authorize = Callable[["Session | SessionRecord"], None]
# The finals topic partition to pin a session to (by its id), or None while it cannot be known.
PartitionPin = Callable[[str], int | None]


class SessionNotFound(DecoderError):
    code = "session_not_found"


class SessionExpired(DecoderError):
    code = "session_expired"


class SessionEnded(DecoderError):
    code = "session_ended"


class SessionBusy(DecoderError):
    code = "session_busy"


class ChunkOutOfOrder(DecoderError):
    code = "chunk_out_of_order"


class WrongInstance(DecoderError):
    code = "wrong_instance"


class TooManySessions(DecoderError):
    code = "too_many_sessions"


class CapacityExceeded(DecoderError):
    code = "capacity"


class ShuttingDown(DecoderError):
    code = "shutting_down"


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

    def recognizer_options(self) -> RecognizerOptions:
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
        return samples_to_ms(self._samples, self.config.sample_rate_hz)

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
        self.last_active = self._clock()
        before = self._mark()
        finals = recognizer.accept(pcm)
        self._samples += len(pcm) // 2
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

    def to_record(self, owner: str) -> SessionRecord:
        """The session as the registry keeps it (caller holds the lock)."""
        return SessionRecord(
            session_id=self.id,
            owner=owner,
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
        )

    def restore(self, record: SessionRecord) -> list[Final]:
        """Continue a call decoded elsewhere: replay its audio since the last final.

        Returns finals the replay produced (none for Vosk, whose replay is exact).
        """
        recognizer = self._open_recognizer()
        recognizer.resume(record.tail_start_samples, record.next_utterance)
        self.finals = list(record.finals)
        self.created_at = record.created_at or self.created_at
        self._samples = self.tail_start = self._utterance_start = record.tail_start_samples
        replayed: list[Final] = []
        for chunk in record.tail:
            replayed += recognizer.replay(chunk)
            self._samples += len(chunk) // 2
            self.tail.append(chunk)
        self.next_seq = record.next_seq
        self._last_reply = (record.next_seq - 1, ChunkResult(recognizer.partial(), [], self.audio_ms))
        if replayed:
            self._record(replayed)
            self._track_tail(b"", clear=True, finals=replayed)
        return replayed

    def _track_tail(self, pcm: bytes, clear: bool, finals: Sequence[Final] = ()) -> None:
        """Keep the audio since the last final (what a takeover replays) and tell the registry."""
        if clear:
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
        )
        self._on_chunk(self, update)

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
        return _Mark(self._samples, self._utterance_start, self.next_seq, len(self.finals))

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
        recognizer.resume(self.tail_start, len(self.finals))
        for chunk in self.tail:
            recognizer.replay(chunk)
        logger.warning(
            "finals_not_journaled session_id=%s next_seq=%d replayed_chunks=%d",
            self.id,
            self.next_seq,
            len(self.tail),
        )


class SessionStore:
    """All sessions of this instance, with their limits."""

    def __init__(
        self,
        recognizers: Callable[[RecognizerOptions], Recognizer],
        limits: SessionLimits,
        metrics: DecoderMetrics,
        on_finals: FinalsSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        housekeeping: Callable[[], None] | None = None,
        registry: Registry | None = None,
        instance_id: str = "local",
        on_partial: PartialSink | None = None,
        pin_partition: PartitionPin | None = None,
    ) -> None:
        self._recognizers = recognizers
        self._pin_partition: PartitionPin = pin_partition or (lambda session_id: None)
        self._registry: Registry = registry or LocalRegistry()
        self._on_partial = on_partial
        self.instance_id = instance_id
        self._takeover_lock = threading.Lock()
        self._orphan_check_at = 0.0
        self._housekeeping = housekeeping or (lambda: None)
        self._limits = limits
        self._metrics = metrics
        self._on_finals = on_finals or (lambda session, finals: None)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._closing = False
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def limits(self) -> SessionLimits:
        return self._limits

    def active_count(self) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.state == "open")

    def open(self, config: SessionConfig, owner_key_hash: str | None = None) -> tuple[Session, str]:
        """A new session and its secret token; 503 when full or shutting down."""
        self._admit(owner_key_hash)
        recognizer = self._recognizers(config.recognizer_options())
        session_id, token = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
        session = self._new_session(session_id, hash_secret(token), config, recognizer, owner_key_hash)
        session.partition = self._pin_partition(session_id)
        self._save(session)
        with self._lock:
            self._sessions[session_id] = session
        self._metrics.sessions.labels("opened").inc()
        self._metrics.active_sessions.inc()
        logger.info("session_opened session_id=%s rate=%d", session_id, config.sample_rate_hz)
        return session, token

    def get(self, session_id: str, authorize: Authorize) -> Session:
        """The session once ``authorize`` accepted the caller for it; when it lives elsewhere and
        its owner is dead or draining, it is taken over, but only after that check."""
        with self._lock:
            session = self._sessions.get(session_id)
            expired = session_id in self._expired
        if session is not None:
            authorize(session)
            return session
        if expired:
            raise SessionExpired("the session expired after inactivity or reached its maximum duration")
        return self._take_over(session_id, authorize)

    def describe(self, session_id: str, authorize: Authorize) -> Session | SessionRecord:
        """For reads, once ``authorize`` accepted the caller: the local session, or the registry's
        record when another instance owns it (never taken over for a read)."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None and self._registry.shared:
            found: Session | SessionRecord | None = self._registry.load(session_id)
        else:
            found = session
        if found is None:
            return self.get(session_id, authorize)
        authorize(found)
        return found

    def registry_state(self) -> str:
        if not self._registry.shared:
            return "disabled"
        return "ok" if self._registry.available else "unavailable"

    def resync(self) -> None:
        """After the registry was unreachable: write the full state of every session it missed."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.state == "open" and s.registry_dirty]
        for session in sessions:
            with session.locked():
                self._save(session)
        logger.info("registry_resynced sessions=%d", len(sessions))

    def end(self, session: Session) -> list[Final]:
        with session.locked():
            was_open = session.state == "open"
            finals = session.end()
        if was_open:
            self._unregister(session.id)
            self._closed(session, "closed")
        return finals

    def delete(self, session: Session) -> None:
        """Remove a session now; an open one is flushed first so no final is lost."""
        with session.locked():
            was_open = session.state == "open"
            session.end()
        with self._lock:
            self._sessions.pop(session.id, None)
        self._unregister(session.id)
        if was_open:
            self._closed(session, "closed")

    def reap(self) -> int:
        """Expire idle and over-long sessions; returns how many were removed."""
        now = self._clock()
        with self._lock:
            candidates = [s for s in self._sessions.values() if self._is_due(s, now)]
        return sum(1 for s in candidates if self._expire(s))

    def start_reaper(self, interval_s: float) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap_loop, args=(interval_s,), daemon=True)
            self._reaper.name = "session-reaper"
            self._reaper.start()

    def close(self) -> None:
        """Stop admitting sessions, then hand every open session over or flush its finals.

        With a shared registry the instance announces it is draining and leaves its sessions
        there: the next chunk of each call lands on another instance, which takes it over by
        replaying the audio since the last final (nothing is lost, nothing cut short); a call
        that never comes back is flushed by another instance's orphan check. Alone, this
        instance flushes every open session itself.
        """
        self._closing = True
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
        if self._registry.shared and self._registry.available:
            self._registry.set_draining()
            for session in sessions:
                self._hand_over(session)
        else:
            for session in sessions:
                self._expire(session, reason="closed", wait_s=self._limits.lock_timeout_s)
        self._registry.close()
        logger.info("session_store_closed sessions=%d", len(sessions))

    def reap_orphans(self) -> int:
        """Take over and flush calls whose owner died and whose client went away."""
        if not self._registry.shared:
            return 0
        with self._lock:
            local = set(self._sessions)
        count = 0
        for session_id in self._registry.session_ids():
            record = None if session_id in local else self._registry.load(session_id)
            if record is None or self._registry.owner_lease_s(record.owner) > 0:
                continue
            if self._registry.now() - record.last_active < self._limits.idle_s:
                continue
            try:
                session = self._take_over(session_id, authorize=None)  # the instances' own housekeeping
            except DecoderError:
                continue
            count += self._expire(session, wait_s=self._limits.lock_timeout_s)
        return count

    def _new_session(
        self,
        session_id: str,
        token_hash: str,
        config: SessionConfig,
        recognizer: Recognizer,
        owner_key_hash: str | None,
    ) -> Session:
        return Session(
            session_id,
            token_hash,
            config,
            recognizer,
            self._limits,
            self._sink,
            owner_key_hash,
            self._clock,
            on_chunk=self._chunk_sink,
            on_partial=self._on_partial,
        )

    def _take_over(self, session_id: str, authorize: Authorize | None) -> Session:
        """Continue a call whose owner is gone: claim it, rebuild it, replay its tail; for a
        client's request (``authorize``), only once the caller was accepted for the call."""
        if not self._registry.shared:
            raise SessionNotFound("no such session")
        with self._takeover_lock:
            with self._lock:
                session = self._sessions.get(session_id)
            if session is not None:
                if authorize is not None:
                    authorize(session)
                return session
            record = self._registry.load(session_id)
            if record is None:
                raise SessionNotFound("no such session")
            if authorize is not None:
                authorize(record)  # before any claim or replay: a stranger never moves a call
            lease_s = 0.0 if record.owner == self.instance_id else self._registry.owner_lease_s(record.owner)
            if lease_s > 0:
                # The owner's heartbeat may just have stopped: retrying once it lapses finds the
                # call free to take over, not sooner.
                raise WrongInstance(
                    "another instance owns this session", owner=record.owner, retry_after=math.ceil(lease_s)
                )
            if not self._registry.claim(session_id, record.owner):
                raise WrongInstance("another instance took this session over", owner=record.owner)
            return self._rebuild(record)

    def _rebuild(self, record: SessionRecord) -> Session:
        config = config_from_dict(record.config)
        recognizer = self._recognizers(config.recognizer_options())
        session = self._new_session(
            record.session_id, record.token_hash, config, recognizer, record.owner_key_hash
        )
        session.partition = record.partition  # the first owner's pin, kept for the rest of the call
        with session.locked():
            session.restore(record)
        with self._lock:
            self._sessions[session.id] = session
        self._metrics.sessions.labels("taken_over").inc()
        self._metrics.active_sessions.inc()
        logger.info(
            "session_taken_over session_id=%s from=%s replayed_chunks=%d",
            record.session_id,
            record.owner,
            len(record.tail),
        )
        return session

    def _hand_over(self, session: Session) -> None:
        """Leave a session to the registry for another instance (draining shutdown)."""
        if not session.lock.acquire(timeout=self._limits.lock_timeout_s):
            return
        try:
            if session.registry_dirty:
                self._save(session)
            session.release()
        finally:
            session.lock.release()
        self._forget(session, remember=False)

    def _save(self, session: Session) -> None:
        try:
            self._registry.save(session.to_record(self.instance_id))
            session.registry_dirty = False
        except RegistryUnavailable:
            session.registry_dirty = True

    def _chunk_sink(self, session: Session, update: ChunkUpdate) -> None:
        if session.registry_dirty and self._registry.available:
            self._save(session)
            return
        try:
            self._registry.record_chunk(session.id, update)
        except RegistryUnavailable:
            session.registry_dirty = True

    def _unregister(self, session_id: str) -> None:
        try:
            self._registry.remove(session_id)
        except RegistryUnavailable:
            logger.warning("registry_remove_failed session_id=%s", session_id)

    def _admit(self, owner_key_hash: str | None) -> None:
        if self._closing:
            raise ShuttingDown("the server is shutting down; retry on another instance")
        if self.active_count() >= self._limits.max_sessions:
            self._metrics.sessions.labels("rejected").inc()
            raise CapacityExceeded(
                f"this instance is at its limit of {self._limits.max_sessions} sessions", retry_after=5
            )
        if owner_key_hash is not None and self._limits.max_per_key > 0:
            with self._lock:
                mine = sum(
                    1
                    for s in self._sessions.values()
                    if s.owner_key_hash == owner_key_hash and s.state == "open"
                )
            if mine >= self._limits.max_per_key:
                self._metrics.sessions.labels("rejected").inc()
                raise TooManySessions(
                    f"this API key already has {mine} open sessions (limit {self._limits.max_per_key})",
                    retry_after=5,
                )

    def _is_due(self, session: Session, now: float) -> bool:
        idle_limit = self._limits.idle_s
        return session.idle_s(now) >= idle_limit or session.age_s(now) >= self._limits.max_duration_s

    def _expire(self, session: Session, reason: str = "expired", wait_s: float = 0.0) -> bool:
        acquired = session.lock.acquire(timeout=wait_s) if wait_s else session.lock.acquire(blocking=False)
        if not acquired:
            return False
        try:
            was_open = session.state == "open"
            session.end(state=reason)
        except Exception:
            logger.exception("session_flush_failed session_id=%s", session.id)
            session.release()
        finally:
            session.lock.release()
        self._forget(session, remember=reason == "expired")
        self._unregister(session.id)
        if was_open:
            self._closed(session, reason)
        return True

    def _forget(self, session: Session, remember: bool) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
            if remember:
                self._expired[session.id] = None
                while len(self._expired) > REMEMBERED_EXPIRED:
                    self._expired.popitem(last=False)

    def _closed(self, session: Session, reason: str) -> None:
        self._metrics.sessions.labels(reason).inc()
        self._metrics.active_sessions.dec()
        logger.info("session_%s session_id=%s utterances=%d", reason, session.id, len(session.finals))

    def _sink(self, session: Session, finals: Sequence[Final]) -> None:
        if session.partition is None:  # opened while the partition count was unknown
            session.partition = self._pin_partition(session.id)
        self._metrics.finals.inc(len(finals))
        self._on_finals(session, finals)

    def _check_orphans(self) -> None:
        now = self._clock()
        if now >= self._orphan_check_at:
            self._orphan_check_at = now + max(5.0, self._limits.idle_s / 4)
            try:
                self.reap_orphans()
            except DecoderError:
                logger.warning("orphan_check_skipped reason=registry_unavailable")

    def _reap_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.reap()
                self._housekeeping()
                self._check_orphans()
            except Exception:
                logger.exception("session_reaper_failed")
