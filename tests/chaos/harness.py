"""The pipeline under test and the one assertion every fault shares.

``Pipeline`` runs real processes only: an Apache Kafka broker (KRaft, its log directory under the
test's working directory) and a redis-server of its own (so a test may pause, kill and restart
them with their data), decoder instances sharing that Redis (registry and outbox), and enrichment
consumers in one group. ``Caller`` streams a call the way a client behind the OpenShift Route
does: numbered chunks, retries on 503/429 and ``session_busy`` / ``wrong_instance``, and another
instance when its own cannot be reached. ``assert_exactly_once`` reads a topic
(``transcripts.enriched.v1`` unless told otherwise) from the beginning and checks the rule the
README gives subscribers: after de-duplication by ``event_id``, every final of every call is
there exactly once, in order per call; it counts the raw duplicates it dropped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from contract.events import is_call_ended
from decoder_api.audio import chunk_bytes, iter_chunks
from decoder_api.engines.base import RecognizerOptions
from decoder_api.sessions.transcripts import stream_pcm
from devtools import devstack
from devtools.processes import DecoderServer, RedisServer, free_port
from tests.conftest import RATE_HZ, SpokenCall, join_turns
from tests.kafka import Broker, dedup_by_event_id, murmur2_partition, readyz, start_broker, wait_for
from tests.reference import ReferenceEngine
from tests.test_nlp_consumer.conftest import ConsumerRun, ConsumerRunner, metric

TRANSCRIPTS = "transcripts.v1"
ENRICHED = "transcripts.enriched.v1"
DLQ = "transcripts.dlq.v1"
SUMMARIES = "calls.summary.v1"
PARTITIONS = 4
GROUP = "nlp-chaos"
CHUNK_MS = 200
HEARTBEAT_TTL_S = 2.0
SESSION_IDLE_S = 30
SKEWED_CLOCK = Path(__file__).resolve().parent / "skewed_clock"
REQUEST_DEADLINE_S = 120.0
RECOVERY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Scale:
    """How hard the suite pushes: 1 in ``make test``, more under ``make chaos`` (``CHAOS_SCALE``)."""

    factor: int

    @classmethod
    def from_env(cls) -> Scale:
        return cls(max(1, int(os.environ.get("CHAOS_SCALE", "1"))))

    @property
    def calls(self) -> int:
        """Concurrent calls per fault."""
        return 2 * self.factor

    @property
    def repetitions(self) -> int:
        """How many times a fault is injected in one test."""
        return 1 if self.factor == 1 else 1 + self.factor // 2

    @property
    def outage_s(self) -> float:
        """How long a paused or killed service stays down."""
        return 4.0 * self.factor


@dataclass(frozen=True)
class Script:
    """A call's audio and the finals an uninterrupted decode gives: ``(utterance, text)``."""

    pcm: bytes
    finals: tuple[tuple[int, str], ...]

    @property
    def chunks(self) -> list[bytes]:
        return list(iter_chunks(self.pcm, chunk_bytes(RATE_HZ, CHUNK_MS)))


def call_scripts(engine: ReferenceEngine, call: SpokenCall) -> list[Script]:
    """The Korean call with its turns rotated (distinct calls), each decoded offline as the reference."""
    turns = [
        call.pcm[start * RATE_HZ // 1000 * 2 : end * RATE_HZ // 1000 * 2] for start, end in call.spans_ms
    ]
    scripts = []
    for shift in range(len(turns)):
        order = turns[shift:] + turns[:shift]
        pcm = join_turns(call.turns, order).pcm
        recognizer = engine.create(RecognizerOptions(RATE_HZ, words=True))
        finals = stream_pcm(recognizer, pcm, CHUNK_MS).finals
        recognizer.close()
        reference = tuple((f.utterance, f.text) for f in finals if f.text.strip())
        assert len(reference) >= 3, reference
        scripts.append(Script(pcm, reference))
    return scripts


# --- services that a test can break ------------------------------------------------------------


@dataclass
class Instance:
    """One decoder pod: a stable name (instance id and outbox name) and address across restarts."""

    name: str
    server: DecoderServer

    @property
    def url(self) -> str:
        return self.server.url

    def kill(self) -> None:
        assert self.server.stop(signal.SIGKILL) == -signal.SIGKILL

    def restart(self) -> None:
        """What the orchestrator does after a crash: the same pod, the same name, a new process."""
        self.server.start()


ASSIGNMENT_LOG = re.compile(r"partitions_(assigned|revoked) partitions=(\S+)")


def assigned_partitions(run: ConsumerRun) -> set[int]:
    """The input partitions ``run`` holds now, from its ``partitions_assigned`` /
    ``partitions_revoked`` log lines (its rebalance callbacks)."""
    held: set[int] = set()
    log = run.process.log.read_text(encoding="utf-8", errors="replace")
    for change, listed in ASSIGNMENT_LOG.findall(log):
        partitions = {
            int(item.rsplit("/", 1)[1].split("@")[0])
            for item in listed.split(",")
            if item.startswith(f"{TRANSCRIPTS}/")
        }
        held = held | partitions if change == "assigned" else held - partitions
    return held


def session_partition(session_id: str) -> int:
    """The partition of a call's finals (and of its enriched events): both topics are keyed by
    ``session_id`` with the Java client's partitioner and have ``PARTITIONS`` partitions."""
    return murmur2_partition(session_id.encode("utf-8"), PARTITIONS)


@dataclass
class Pipeline:
    """Broker, Redis, decoders sharing the Redis registry and outbox, and the enrichment group."""

    workdir: Path
    broker: Broker
    redis: RedisServer
    runner: ConsumerRunner
    instances: dict[str, Instance] = field(default_factory=dict)
    consumers: list[ConsumerRun] = field(default_factory=list)

    def decoder_env(self, name: str, **settings: str) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "KAFKA_TOPIC": TRANSCRIPTS,
            "REDIS_URL": self.redis.url,
            "DECODER_REDIS_URL": self.redis.url,
            "DECODER_ENGINE": "vosk",
            "DECODER_MODEL": "ko",
            "DECODER_INSTANCE_ID": name,
            "DECODER_OUTBOX_NAME": name,
            "DECODER_OUTBOX_DIR": str(self.workdir / f"outbox-{name}"),
            "DECODER_REGISTRY_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
            "DECODER_SESSION_IDLE_S": str(SESSION_IDLE_S),
            "DECODER_POOL_WARM": "1",
            "DECODER_SESSION_RATE_PER_MIN": "0",
        }
        return env | {f"DECODER_{k.upper()}": v for k, v in settings.items()}

    def add_instance(self, name: str, env: dict[str, str] | None = None) -> Instance:
        env = env if env is not None else self.decoder_env(name)
        server = DecoderServer(free_port(), env, self.workdir / f"decoder-{name}.log")
        instance = Instance(name, server.start())
        self.instances[name] = instance
        return instance

    def remove_instance(self, name: str) -> None:
        self.instances.pop(name).server.stop()

    def add_consumer(self) -> ConsumerRun:
        run = self.runner(TRANSCRIPTS, ENRICHED, DLQ, GROUP, NLP_BATCH_SIZE="8", NLP_TORCH_THREADS="1")
        self.consumers.append(run)
        return run

    def urls(self, *names: str) -> list[str]:
        return [self.instances[n].url for n in names or self.instances]

    def restart_broker(self) -> float:
        """Start the (killed) broker again on its directory and ports, as the orchestrator restarts
        a crashed node: every topic, committed offset and producer id is still there. Returns the
        seconds until it answered a metadata request."""
        started = time.monotonic()
        self.broker.start().wait_ready()
        return time.monotonic() - started

    def partition_owners(self) -> dict[int, ConsumerRun]:
        """Input partition → the consumer that holds it, once the group is settled: every
        partition held by exactly one live consumer and every consumer holding one."""

        def settled() -> dict[int, ConsumerRun] | None:
            held = [(run, assigned_partitions(run)) for run in self.consumers]
            owners = {p: run for run, partitions in held for p in partitions}
            whole = sum(len(partitions) for _, partitions in held) == len(owners) == PARTITIONS
            return owners if whole and all(partitions for _, partitions in held) else None

        return wait_for(settled, RECOVERY_TIMEOUT_S, "every input partition held by one consumer", 0.2)

    def wait_recovered(self) -> None:
        """Every decoder ready (``/readyz`` 200, Kafka connected, registry ok, outbox drained) and
        every consumer alive with partitions; no manual step in between."""

        def decoders_ready() -> bool:
            for instance in self.instances.values():
                status, body = readyz(instance.server)
                checks = body.get("checks", {})
                if status != 200 or checks.get("kafka") != "connected" or checks.get("outbox_pending"):
                    return False
                if checks.get("registry", "ok") not in ("ok", "disabled"):
                    return False
            return True

        wait_for(decoders_ready, RECOVERY_TIMEOUT_S, "every decoder ready with an empty outbox", 0.5)
        for run in self.consumers:
            run.process.check_alive()
        wait_for(
            lambda: (
                sum(metric(run.metrics_port, "nlp_assigned_partitions") or 0 for run in self.consumers)
                >= PARTITIONS
            ),
            RECOVERY_TIMEOUT_S,
            "every input partition assigned",
            0.5,
        )

    def close(self) -> None:
        for instance in self.instances.values():
            instance.server.stop(signal.SIGKILL)
        self.runner.kill_all()
        self.broker.stop()
        self.redis.stop()


def start_pipeline(
    workdir: Path, model: Path, decoders: Sequence[str] = ("a", "b"), consumers: int = 2
) -> Pipeline:
    broker = start_broker(workdir)  # one of its own: a test may kill it and start it again
    pipeline = Pipeline(
        workdir,
        broker,
        RedisServer(free_port(), workdir / "redis", durable=True).start(),
        ConsumerRunner(broker.bootstrap, model, workdir),
    )
    try:
        devstack.create_topics(broker.bootstrap, [TRANSCRIPTS, ENRICHED, DLQ, SUMMARIES], PARTITIONS)
        for name in decoders:
            pipeline.add_instance(name)
        for _ in range(consumers):
            pipeline.add_consumer()
        pipeline.wait_recovered()
    except BaseException:
        pipeline.close()
        raise
    return pipeline


# --- callers -----------------------------------------------------------------------------------


class Caller:
    """One call over the native API, retrying as a client behind the Route does.

    ``progress`` counts chunks answered; ``gate`` (when set) holds the caller before chunk
    ``gate_at`` until it is released (a client that went away and came back).
    """

    def __init__(
        self, urls: list[str], script: Script, chunk_interval_s: float, gate_at: int | None = None
    ) -> None:
        self.urls = list(urls)
        self.script = script
        self.chunk_interval_s = chunk_interval_s
        self.http = requests.Session()
        self.session_id = self.token = ""
        self.progress = 0
        self.retries: dict[str, int] = defaultdict(int)
        self.gate_at = gate_at
        self.gate = threading.Event()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def owner(self) -> str:
        return self.urls[0]

    def start(self) -> Caller:
        self._thread.start()
        return self

    def join(self, timeout_s: float = 300) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"call {self.session_id} still running"
        if self.error is not None:
            raise AssertionError(f"call {self.session_id} failed: {self.error!r}") from self.error

    def open(self) -> None:
        body = self._request("post", "/v1/sessions", json={"words": True}).json()
        self.session_id, self.token = body["session_id"], body["token"]

    def send(self, seq: int, chunk: bytes) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Session-Token": self.token,
            "X-Chunk-Seq": str(seq),
        }
        body: dict[str, Any] = self._request(
            "post", f"/v1/sessions/{self.session_id}/audio", data=chunk, headers=headers
        ).json()
        self.progress = seq + 1
        return body

    def end(self) -> None:
        self._request("post", f"/v1/sessions/{self.session_id}/end", headers={"X-Session-Token": self.token})

    def _run(self) -> None:
        try:
            self.open()
            for seq, chunk in enumerate(self.script.chunks):
                if seq == self.gate_at:
                    self.gate.wait()
                self.send(seq, chunk)
                time.sleep(self.chunk_interval_s)  # the pace of the caller's audio
            self.end()
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.done.set()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + REQUEST_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                response = self.http.request(method, f"{self.urls[0]}{path}", timeout=30, **kwargs)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                # no answer, or one cut off when its instance died: resent, as the recorder does (a
                # chunk is numbered, so the instance that takes the call over drops a duplicate)
                self.retries["connection"] += 1
                self.urls = self.urls[1:] + self.urls[:1]  # the Route sends it to another pod
                time.sleep(0.1)
                continue
            if response.status_code < 300:
                return response
            code = response.json().get("error", "")
            if response.status_code in (429, 503) or code in ("session_busy", "wrong_instance"):
                self.retries[code or str(response.status_code)] += 1
                time.sleep(min(float(response.headers.get("Retry-After", 0.3)), 1.0))
                continue
            raise AssertionError(f"{method.upper()} {path}: {response.status_code} {response.text}")
        raise TimeoutError(f"{method.upper()} {path}: no answer within {REQUEST_DEADLINE_S:.0f} s")


def start_calls(
    urls: list[str], scripts: Sequence[Script], count: int, chunk_interval_s: float = 0.05
) -> list[Caller]:
    """``count`` concurrent calls, spread over ``urls`` (each starts on its own instance)."""
    callers = []
    for i in range(count):
        home = urls[i % len(urls) :] + urls[: i % len(urls)]
        callers.append(Caller(home, scripts[i % len(scripts)], chunk_interval_s).start())
        time.sleep(0.1)
    return callers


def wait_progress(callers: Sequence[Caller], fraction: float, timeout_s: float = 120) -> None:
    """Until every call has had ``fraction`` of its chunks answered."""
    wait_for(
        lambda: all(c.progress >= fraction * len(c.script.chunks) or c.done.is_set() for c in callers),
        timeout_s,
        f"every call {fraction:.0%} through",
    )


def join_all(callers: Sequence[Caller]) -> None:
    for caller in callers:
        caller.join()


# --- the shared assertion ----------------------------------------------------------------------


def read_events(bootstrap: str, topic: str, wanted: set[str], timeout_s: float = 180) -> list[dict[str, Any]]:
    """Every document of ``topic`` from the beginning (in order per partition), until each
    ``event_id`` in ``wanted`` was seen, then one more quiet second for late duplicates."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        documents: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        quiet_until: float | None = None
        while quiet_until is None or time.monotonic() < quiet_until:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None and not is_call_ended(message.value()):
                documents.append(json.loads(message.value() or b""))
            if quiet_until is None and wanted <= {d["event_id"] for d in documents}:
                quiet_until = time.monotonic() + 1.0
            if quiet_until is None and time.monotonic() > deadline:
                missing = sorted(wanted - {d["event_id"] for d in documents})
                raise AssertionError(f"missing from {topic} after {timeout_s:.0f} s: {missing}")
        return documents
    finally:
        consumer.close()


def expected_finals(calls: Sequence[tuple[str, Script]]) -> dict[str, tuple[str, int, str]]:
    """``event_id`` → ``(session_id, utterance, text)`` of every reference final of ``calls``."""
    return {
        f"{session_id}:{utterance}": (session_id, utterance, text)
        for session_id, script in calls
        for utterance, text in script.finals
    }


def check_delivery(
    documents: Sequence[dict[str, Any]], calls: Sequence[tuple[str, Script]]
) -> dict[str, int]:
    """The subscriber's rule on ``documents`` (one topic, as read): after de-duplication by
    ``event_id`` (the first copy kept) every final of every call ``(session_id, script)`` is
    there once, with the reference text, in utterance order per call; every copy of an event is
    the same. Returns the event count and how many raw duplicates the rule dropped."""
    expected = expected_finals(calls)
    sessions = {session_id for session_id, _ in calls}
    mine = [d for d in documents if d["session_id"] in sessions]
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for document in mine:
        copies[document["event_id"]].append(document)
    assert set(copies) == set(expected), sorted(set(copies) ^ set(expected))
    for event_id, found in copies.items():
        assert {(d["session_id"], d["utterance"], d["text"]) for d in found} == {expected[event_id]}
        assert len({json.dumps(d.get("sentiment"), sort_keys=True) for d in found}) == 1, event_id
    first_copies = dedup_by_event_id(mine)
    for session_id, script in calls:
        order = [d["utterance"] for d in first_copies if d["session_id"] == session_id]
        assert order == [u for u, _ in script.finals], session_id
    return {"events": len(expected), "duplicates": len(mine) - len(expected)}


def assert_exactly_once(
    pipeline: Pipeline, calls: Sequence[tuple[str, Script]], topic: str = ENRICHED
) -> dict[str, int]:
    """``check_delivery`` on ``topic`` read from the beginning until every final of ``calls`` is there."""
    wanted = set(expected_finals(calls))
    return check_delivery(read_events(pipeline.broker.bootstrap, topic, wanted), calls)


def check_summaries(pipeline: Pipeline, calls: Sequence[tuple[str, Script]]) -> int:
    """Each call has one summary (``<session_id>:summary``; copies the same but for when they were
    produced) counting every one of its finals. Returns how many raw copies were dropped."""
    wanted = {f"{session_id}:summary" for session_id, _ in calls}
    documents = [
        d for d in read_events(pipeline.broker.bootstrap, SUMMARIES, wanted) if d["event_id"] in wanted
    ]
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for document in documents:
        copies[document["event_id"]].append(document | {"produced_at": ""})
    for session_id, script in calls:
        first, *others = copies[f"{session_id}:summary"]
        assert all(other == first for other in others), session_id
        assert first["finals"] == first["finals_expected"] == len(script.finals), (session_id, first)
    return len(documents) - len(wanted)


def calls_of(callers: Sequence[Caller]) -> list[tuple[str, Script]]:
    return [(c.session_id, c.script) for c in callers]


def new_call_works(pipeline: Pipeline, scripts: Sequence[Script], names: Sequence[str] = ()) -> None:
    """After a fault: one fresh call on each instance, every final enriched exactly once."""
    urls = pipeline.urls(*names)
    callers = [Caller(urls[i:] + urls[:i], scripts[0], 0.0).start() for i in range(len(urls))]
    join_all(callers)
    assert not any(c.retries for c in callers), [dict(c.retries) for c in callers]
    assert_exactly_once(pipeline, calls_of(callers))


# --- faults at a boundary ----------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A tmpfs of ``size_kib`` mounted on ``path`` (the outbox directory); ``fill`` takes every free
    byte with a ballast file and ``free`` gives them back."""

    path: Path
    size_kib: int

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_kib}k", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
        )
        return self

    def fill(self) -> None:
        fd = os.open(self.path / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while os.write(fd, b"\0" * 65536):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        (self.path / "ballast").unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


def can_mount_tmpfs(probe: Path) -> bool:
    """True when this process may mount a filesystem (root with CAP_SYS_ADMIN)."""
    try:
        SmallDisk(probe, 64).mount().unmount()
    except (subprocess.CalledProcessError, OSError):
        return False
    return True


def skewed_clock_env(offset_s: int) -> dict[str, str]:
    """A process whose wall clock runs ``offset_s`` off (see ``skewed_clock/sitecustomize.py``)."""
    path = os.pathsep.join(p for p in (str(SKEWED_CLOCK), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "CHAOS_CLOCK_SKEW_S": str(offset_s)}


def session_owner(pipeline: Pipeline, session_id: str) -> str | None:
    raw = redis.Redis.from_url(pipeline.redis.url, socket_timeout=5).hget(
        f"decoder:session:{session_id}", "owner"
    )
    return raw.decode() if isinstance(raw, bytes) else None
