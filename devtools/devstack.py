"""Local Apache Kafka and Redis for development and tests: ``python -m devtools.devstack up|down|status``.

``up`` starts, in the background and bound to 127.0.0.1:

* an Apache Kafka broker (``KafkaBroker``: one JVM that is broker and KRaft controller, its log
  directory on disk in the state directory, so it survives a restart) from the jars that
  ``make install`` resolves from Maven Central into ``build/kafka/libs``. It has two client
  listeners: PLAINTEXT, and SASL_SSL with SCRAM-SHA-512 (a user created when the log directory is
  formatted; a CA and server certificate of its own). The topics of the OpenShift ``KafkaTopic``
  manifests are created with their partitions and configs (``manifest_topics``);
* ``redis-server`` without persistence.

It waits until a metadata request and a Redis ``PING`` succeed, then writes to the state
directory (default ``.devstack``): ``<service>.pid``, ``<service>.port``, the logs, ``env`` with
``KAFKA_BOOTSTRAP_SERVERS=...`` and ``REDIS_URL=...`` (``set -a; . .devstack/env; set +a``), and
``env.sasl`` with the standard ``KAFKA_*`` client settings of the SASL_SSL listener.
``down`` stops what ``up`` started (the broker with a controlled shutdown); ``status`` says what
is running (exit status 1 if not all).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from decoder_api.errors import DecoderError

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LIBS = ROOT / "build" / "kafka" / "libs"  # `make install` (devtools/kafka/pom.xml)
TOPICS_MANIFEST = ROOT / "openshift" / "kafka" / "topics.yaml"
PARTITIONS = 4
READY_TIMEOUT_S = 30.0
KAFKA_READY_TIMEOUT_S = 90.0  # a JVM start, plus log recovery after a SIGKILL
STOP_TIMEOUT_S = 10.0
KAFKA_STOP_TIMEOUT_S = 30.0  # a controlled shutdown
DEFAULT_DIR = Path(".devstack")
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_USER = "devstack"


class DevStackError(RuntimeError):
    """The local stack cannot start (developer tooling: no HTTP route raises it, so it has no error code)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- topics ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as the OpenShift manifests declare it, for a single-node broker."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


def manifest_topics(path: Path = TOPICS_MANIFEST) -> list[TopicSpec]:
    """The ``KafkaTopic`` resources of ``path``: name, partitions and configs as deployed, except
    that one broker holds one replica, so ``min.insync.replicas`` is 1."""
    import yaml  # developer tooling only: not a dependency of the service

    specs = []
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if not document or document.get("kind") != "KafkaTopic":
            continue
        spec = document["spec"]
        config = {str(k): str(v) for k, v in (spec.get("config") or {}).items()}
        config["min.insync.replicas"] = "1"
        specs.append(
            TopicSpec(spec.get("topicName") or document["metadata"]["name"], spec["partitions"], config)
        )
    if not specs:
        raise DevStackError(f"no KafkaTopic in {path}")
    return specs


def create_topics(
    bootstrap: str,
    topics: Sequence[str | TopicSpec],
    partitions: int = PARTITIONS,
    client_config: Mapping[str, Any] | None = None,
) -> None:
    """Create ``topics`` (names get ``partitions`` each; one replica); existing ones are kept."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, **(client_config or {})})
    specs = [t if isinstance(t, TopicSpec) else TopicSpec(t, partitions) for t in topics]
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=dict(s.config))
        for s in specs
    ]
    for name, future in admin.create_topics(new, operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DevStackError(f"cannot create topic {name}: {error.str()}") from None


# --- Apache Kafka ------------------------------------------------------------------------------


def kafka_classpath(libs: Path = KAFKA_LIBS) -> str:
    """The broker's class path: every jar ``make install`` resolved with Maven."""
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise DevStackError(f"no Apache Kafka in {libs}: run `make install` (it resolves it with Maven)")
    if shutil.which("java") is None:
        raise DevStackError("java is missing: run `make install` (it installs a JDK)")
    return f"{libs}/*"


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA
    (a wrong trust anchor for tests), made with the ``openssl`` command line."""
    if shutil.which("openssl") is None:
        raise DevStackError("openssl is missing: install the Debian package openssl")
    directory.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *curve, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "825",
            "-subj", f"/CN=devstack {name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip
    _openssl(
        "req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=directory
    )
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "825", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    files = TlsFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "other-ca.pem"
    )
    # Kafka's PEM key store: the private key (PKCS#8) followed by the certificate chain
    files.keystore.write_bytes(files.key.read_bytes() + files.cert.read_bytes())
    files.keystore.chmod(0o600)
    return files


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA that signed the server certificate
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing here

    @property
    def keystore(self) -> Path:
        return self.cert.parent / "keystore.pem"

    @classmethod
    def existing(cls, directory: Path) -> TlsFiles | None:
        files = cls(
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
            directory / "other-ca.pem",
        )
        return (
            files
            if all(p.is_file() for p in (files.ca, files.cert, files.key, files.other_ca, files.keystore))
            else None
        )


@dataclass(frozen=True)
class KafkaPorts:
    plaintext: int
    sasl_ssl: int
    controller: int

    @classmethod
    def free(cls) -> KafkaPorts:
        return cls(free_port(), free_port(), free_port())


LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


@dataclass
class KafkaBroker:
    """One Apache Kafka process in KRaft mode (broker and controller) under ``directory``.

    ``directory`` holds ``server.properties``, the log directory ``data/`` (formatted once, with the
    SCRAM user), the TLS files and the SCRAM password; starting again on the same directory keeps
    every topic, offset and producer id, as a restarted broker of a cluster does.
    """

    directory: Path
    ports: KafkaPorts = field(default_factory=KafkaPorts.free)
    heap_mb: int = 512
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.plaintext}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.sasl_ssl}"

    @property
    def log(self) -> Path:
        return self.directory / "kafka.log"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles.existing(self.directory / "tls") or make_tls_files(self.directory / "tls")

    @property
    def password_file(self) -> Path:
        """The SCRAM user's password, made at the first start (mode 0600)."""
        path = self.directory / "scram-password"
        if not path.is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
        return path

    def sasl_env(self, password: str | None = None) -> dict[str, str]:
        """The standard ``KAFKA_*`` client variables for the SASL_SSL listener (``password``
        instead of the file: e.g. a wrong one)."""
        secret = {"KAFKA_SASL_PASSWORD": password} if password is not None else {}
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.sasl_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "KAFKA_SASL_USERNAME": SCRAM_USER,
            "KAFKA_SSL_CA_LOCATION": str(self.tls.ca),
        } | (secret or {"KAFKA_SASL_PASSWORD_FILE": str(self.password_file)})

    def sasl_client_config(self, password: str | None = None) -> dict[str, Any]:
        """librdkafka properties for the SASL_SSL listener."""
        return {
            "bootstrap.servers": self.sasl_bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": SCRAM_USER,
            "sasl.password": password if password is not None else self.password_file.read_text().strip(),
            "ssl.ca.location": str(self.tls.ca),
        }

    def start(self) -> KafkaBroker:
        """Start the broker (formatting its log directory the first time) without waiting."""
        classpath = kafka_classpath()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "meta.properties").is_file():
            self._format(classpath, config)
        heap = [f"-Xmx{self.heap_mb}m", f"-Xms{min(self.heap_mb, 256)}m"]
        jvm = [*heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]
        log4j = f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}"
        argv = ["java", *jvm, log4j, "-cp", classpath, "kafka.Kafka", str(config)]
        self.process = _spawn(argv, self.log)
        return self

    def wait_ready(self, timeout_s: float = KAFKA_READY_TIMEOUT_S) -> KafkaBroker:
        wait_for_kafka(self.bootstrap, timeout_s, process=self.process)
        return self

    def kill(self) -> None:
        """SIGKILL, as a node that loses power: what was written to the log directory stays."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=30)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """A controlled shutdown (SIGTERM), then SIGKILL if it does not finish in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=KAFKA_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _write_config(self) -> Path:
        p, tls = self.ports, self.tls
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{p.controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p.plaintext},SASL_SSL://127.0.0.1:{p.sasl_ssl},"
            f"CONTROLLER://127.0.0.1:{p.controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p.plaintext},SASL_SSL://127.0.0.1:{p.sasl_ssl}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # one node: internal topics with one replica (as the OpenShift manifests, but for one)
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "false",  # as on OpenShift: topics come from manifests
            "num.partitions": str(PARTITIONS),
            "group.initial.rebalance.delay.ms": "0",  # one developer, no rolling start to wait for
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls.keystore),
        }  # fmt: skip
        config = self.directory / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        (self.directory / "log4j2.properties").write_text(LOG4J2)
        return config

    def _format(self, classpath: str, config: Path) -> None:
        """Format the log directory once: a new cluster id and the SCRAM user."""
        password = self.password_file.read_text().strip()
        storage = ["java", "-cp", classpath, "kafka.tools.StorageTool"]
        cluster_id = subprocess.run([*storage, "random-uuid"], capture_output=True, text=True, check=True)
        scram = f"{SCRAM_MECHANISM}=[name={SCRAM_USER},password={password}]"
        argv = [*storage, "format", "-t", cluster_id.stdout.strip(), "-c", str(config), "--add-scram", scram]
        result = subprocess.run(argv, capture_output=True, text=True)  # its output repeats the password
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DevStackError(f"cannot format the Kafka log directory: {last[0]}")


def wait_for_kafka(
    bootstrap: str,
    timeout_s: float = KAFKA_READY_TIMEOUT_S,
    process: subprocess.Popen[bytes] | None = None,
    client_config: Mapping[str, Any] | None = None,
) -> None:
    """Return once a metadata request to ``bootstrap`` lists a broker."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, **(client_config or {})})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DevStackError(f"the broker exited with status {process.returncode}")
        try:
            if admin.list_topics(timeout=1).brokers:
                return
        except KafkaException:
            continue
    raise DevStackError(f"no Kafka metadata from {bootstrap} within {timeout_s:.0f} s")


# --- Redis -------------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class ServiceState:
    name: str
    pid: int | None
    port: int | None
    running: bool


class DevStack:
    """The services of one state directory."""

    SERVICES = (("kafka", "kafka.Kafka"), ("redis", "redis-server"))  # name, what its command line contains

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def broker(self) -> KafkaBroker:
        """The broker of this directory, on the ports it had before when they are still free."""
        saved = self.directory / "kafka" / "ports.json"
        try:
            ports = KafkaPorts(**json.loads(saved.read_text()))
        except (OSError, ValueError, TypeError):
            ports = KafkaPorts.free()
        return KafkaBroker(self.directory / "kafka", ports)

    def up(self) -> dict[str, str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {s.name: s for s in self.status()}
        broker = self.broker
        if not state["kafka"].running:
            if not all(_port_is_free(port) for port in vars(broker.ports).values()):
                broker.ports = KafkaPorts.free()
            broker.start()
            (broker.directory / "ports.json").write_text(json.dumps(vars(broker.ports)))
            self._write_pid("kafka", broker.process, broker.ports.plaintext)
        redis_port, redis_server = self._ensure_redis(state["redis"])
        broker.wait_ready()
        create_topics(broker.bootstrap, manifest_topics())
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        wait_for_redis(redis_url, process=redis_server)
        env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "REDIS_URL": redis_url}
        (self.directory / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        sasl = broker.sasl_env() | {"REDIS_URL": redis_url}
        (self.directory / "env.sasl").write_text("".join(f"{k}={v}\n" for k, v in sasl.items()))
        return env

    def down(self) -> list[str]:
        """Stop the running services (the broker's log directory stays); returns their names."""
        stopped = []
        for service in self.status():
            if service.running and service.pid is not None:
                _terminate(service.pid, KAFKA_STOP_TIMEOUT_S if service.name == "kafka" else STOP_TIMEOUT_S)
                stopped.append(service.name)
            for suffix in ("pid", "port"):
                (self.directory / f"{service.name}.{suffix}").unlink(missing_ok=True)
        for name in ("env", "env.sasl"):
            (self.directory / name).unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ServiceState]:
        states = []
        for name, command in self.SERVICES:
            pid, port = self._read(f"{name}.pid"), self._read(f"{name}.port")
            states.append(ServiceState(name, pid, port, pid is not None and _is_running(pid, command)))
        return states

    def _ensure_redis(self, state: ServiceState) -> tuple[int, subprocess.Popen[bytes] | None]:
        """Redis's port, starting it unless it already runs (then no process is returned)."""
        if state.running and state.port is not None:
            return state.port, None
        port = free_port()
        process = start_redis(port, self.directory / "redis.log")
        self._write_pid("redis", process, port)
        return port, process

    def _write_pid(self, name: str, process: subprocess.Popen[bytes] | None, port: int) -> None:
        assert process is not None
        (self.directory / f"{name}.pid").write_text(f"{process.pid}\n")
        (self.directory / f"{name}.port").write_text(f"{port}\n")

    def _read(self, filename: str) -> int | None:
        try:
            return int((self.directory / filename).read_text().strip())
        except (OSError, ValueError):
            return None


def _port_is_free(port: int) -> bool:
    """Whether a server can listen on ``port`` (as Kafka does, past connections in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def _terminate(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        time.sleep(0.05)  # poll interval
    if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.devstack", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .devstack)")
    args = parser.parse_args(argv)
    stack = DevStack(args.dir)
    try:
        if args.action == "up":
            for key, value in stack.up().items():
                print(f"{key}={value}")
            return 0
        if args.action == "down":
            print(f"stopped: {', '.join(stack.down()) or 'nothing was running'}")
            return 0
        states = stack.status()
        for s in states:
            print(f"{s.name}: {'running' if s.running else 'stopped'} pid={s.pid} port={s.port}")
        return 0 if all(s.running for s in states) else 1
    except DevStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DecoderError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
