"""The session registry: who owns each call, and enough of its state to continue it elsewhere.

Per session it keeps the owner instance, the memory allocator and decoding graph it runs on, the
session's options, token hashes, the finals so far, the stream position, the finals topic
partition the call is pinned to, and the **audio since the last final** as the list of chunks
the owner decoded (trimmed at every final; bounded by the maximum utterance length). Each
instance heartbeats its liveness (and its allocator and graph) with a TTL.
When a chunk for a session reaches an instance that does not own it and the owner's heartbeat
has expired (or it is draining), that instance claims the session atomically and rebuilds the
recognizer by replaying those chunks.

Without ``REDIS_URL`` the service runs as one instance with ``LocalRegistry``, which keeps
nothing: there is nobody to fail over to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from decoder_api.config import ConfigError
from decoder_api.engines.base import Final, Word
from decoder_api.errors import DecoderError

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "decoder:"
CLAIM_SCRIPT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == false then return 0 end
if owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'allocator', ARGV[3], 'graph', ARGV[4])
return 1
"""


class RegistryUnavailable(DecoderError):
    code = "registry_unavailable"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What another instance needs to continue a call."""

    session_id: str
    owner: str
    config: dict[str, Any]
    token_hash: str
    owner_key_hash: str | None
    next_seq: int
    position_samples: int
    tail_start_samples: int
    next_utterance: int
    finals: tuple[Final, ...]
    tail: tuple[bytes, ...]
    last_active: float = 0.0
    created_at: float = 0.0
    partition: int | None = None  # of the finals topic, pinned for the whole call (None: not yet)
    channel_restarts: tuple[int, ...] = ()  # stereo: the frame each channel is replayed from
    allocator: str = ""  # the owner's memory allocator ("": recorded by a version that did not say)
    graph: str = ""  # the owner engine's decoding graph (Engine.graph; "": none, or not recorded)


@dataclass(frozen=True, slots=True)
class ChunkUpdate:
    """After one chunk (or a reset/finalize): where the stream stands, and the tail change.

    ``clear_tail``: an utterance ended (or was dropped), the audio since the last final is
    now empty and starts at ``tail_start_samples``; otherwise ``pcm`` joins the tail.
    ``partition``: the finals topic partition the call is pinned to, once it is.
    A stereo session's tail is trimmed rather than cleared: ``pcm`` joins it (``append``), then
    its first ``drop_chunks`` chunks go; ``channel_restarts`` are its channels' restart points.
    """

    pcm: bytes
    clear_tail: bool
    next_seq: int
    position_samples: int
    next_utterance: int
    tail_start_samples: int
    finals: tuple[Final, ...] = ()
    partition: int | None = None
    drop_chunks: int = 0
    append: bool = True
    channel_restarts: tuple[int, ...] = ()


class Registry(Protocol):
    graph: str  # this instance's decoding graph, recorded by ``claim`` and the heartbeat ("": none)

    @property
    def shared(self) -> bool: ...

    @property
    def available(self) -> bool: ...

    def save(self, record: SessionRecord) -> None: ...

    def record_chunk(self, session_id: str, update: ChunkUpdate) -> None: ...

    def load(self, session_id: str) -> SessionRecord | None: ...

    def owner_lease_s(self, owner: str) -> float:
        """Seconds until ``owner`` stops counting as alive; 0 when it is gone or draining."""
        ...

    def now(self) -> float:
        """Seconds since the epoch on the registry's clock, the one every instance compares with."""
        ...

    def claim(self, session_id: str, expected_owner: str) -> bool:
        """Atomically take ownership from ``expected_owner`` (recording this instance's allocator and
        graph)."""
        ...

    def remove(self, session_id: str) -> None: ...

    def session_ids(self) -> list[str]: ...

    def start(self, on_reconnect: Callable[[], None]) -> None: ...

    def set_draining(self) -> None: ...

    def close(self) -> None: ...


class LocalRegistry:
    """Single instance: sessions live only in this process, nothing is shared."""

    shared = False
    available = True
    graph = ""

    def save(self, record: SessionRecord) -> None:
        pass

    def record_chunk(self, session_id: str, update: ChunkUpdate) -> None:
        pass

    def load(self, session_id: str) -> SessionRecord | None:
        return None

    def owner_lease_s(self, owner: str) -> float:
        return math.inf

    def now(self) -> float:
        return time.time()

    def claim(self, session_id: str, expected_owner: str) -> bool:
        return False

    def remove(self, session_id: str) -> None:
        pass

    def session_ids(self) -> list[str]:
        return []

    def start(self, on_reconnect: Callable[[], None]) -> None:
        pass

    def set_draining(self) -> None:
        pass

    def close(self) -> None:
        pass


def final_to_record(final: Final) -> dict[str, Any]:
    return asdict(final)


def final_from_record(raw: dict[str, Any]) -> Final:
    words = raw.get("words")
    parsed = tuple(Word(**w) for w in words) if words is not None else None
    return Final(
        raw["utterance"],
        raw["text"],
        raw["start_ms"],
        raw["end_ms"],
        parsed,
        raw.get("channel"),
        raw.get("speaker"),
    )


class RedisRegistry:
    """The shared registry on Redis (redis-py; AUTH and TLS through the ``redis(s)://`` URL)."""

    shared = True

    def __init__(
        self,
        url: str,
        instance_id: str,
        heartbeat_ttl_s: float,
        session_ttl_s: float,
        timeout_s: float = 2.0,
        ssl_ca_certs: Path | None = None,
        allocator: str = "",
    ) -> None:
        self.instance_id = instance_id
        self.allocator = allocator  # this instance's, in its heartbeat and in the calls it claims
        self.graph = ""  # this instance's engine's decoding graph, likewise (set once it has loaded)
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **tls_options(ssl_ca_certs)
        )
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._session_ttl_ms = int(session_ttl_s * 1000)
        self._claim = self._client.register_script(CLAIM_SCRIPT)
        self._available = True
        self._clock_offset_s = 0.0  # Redis server time minus this host's wall clock
        self._draining = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._available

    def save(self, record: SessionRecord) -> None:
        """Write a session's whole state (on open, and to catch up after Redis returns)."""
        key = _key(record.session_id)
        meta: dict[Any, Any] = {
            "owner": record.owner,
            "allocator": record.allocator,
            "graph": record.graph,
            "config": json.dumps(record.config),
            "token_hash": record.token_hash,
            "owner_key_hash": record.owner_key_hash or "",
            "next_seq": record.next_seq,
            "position": record.position_samples,
            "tail_start": record.tail_start_samples,
            "next_utterance": record.next_utterance,
            "last_active": self.now(),
            "created_at": record.created_at,
            "partition": "" if record.partition is None else record.partition,
            "channel_restarts": json.dumps(list(record.channel_restarts)),
        }
        finals = [json.dumps(final_to_record(f)) for f in record.finals]
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(key, f"{key}:finals", f"{key}:tail")
            pipe.hset(key, mapping=meta)
            if finals:
                pipe.rpush(f"{key}:finals", *finals)
            if record.tail:
                pipe.rpush(f"{key}:tail", *record.tail)
            pipe.sadd(f"{PREFIX}sessions", record.session_id)
            self._expire(pipe, record.session_id)
            self._run(pipe.execute)

    def record_chunk(self, session_id: str, update: ChunkUpdate) -> None:
        key = _key(session_id)
        with self._client.pipeline(transaction=True) as pipe:
            if update.finals:
                pipe.rpush(f"{key}:finals", *(json.dumps(final_to_record(f)) for f in update.finals))
            if update.clear_tail:
                pipe.delete(f"{key}:tail")
            else:
                if update.pcm and update.append:
                    pipe.rpush(f"{key}:tail", update.pcm)
                if update.drop_chunks:
                    pipe.ltrim(f"{key}:tail", update.drop_chunks, -1)
            fields: dict[Any, Any] = {
                "next_seq": update.next_seq,
                "position": update.position_samples,
                "last_active": self.now(),
                "next_utterance": update.next_utterance,
                "tail_start": update.tail_start_samples,
            }
            if update.partition is not None:
                fields["partition"] = update.partition
            if update.channel_restarts:
                fields["channel_restarts"] = json.dumps(list(update.channel_restarts))
            pipe.hset(key, mapping=fields)
            self._expire(pipe, session_id)
            self._run(pipe.execute)

    def load(self, session_id: str) -> SessionRecord | None:
        key = _key(session_id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.lrange(f"{key}:finals", 0, -1)
            pipe.lrange(f"{key}:tail", 0, -1)
            meta, finals, tail = self._run(pipe.execute)
        if not meta:
            return None
        return _record(session_id, {k.decode(): v.decode() for k, v in meta.items()}, finals, tail)

    def owner_lease_s(self, owner: str) -> float:
        """What is left of the owner's heartbeat TTL; 0 once it lapsed or the owner is draining."""
        name = f"{PREFIX}instance:{owner}"
        with self._client.pipeline(transaction=False) as pipe:
            pipe.get(name)
            pipe.pttl(name)
            raw, pttl_ms = self._run(pipe.execute)
        if raw is None or json.loads(raw).get("draining", False):
            return 0.0
        return max(int(pttl_ms), 0) / 1000.0

    def now(self) -> float:
        """The Redis server's clock (this host's, corrected by the offset measured at each
        heartbeat): instances whose clocks disagree still agree on how long a call was idle."""
        return time.time() + self._clock_offset_s

    def claim(self, session_id: str, expected_owner: str) -> bool:
        """Atomically take ownership from ``expected_owner``; False if someone else was faster."""
        args = [expected_owner, self.instance_id, self.allocator, self.graph]
        return bool(self._run(lambda: self._claim(keys=[_key(session_id)], args=args)))

    def remove(self, session_id: str) -> None:
        key = _key(session_id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(key, f"{key}:finals", f"{key}:tail")
            pipe.srem(f"{PREFIX}sessions", session_id)
            self._run(pipe.execute)

    def session_ids(self) -> list[str]:
        """Every session in the registry (stale ids whose keys expired are pruned)."""
        members: set[bytes] = self._run(lambda: self._client.smembers(f"{PREFIX}sessions"))  # type: ignore[arg-type,return-value]
        ids = sorted(m.decode() for m in members)
        live = [i for i in ids if self._exists(i)]
        stale = set(ids) - set(live)
        if stale:
            self._run(lambda: self._client.srem(f"{PREFIX}sessions", *stale))
        return live

    def _exists(self, session_id: str) -> bool:
        return bool(self._run(lambda: self._client.exists(_key(session_id))))

    def start(self, on_reconnect: Callable[[], None]) -> None:
        self._heartbeat()
        self._thread = threading.Thread(target=self._loop, args=(on_reconnect,), name="registry", daemon=True)
        self._thread.start()

    def set_draining(self) -> None:
        self._draining = True
        self._heartbeat()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self._client.delete(f"{PREFIX}instance:{self.instance_id}")
        self._client.close()

    def _loop(self, on_reconnect: Callable[[], None]) -> None:
        while not self._stop.wait(self._heartbeat_ttl_s / 3):
            was_available = self._available
            self._heartbeat()
            if self._available and not was_available:
                logger.info("registry_reconnected instance=%s", self.instance_id)
                on_reconnect()

    def _heartbeat(self) -> None:
        value = json.dumps({"draining": self._draining, "allocator": self.allocator, "graph": self.graph})
        ttl_ms = int(self._heartbeat_ttl_s * 1000)
        with contextlib.suppress(RegistryUnavailable):
            self._run(lambda: self._client.set(f"{PREFIX}instance:{self.instance_id}", value, px=ttl_ms))
            self._measure_clock()

    def _measure_clock(self) -> None:
        before = time.time()
        seconds, microseconds = self._run(self._client.time)
        after = time.time()
        self._clock_offset_s = seconds + microseconds / 1e6 - (before + after) / 2

    def _expire(self, pipe: Any, session_id: str) -> None:
        key = _key(session_id)
        for name in (key, f"{key}:finals", f"{key}:tail"):
            pipe.pexpire(name, self._session_ttl_ms)

    def _run(self, call: Callable[[], T]) -> T:
        try:
            result = call()
        except redis.RedisError as exc:
            if self._available:
                logger.warning("registry_unavailable reason=%s", exc)
            self._available = False
            raise RegistryUnavailable("the session registry (Redis) is unreachable") from exc
        self._available = True
        return result


def tls_options(ca_file: Path | None) -> dict[str, Any]:
    """redis-py options for a ``rediss://`` URL: verify the server against ``ca_file`` (if given)."""
    return {} if ca_file is None else {"ssl_ca_certs": str(ca_file)}


def check_tls(url: str | None, ca_file: Path | None, timeout_s: float = 5.0) -> None:
    """At start-up: a ``rediss://`` server whose certificate does not verify is a ``ConfigError``.

    Only a failed TLS handshake is reported; an unreachable Redis is an outage, which the
    registry rides out (``/readyz`` degraded) and the outbox reports itself.
    """
    if not url or not url.startswith("rediss://"):
        return
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        **tls_options(ca_file),
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = _tls_failure(exc)
        if reason is not None:
            hint = (
                "REDIS_SSL_CA_CERTS"
                if ca_file is not None
                else "the system CA store (set REDIS_SSL_CA_CERTS)"
            )
            raise ConfigError(
                f"REDIS_URL: TLS with the Redis server failed ({reason}); checked against {hint}"
            ) from None
    finally:
        client.close()


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS error behind a redis-py error, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    return "TLS handshake failed" if "SSL" in str(exc) else None


def _key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def _record(session_id: str, meta: dict[str, str], finals: list[bytes], tail: list[bytes]) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        owner=meta["owner"],
        allocator=meta.get("allocator", ""),
        graph=meta.get("graph", ""),
        config=json.loads(meta["config"]),
        token_hash=meta["token_hash"],
        owner_key_hash=meta.get("owner_key_hash") or None,
        next_seq=int(meta.get("next_seq", 0)),
        position_samples=int(meta.get("position", 0)),
        tail_start_samples=int(meta.get("tail_start", 0)),
        next_utterance=int(meta.get("next_utterance", 0)),
        last_active=float(meta.get("last_active", 0.0)),
        created_at=float(meta.get("created_at", 0.0)),
        partition=int(meta["partition"]) if meta.get("partition") else None,
        channel_restarts=tuple(int(r) for r in json.loads(meta.get("channel_restarts") or "[]")),
        finals=tuple(final_from_record(json.loads(f)) for f in finals),
        tail=tuple(tail),
    )
