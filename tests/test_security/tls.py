"""TLS-enabled local servers for tests: a throwaway CA, Redis with TLS, Kafka behind a TLS terminator.

Certificates come from the ``openssl`` command line: a CA, a server certificate it signs (for
``127.0.0.1`` and ``localhost``), and a second, unrelated CA to play a wrong trust anchor.

Redis speaks TLS itself (``redis-server --tls-port``, plain port disabled). The local Kafka
broker (Tansu) has no working TLS listener, so ``stunnel`` terminates TLS in front of it: the
broker advertises the stunnel port, clients connect there with ``security.protocol=SSL`` (or
``SASL_SSL``) and verify the certificate against the CA; the hop from stunnel to the broker is
loopback plaintext. Tansu's ``--authentication`` makes it require SASL/SCRAM, but users can only be
created by an authenticated client, so with memory storage no login can succeed: that broker
serves to show what a client sees when the broker refuses its credentials.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from decoder_api import devstack
from tests.servers import free_port

READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA that signed the server certificate
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing here

    def kafka_env(self, bootstrap: str, ca: Path | None = None) -> dict[str, str]:
        """The standard client variables for SSL to ``bootstrap``, trusting ``ca`` (default: ours)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_LOCATION": str(ca or self.ca),
        }


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is missing: install the Debian package openssl")
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *curve, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
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
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return TlsFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "other-ca.pem"
    )


@dataclass
class Processes:
    """Background processes in their own sessions, stopped together."""

    items: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.items.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.items:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with status {process.returncode}")

    def stop(self) -> None:
        for process in reversed(self.items):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@dataclass
class TlsRedis:
    """redis-server accepting TLS only, with our server certificate."""

    port: int
    processes: Processes

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self, ca: Path) -> redis.Redis:
        return redis.Redis.from_url(self.url, ssl_ca_certs=str(ca), socket_timeout=5)


def start_tls_redis(files: TlsFiles, workdir: Path) -> TlsRedis:
    port = free_port()
    processes = Processes()
    argv = [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key),
        "--tls-ca-cert-file", str(files.ca), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    processes.spawn(argv, workdir / f"redis-tls-{port}.log")
    server = TlsRedis(port, processes)
    deadline = time.monotonic() + READY_TIMEOUT_S
    client = server.client(files.ca)
    try:
        while True:
            processes.check_alive()
            try:
                client.ping()
                return server
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    processes.stop()
                    raise
                time.sleep(0.05)  # poll interval
    finally:
        client.close()


@dataclass
class TlsKafka:
    """Tansu behind stunnel; ``bootstrap`` is the TLS port, the only one the broker advertises."""

    tls_port: int
    files: TlsFiles
    processes: Processes

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def client_config(self, **extra: Any) -> dict[str, Any]:
        base = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.files.ca),
            "log_level": 0,
        }
        return base | extra

    def create_topics(self, *names: str, partitions: int = 4) -> None:
        admin = AdminClient(self.client_config())
        topics = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        for future in admin.create_topics(topics, operation_timeout=10).values():
            future.result(timeout=30)


def start_tls_kafka(files: TlsFiles, workdir: Path, authentication: bool = False) -> TlsKafka:
    """A memory-backed broker on a loopback port, advertised as the stunnel TLS port in front of it.

    With ``authentication`` the broker requires SASL (SCRAM) and, having no users, refuses everyone;
    it is then not waited for with a metadata request (none can succeed), only for the TLS port.
    """
    if shutil.which("stunnel") is None:
        raise RuntimeError("stunnel is missing: install the Debian package stunnel4")
    broker_port, tls_port = free_port(), free_port()
    processes = Processes()
    advertised = f"tcp://127.0.0.1:{tls_port}"
    argv = [
        str(devstack.tansu_binary()), "broker",
        "--listener-url", f"tcp://127.0.0.1:{broker_port}",
        "--advertised-listener-url", advertised,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    processes.spawn(
        [*argv, *(["--authentication"] if authentication else [])], workdir / f"tansu-{broker_port}.log"
    )
    config = workdir / f"stunnel-{tls_port}.conf"
    config.write_text(
        "foreground = yes\npid =\ndebug = 4\n[kafka]\n"
        f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{broker_port}\n"
        f"cert = {files.cert}\nkey = {files.key}\n"
    )
    processes.spawn(["stunnel", str(config)], workdir / f"stunnel-{tls_port}.log")
    kafka = TlsKafka(tls_port, files, processes)
    try:
        if authentication:
            _wait_for_port(tls_port, processes)
        else:
            _wait_for_metadata(kafka)
    except BaseException:
        processes.stop()
        raise
    return kafka


def _wait_for_metadata(kafka: TlsKafka) -> None:
    admin = AdminClient(kafka.client_config())
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        kafka.processes.check_alive()
        try:
            admin.list_topics(timeout=1)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise


def _wait_for_port(port: int, processes: Processes) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        processes.check_alive()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # poll interval
