"""The session registry and the Redis outbox over ``rediss://``, verified against a CA from env."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import Message

from decoder_api.sessions.registry import PREFIX
from devtools.processes import ROOT, decoder_command, free_port
from tests.conftest import RATE_HZ, SpokenCall
from tests.kafka import (
    Call,
    ConsumerFactory,
    TopicFactory,
    consume_until,
    decoder_env,
    launch_decoder,
    readyz,
    session_messages,
)
from tests.test_security.tls import TlsFiles, TlsRedis

CHUNK_BYTES = RATE_HZ * 2 // 5  # 200 ms


def redis_env(url: str, ca: Path | str) -> dict[str, str]:
    """Both spellings of the URL (the ``DECODER_`` one wins), and the CA bundle."""
    return {"REDIS_URL": url, "DECODER_REDIS_URL": url, "REDIS_SSL_CA_CERTS": str(ca)}


def test_registry_and_outbox_work_over_tls(
    tls_redis: TlsRedis,
    tls_files: TlsFiles,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    korean_call: SpokenCall,
    tmp_path: Path,
) -> None:
    topic, outbox = topic_factory("tls-redis"), f"tls-{uuid.uuid4().hex[:8]}"
    env = decoder_env(kafka_bootstrap, topic, tmp_path, outbox_name=outbox)
    server = launch_decoder(tmp_path, env | redis_env(tls_redis.url, tls_files.ca))
    client = tls_redis.client(tls_files.ca)
    try:
        assert readyz(server)[1]["checks"]["registry"] == "ok"
        call = Call(server.url).open()
        call.send_audio(korean_call.pcm, CHUNK_BYTES)
        record = client.hgetall(f"{PREFIX}session:{call.session_id}")
        assert record[b"owner"]
        assert record[b"token_hash"] and call.token.encode() not in record.values()  # stored hashed
        call.end()
        consumer = consumer_factory(topic)

        def delivered(messages: list[Message]) -> bool:
            return len(session_messages(messages, call.session_id)) >= len(call.texts)

        assert call.texts
        consume_until(consumer, delivered)
        assert client.exists(f"decoder_api:outbox:{outbox}")  # the journal is the Redis stream
        assert not list(tmp_path.glob("journal-*"))  # and not the SQLite file
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("trust", ["missing_file", "other_ca", "system_store", "plain_url"])
def test_a_bad_redis_tls_setting_stops_the_start_in_one_line(
    tls_redis: TlsRedis, tls_files: TlsFiles, trust: str, tmp_path: Path
) -> None:
    env = {"DECODER_ENGINE": "vosk", "DECODER_MODEL": "ko", "KAFKA_BOOTSTRAP_SERVERS": ""}
    expected = {
        "missing_file": "REDIS_SSL_CA_CERTS: ",
        "other_ca": "certificate verify failed",
        "system_store": "checked against the system CA store",
        "plain_url": "REDIS_URL is not a rediss:// (TLS) URL",
    }[trust]
    ca = {"missing_file": tmp_path / "absent.pem", "other_ca": tls_files.other_ca}.get(trust, tls_files.ca)
    url = tls_redis.url.replace("rediss://", "redis://") if trust == "plain_url" else tls_redis.url
    env |= redis_env(url, ca)
    if trust == "system_store":
        del env["REDIS_SSL_CA_CERTS"]
    argv = [sys.executable, *decoder_command(free_port())]
    result = subprocess.run(argv, cwd=ROOT, env=env | base_env(), capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output
    assert "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1, output


def base_env() -> dict[str, str]:
    """What a process needs from this one (the interpreter's environment), without Redis or Kafka."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


def test_the_tls_redis_refuses_plaintext(tls_redis: TlsRedis) -> None:
    """So the tests above really used TLS: the server has no plaintext port to fall back on."""
    plain = redis.Redis.from_url(tls_redis.url.replace("rediss://", "redis://"), socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
