"""All sessions of one instance: the store that bounds them and continues them after failover.

The ``SessionStore`` enforces the limits (count, idle time, duration), expires sessions from a
reaper thread and closes everything on shutdown; nothing lives outside it, so memory does not
grow with sessions that come and go. A session another instance owned is taken over from the
registry (its audio tail replayed) only after the caller is authorized for it. A call taken over
from an instance on another memory allocator, or whose engine searches another decoding graph, is
logged and counted: its replay, and the rest of the call, may then decode slightly differently
from how the first owner would have.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from decoder_api.engines.base import Final, Recognizer, RecognizerOptions
from decoder_api.errors import DecoderError
from decoder_api.metrics import DecoderMetrics
from decoder_api.sessions.channels import StereoRecognizer
from decoder_api.sessions.errors import (
    CapacityExceeded,
    SessionExpired,
    SessionNotFound,
    ShuttingDown,
    TooManySessions,
    WrongInstance,
)
from decoder_api.sessions.registry import (
    ChunkUpdate,
    LocalRegistry,
    Registry,
    RegistryUnavailable,
    SessionRecord,
)
from decoder_api.sessions.session import (
    EndedSink,
    FinalsSink,
    PartialSink,
    Session,
    SessionConfig,
    SessionLimits,
    config_from_dict,
    hash_secret,
)

logger = logging.getLogger(__name__)

REMEMBERED_EXPIRED = 10_000

# Accepts the caller for a session (its credentials: token and owner key hashes) or raises
# Unauthorized/Forbidden; called before a session is touched, taken over or replayed.
Authorize = Callable[["Session | SessionRecord"], None]
# The finals topic partition to pin a session to (by its id), or None while it cannot be known.
PartitionPin = Callable[[str], int | None]


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
        on_ended: EndedSink | None = None,
        allocator: str = "",
    ) -> None:
        self._recognizers = recognizers
        self.allocator = allocator  # the memory allocator this instance decodes on
        self._on_ended: EndedSink = on_ended or (lambda session, reason: None)
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
        recognizer = self._new_recognizer(config)
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
            self._closed(session, "closed", ended="normal")
        return finals

    def delete(self, session: Session, ended: str = "normal") -> None:
        """Remove a session now; an open one is flushed first so no final is lost. ``ended`` is
        the reason its ``call.ended`` event gives."""
        with session.locked():
            was_open = session.state == "open"
            session.end()
        with self._lock:
            self._sessions.pop(session.id, None)
        self._unregister(session.id)
        if was_open:
            self._closed(session, "closed", ended=ended)

    def reap(self) -> int:
        """Expire idle and over-long sessions; returns how many were removed."""
        now = self._clock()
        with self._lock:
            candidates = [s for s in self._sessions.values() if self._is_due(s, now)]
        return sum(1 for s in candidates if self._expire(s, ended=self._why_due(s, now)))

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
                self._expire(session, reason="closed", wait_s=self._limits.lock_timeout_s, ended="shutdown")
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
            count += self._expire(session, wait_s=self._limits.lock_timeout_s, ended="failover-flush")
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

    def _new_recognizer(self, config: SessionConfig) -> Recognizer:
        """The session's recognizer: one from the pool, or one per channel for a stereo call."""
        if not config.layout.stereo:
            return self._recognizers(config.recognizer_options())
        channels: list[Recognizer] = []
        try:
            for _ in range(config.layout.channels):
                channels.append(self._recognizers(config.recognizer_options()))
        except BaseException:
            for recognizer in channels:
                recognizer.close()
            raise
        return StereoRecognizer(channels, config.layout.speakers)

    def _rebuild(self, record: SessionRecord) -> Session:
        self._check_decoding(record)
        config = config_from_dict(record.config)
        recognizer = self._new_recognizer(config)
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

    @property
    def graph(self) -> str:
        """The decoding graph this instance's engine searches ("" until it has loaded, or none)."""
        return self._registry.graph

    def set_graph(self, graph: str) -> None:
        """Once the engine has loaded: recorded by the registry with the calls this instance owns or
        claims, and with its heartbeat."""
        self._registry.graph = graph

    def _check_decoding(self, record: SessionRecord) -> None:
        """Warn about and count a takeover from an instance on another allocator or decoding graph
        (one that did not record it is not counted: nothing is known about it)."""
        for what, theirs, mine, counter in (
            ("allocator", record.allocator, self.allocator, self._metrics.allocator_mismatch_takeovers),
            ("graph", record.graph, self.graph, self._metrics.graph_mismatch_takeovers),
        ):
            if theirs and mine and theirs != mine:
                counter.inc()
                logger.warning(
                    "%s_mismatch_takeover session_id=%s from=%s from_%s=%s %s=%s",
                    what,
                    record.session_id,
                    record.owner,
                    what,
                    theirs,
                    what,
                    mine,
                )

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
            self._registry.save(session.to_record(self.instance_id, self.allocator, self.graph))
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

    def _why_due(self, session: Session, now: float) -> str:
        return "max-duration" if session.age_s(now) >= self._limits.max_duration_s else "idle"

    def _expire(
        self, session: Session, reason: str = "expired", wait_s: float = 0.0, ended: str = "idle"
    ) -> bool:
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
            self._closed(session, reason, ended)
        return True

    def _forget(self, session: Session, remember: bool) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
            if remember:
                self._expired[session.id] = None
                while len(self._expired) > REMEMBERED_EXPIRED:
                    self._expired.popitem(last=False)

    def _closed(self, session: Session, reason: str, ended: str) -> None:
        """Count a session that ended, and hand on its ``call.ended`` event (after its last final)."""
        self._metrics.sessions.labels(reason).inc()
        self._metrics.active_sessions.dec()
        logger.info("session_%s session_id=%s utterances=%d", reason, session.id, len(session.finals))
        try:
            self._on_ended(session, ended)
        except DecoderError as exc:
            logger.error("call_ended_not_journaled session_id=%s error=%s", session.id, exc.code)

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
