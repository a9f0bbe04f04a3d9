"""A durable journal of messages waiting for Kafka (the transactional-outbox pattern).

Every final is appended here before it is produced, and removed only after the broker
acknowledged it, so a broker outage, a failed delivery or a killed process never loses one:
whatever is left is produced again, oldest first, when the broker is back or by the next
process. Two backends keep the same order (append order, which is each session's order):

``SqliteOutbox`` (the default)
    A SQLite file in WAL mode with ``synchronous=FULL`` in ``DECODER_OUTBOX_DIR``: an append
    has reached the disk when it returns. Each process owns one journal file, held with an
    exclusive ``flock``; a journal whose process died is unlocked, and the next process that
    opens the directory adopts it (its entries are produced again), so several decoders may
    share a directory.
``RedisOutbox`` (when ``REDIS_URL`` is set)
    A Redis stream per decoder instance (``decoder_api:outbox:<DECODER_OUTBOX_NAME>``, by
    default the instance id): as durable as that Redis is configured to be (use AOF with
    ``appendfsync always`` or ``everysec``). The name must be stable across restarts of an
    instance (a StatefulSet pod name) and not shared by two running instances.

Entries whose delivery can never succeed (a message the broker refuses as too large) are
*parked*: kept, never produced again, counted by a metric, for an operator to deal with.

A record may carry the partition its call is pinned to (``OutboxRecord.partition``), so an
entry produced again after a restart goes where the call's earlier finals went. Journals
written before partitions were pinned are migrated in place (a nullable column); their
entries, like any without a partition, are left to the producer's key partitioner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import redis

from decoder_api.errors import DecoderError

logger = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal-"
REDIS_KEY_PREFIX = "decoder_api:outbox:"

Headers = tuple[tuple[str, str], ...]


class OutboxUnavailable(DecoderError):
    """The journal cannot be written (disk full, Redis unreachable): nothing is accepted unjournaled."""

    code = "outbox_unavailable"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A message to produce: where, its key, value and headers; ``partition`` is the one its call
    is pinned to, or None for the producer's key partitioner."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers = ()
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A journaled message; ``id`` orders entries (opaque, backend-specific)."""

    id: str
    record: OutboxRecord


class Outbox(Protocol):
    """Append-only journal with removal by id; ``read`` returns entries in append order."""

    @property
    def location(self) -> str: ...

    def append(self, records: Sequence[OutboxRecord]) -> list[str]:
        """Journal ``records`` atomically and durably; raises ``OutboxUnavailable``."""
        ...

    def read(self, after: str | None, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` unparked entries appended after the entry ``after`` (None: from the oldest)."""
        ...

    def remove(self, ids: Sequence[str]) -> None: ...

    def park(self, ids: Sequence[str]) -> None:
        """Keep these entries but never return them from ``read`` again."""
        ...

    def count(self) -> int:
        """Entries waiting to be produced (parked ones excluded)."""
        ...

    def parked_count(self) -> int: ...

    def close(self) -> None: ...


def open_outbox(
    redis_url: str | None, directory: Path, name: str, redis_ca_file: Path | None = None
) -> Outbox:
    """The Redis outbox when ``redis_url`` is set, else the SQLite journal in ``directory``."""
    if redis_url:
        return RedisOutbox.connect(redis_url, name, redis_ca_file)
    return SqliteOutbox.open(directory)


# --- SQLite ----------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    parked INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    kafka_partition INTEGER
)
"""
# Added after the first release: journals without it get it (NULL: the key partitioner).
PARTITION_COLUMN = "kafka_partition"


class SqliteOutbox:
    """One process's journal file; see the module docstring."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self._path = path
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._migrate()

    @classmethod
    def open(cls, directory: Path) -> SqliteOutbox:
        """Lock a journal of ``directory`` for this process, adopting those of dead processes."""
        directory.mkdir(parents=True, exist_ok=True)
        locked: list[tuple[Path, int]] = []
        for path in sorted(directory.glob(f"{JOURNAL_PREFIX}*.lock")):
            fd = _lock(path)
            if fd is not None:
                locked.append((path, fd))
        if not locked:
            path = directory / f"{JOURNAL_PREFIX}{uuid.uuid4().hex}.lock"
            fd = _lock(path)
            if fd is None:
                raise OutboxUnavailable(f"cannot lock a new outbox journal in {directory}")
            locked = [(path, fd)]
        (own_lock, own_fd), orphans = locked[0], locked[1:]
        outbox = cls(own_lock.with_suffix(".sqlite3"), own_fd)
        for lock_path, fd in orphans:
            outbox.adopt(lock_path.with_suffix(".sqlite3"))
            _remove_journal(lock_path, fd)
        logger.info(
            "outbox_opened path=%s pending=%d adopted=%d", outbox.location, outbox.count(), len(orphans)
        )
        return outbox

    @property
    def location(self) -> str:
        return str(self._path)

    def append(self, records: Sequence[OutboxRecord]) -> list[str]:
        now = time.time()
        try:
            with self._transaction() as db:
                return [
                    str(
                        db.execute(
                            "INSERT INTO outbox (topic, key, value, headers, created_at, kafka_partition) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (r.topic, r.key, r.value, json.dumps(r.headers), now, r.partition),
                        ).lastrowid
                    )
                    for r in records
                ]
        except sqlite3.Error as exc:
            raise OutboxUnavailable(f"cannot write the outbox journal {self._path}: {exc}") from exc

    def read(self, after: str | None, limit: int) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, headers, kafka_partition FROM outbox "
                "WHERE parked = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (int(after or 0), limit),
            ).fetchall()
        return [OutboxEntry(str(seq), OutboxRecord(t, k, v, _headers(h), p)) for seq, t, k, v, h, p in rows]

    def remove(self, ids: Sequence[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(int(i),) for i in ids])

    def park(self, ids: Sequence[str]) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE outbox SET parked = 1 WHERE seq = ?", [(int(i),) for i in ids])

    def count(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM outbox WHERE parked = 0")

    def parked_count(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM outbox WHERE parked = 1")

    def adopt(self, path: Path) -> int:
        """Append the entries of another (dead) process's journal, in their order."""
        if not path.exists():
            return 0
        with self._lock:
            self._db.execute("ATTACH DATABASE ? AS orphan", (str(path),))
            try:
                if not self._db.execute(
                    "SELECT 1 FROM orphan.sqlite_master WHERE type = 'table' AND name = 'outbox'"
                ).fetchone():
                    return 0
                columns = "topic, key, value, headers, parked, created_at"
                partition = PARTITION_COLUMN if _has_partition(self._db, "orphan") else "NULL"
                self._db.execute("BEGIN IMMEDIATE")
                moved = self._db.execute(
                    f"INSERT INTO main.outbox ({columns}, {PARTITION_COLUMN}) "
                    f"SELECT {columns}, {partition} FROM orphan.outbox ORDER BY seq"
                ).rowcount
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute("DETACH DATABASE orphan")
        logger.info("outbox_adopted path=%s entries=%d", path, moved)
        return moved

    def close(self) -> None:
        """Close the journal and release its lock (the entries stay for the next process)."""
        with self._lock:
            if self._lock_fd < 0:
                return
            self._db.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _scalar(self, sql: str) -> int:
        with self._lock:
            return int(self._db.execute(sql).fetchone()[0])

    def _migrate(self) -> None:
        """A journal of an earlier release: add the partition column (its entries keep NULL)."""
        if not _has_partition(self._db, "main"):
            self._db.execute(f"ALTER TABLE outbox ADD COLUMN {PARTITION_COLUMN} INTEGER")
            logger.info("outbox_migrated path=%s column=%s", self._path, PARTITION_COLUMN)


def _has_partition(db: sqlite3.Connection, schema: str) -> bool:
    """Whether the ``outbox`` table of the attached database ``schema`` has the partition column."""
    columns = db.execute(f"PRAGMA {schema}.table_info(outbox)").fetchall()
    return any(column[1] == PARTITION_COLUMN for column in columns)


def _headers(raw: str) -> Headers:
    return tuple((str(name), str(value)) for name, value in json.loads(raw))


def _lock(path: Path) -> int | None:
    """An exclusive lock on ``path`` (created if missing), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The file may have been removed by a process that adopted it in the meantime.
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _remove_journal(lock_path: Path, fd: int) -> None:
    journal = lock_path.with_suffix(".sqlite3")
    for path in (journal, Path(f"{journal}-wal"), Path(f"{journal}-shm"), lock_path):
        path.unlink(missing_ok=True)
    os.close(fd)


# --- Redis -----------------------------------------------------------------------------------


class RedisOutbox:
    """A Redis stream per decoder instance; see the module docstring."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self._redis = client
        self._stream = f"{REDIS_KEY_PREFIX}{name}"
        self._parked = f"{self._stream}:parked"

    @classmethod
    def connect(cls, url: str, name: str, ca_file: Path | None = None) -> RedisOutbox:
        """``ca_file`` verifies a ``rediss://`` server (else the system's CA store)."""
        tls = {} if ca_file is None else {"ssl_ca_certs": str(ca_file)}
        client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30, **tls
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise OutboxUnavailable(f"cannot reach the outbox Redis: {exc}") from exc
        outbox = cls(client, name)
        logger.info("outbox_opened stream=%s pending=%d", outbox.location, outbox.count())
        return outbox

    @property
    def location(self) -> str:
        return self._stream

    def append(self, records: Sequence[OutboxRecord]) -> list[str]:
        pipe = self._redis.pipeline(transaction=True)
        for record in records:
            pipe.xadd(self._stream, _fields(record))
        try:
            ids = pipe.execute()
        except redis.RedisError as exc:
            raise OutboxUnavailable(f"cannot write the outbox stream {self._stream}: {exc}") from exc
        return [_text(i) for i in ids]

    def read(self, after: str | None, limit: int) -> list[OutboxEntry]:
        rows = self._range(f"({after}" if after else "-", "+", limit)
        return [OutboxEntry(_text(entry_id), _record(fields)) for entry_id, fields in rows]

    def remove(self, ids: Sequence[str]) -> None:
        if ids:
            self._redis.xdel(self._stream, *ids)

    def park(self, ids: Sequence[str]) -> None:
        for entry_id in ids:
            rows = self._range(entry_id, entry_id, 1)
            pipe = self._redis.pipeline(transaction=True)
            for _, fields in rows:
                pipe.xadd(self._parked, dict(fields.items()))
            pipe.xdel(self._stream, entry_id)
            pipe.execute()

    def count(self) -> int:
        return int(self._redis.xlen(self._stream))

    def parked_count(self) -> int:
        return int(self._redis.xlen(self._parked))

    def close(self) -> None:
        self._redis.close()

    def _range(self, first: str, last: str, limit: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        rows = self._redis.xrange(self._stream, min=first, max=last, count=limit)
        return cast(list[tuple[bytes, dict[bytes, bytes]]], rows or [])


def _fields(record: OutboxRecord) -> dict[Any, Any]:
    headers = json.dumps(record.headers)
    fields = {b"topic": record.topic, b"key": record.key, b"value": record.value, b"headers": headers}
    if record.partition is not None:
        fields[b"partition"] = str(record.partition)
    return fields


def _record(fields: dict[bytes, bytes]) -> OutboxRecord:
    """An entry's record; entries of an earlier release have no ``partition`` field (None)."""
    partition = fields.get(b"partition")
    return OutboxRecord(
        topic=fields[b"topic"].decode(),
        key=fields[b"key"],
        value=fields[b"value"],
        headers=_headers(fields[b"headers"].decode()),
        partition=int(partition) if partition is not None else None,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
