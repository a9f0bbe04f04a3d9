"""Each image's contents, run without building it: exactly the files its Containerfile stage copies,
in an interpreter that sees only those and the distributions the image installs (images.py).

A component whose image lacks a module it needs (a file of another component, a package of
another Pipfile category) fails here: at its ``--help``, when each of its modules is imported, in
the static check of its third-party imports, or at a real start-up against the test session's
Kafka broker.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from confluent_kafka import Producer

from contract.events import TranscriptEvent, rfc3339_utc
from devtools.processes import free_port
from tests.kafka import ConsumerFactory, TopicFactory, consume_until, wait_for
from tests.test_nlp_consumer.conftest import metric
from tests.test_openshift.containerfile import COMPONENTS, PACKAGES, run_text, stages
from tests.test_openshift.images import (
    IMPORT_EVERY_MODULE,
    Image,
    build_image,
    imported_modules,
    module_distributions,
)
from tests.test_recorder.stub_decoder import StubDecoder

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0

ImageFactory = Callable[[str], Image]


@pytest.fixture(scope="module")
def image_of(tmp_path_factory: pytest.TempPathFactory) -> ImageFactory:
    """``image_of(component)``: that component's image contents, assembled once per module."""
    built: dict[str, Image] = {}

    def image(component: str) -> Image:
        if component not in built:
            built[component] = build_image(component, tmp_path_factory.mktemp(f"image-{component}"))
        return built[component]

    return image


def failure(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-4000:]}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_image_holds_its_package_and_the_contract_only(component: str, image_of: ImageFactory) -> None:
    assert image_of(component).packages == sorted({PACKAGES[component], "contract"})


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_guard_hides_what_the_image_does_not_install(component: str, image_of: ImageFactory) -> None:
    image = image_of(component)
    absent = {"decoder": "torch", "recorder": "vosk", "nlp": "faster_whisper"}[component]
    assert absent in image.hidden
    done = image.run("-c", f"import {absent}")
    assert done.returncode == 1 and f"No module named '{absent}'" in done.stderr, failure(done)
    probe = image.run("-c", f"import importlib.util; print(importlib.util.find_spec({absent!r}))")
    assert probe.stdout == "None\n", failure(probe)  # as code probing for optional packages sees it
    metadata = image.run(
        "-c", f"import importlib.metadata as m; m.version('jsonschema'); m.version({absent!r})"
    )
    assert "PackageNotFoundError" in metadata.stderr and "jsonschema" not in metadata.stderr, failure(
        metadata
    )
    assert image.run("-c", "import confluent_kafka, jsonschema").returncode == 0


@pytest.mark.parametrize("component", COMPONENTS)
def test_third_party_imports_are_installed_by_the_image(component: str, image_of: ImageFactory) -> None:
    """Every module a package of the image imports is the standard library's, one of the image's
    own packages, or provided by a distribution the component's Pipfile categories lock."""
    image = image_of(component)
    files = [path for package in image.packages for path in (image.app / package).rglob("*.py")]
    missing = {
        name: sorted(Path(f).relative_to(image.app).as_posix() for f in importers)
        for name, importers in imported_modules(files).items()
        if name not in sys.stdlib_module_names
        and name not in image.packages
        and not module_distributions().get(name, frozenset()) & image.installed
    }
    assert missing == {}, f"{component} image ({COMPONENTS[component]}) lacks: {missing}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_help(component: str, image_of: ImageFactory) -> None:
    image = image_of(component)
    done = image.run(*image.command[1:3], "--help")
    assert done.returncode == 0, failure(done)
    assert "usage:" in done.stdout


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_module_imports(component: str, image_of: ImageFactory) -> None:
    image = image_of(component)
    done = image.run("-c", IMPORT_EVERY_MODULE, *image.packages)
    assert done.returncode == 0, failure(done)


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_build_time_checks_pass(component: str, image_of: ImageFactory) -> None:
    """The stage's own ``RUN python ...`` checks (the decoder's model), run on its files."""
    image = image_of(component)
    for line in run_text(stages()[component]).splitlines():
        words = shlex.split(line)
        if words[:1] == ["python"]:
            done = image.run(*words[1:])
            assert done.returncode == 0, failure(done)


# --- real start-ups ----------------------------------------------------------------------------


@pytest.fixture
def started(image_of: ImageFactory, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``started(component, args, env)``: a process of the image, stopped after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(component: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = image_of(component).start(args, tmp_path / f"{component}-{len(processes)}.log", env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def answers(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    assert process.poll() is None, log.read_text(errors="replace")[-4000:]
    try:
        return requests.get(url, timeout=2).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def test_the_decoder_serves(
    image_of: ImageFactory,
    started: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
) -> None:
    """``python -m decoder_api serve`` with the manifests' engine and model, publishing to Kafka:
    ready (model loaded, broker connected) on the image's allocator, then a clean SIGTERM."""
    image = image_of("decoder")
    port = free_port()
    env = {
        "DECODER_HOST": "127.0.0.1",
        "DECODER_PORT": str(port),
        "DECODER_ENGINE": "vosk",
        "DECODER_MODEL": "ko",
        "DECODER_OUTBOX_DIR": str(tmp_path / "outbox"),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC": topic_factory("image-decoder"),
    }
    process = started("decoder", image.command, env)
    log = tmp_path / "decoder-0.log"
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/readyz", process, log), START_TIMEOUT_S, "/readyz")
    assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["allocator"] == "jemalloc"
    assert stop(process) == 0, log.read_text(errors="replace")[-4000:]


def test_the_recorder_simulates_a_call_and_publishes_its_finals(
    image_of: ImageFactory,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    """The image's default command (``-S``, the sample calls in data/) against a stub decoder for
    3 s, publishing its own finals: every one is a valid transcript.v1 event."""
    image = image_of("recorder")
    stub = StubDecoder()
    topic = topic_factory("image-recorder")
    env = {"HOST": stub.url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic}
    try:
        done = image.run(
            *image.command[1:], "--calls", "1", "--pause-s", "0", "--duration", "3", "--json", env=env
        )
    finally:
        stub.stop()
    assert done.returncode == 0, failure(done)
    finals = len(stub.state.finals)
    assert finals > 0
    messages = consume_until(consumer_factory(topic), lambda got: len(got) >= finals)
    events = [TranscriptEvent.from_json(m.value() or b"") for m in messages]
    assert {e.source for e in events} == {"recorder"}


def test_the_nlp_consumer_enriches(
    image_of: ImageFactory,
    started: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    trained_model: Path,
) -> None:
    """``python -m nlp_consumer`` with the trained model: it joins its group and enriches an event."""
    image = image_of("nlp")
    topics = {name: topic_factory(f"image-nlp-{name}") for name in ("input", "output", "dlq")}
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "NLP_INPUT_TOPIC": topics["input"],
        "NLP_OUTPUT_TOPIC": topics["output"],
        "NLP_DLQ_TOPIC": topics["dlq"],
        "NLP_GROUP_ID": f"image-nlp-{uuid.uuid4().hex}",
        "NLP_METRICS_PORT": str(free_port()),
        "SENTIMENT_MODEL": str(trained_model),
        "NLP_TORCH_THREADS": "1",
    }
    process = started("nlp", image.command, env)
    log = tmp_path / "nlp-0.log"

    def assigned() -> bool:
        assert process.poll() is None, log.read_text(errors="replace")[-4000:]
        return (metric(int(env["NLP_METRICS_PORT"]), "nlp_assigned_partitions") or 0) > 0

    wait_for(assigned, START_TIMEOUT_S, "the consumer to join its group")
    event = TranscriptEvent(
        session_id=f"image-{uuid.uuid4().hex}",
        user_id="u",
        utterance=0,
        text="Thank you, that was very helpful.",
        start_ms=0,
        end_ms=1500,
        engine="vosk",
        model="test",
        language="en",
        produced_at=rfc3339_utc(),
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    producer.produce(topics["input"], key=event.key, value=event.to_json())
    assert producer.flush(30) == 0
    [enriched] = consume_until(consumer_factory(topics["output"]), bool, timeout_s=START_TIMEOUT_S)
    assert enriched.key() == event.key


def test_the_nlp_consumer_without_a_broker_is_a_one_line_error(image_of: ImageFactory) -> None:
    image = image_of("nlp")
    done = image.run(*image.command[1:], env={"KAFKA_BOOTSTRAP_SERVERS": ""})
    assert (done.returncode, done.stderr) == (2, "error: KAFKA_BOOTSTRAP_SERVERS is not set\n"), failure(done)


def test_the_dashboard_serves(
    image_of: ImageFactory,
    started: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    kafka_bootstrap: str,
) -> None:
    image = image_of("nlp")
    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DASHBOARD_HOST": "127.0.0.1",
        "DASHBOARD_PORT": str(port),
    }
    process = started("nlp", [*image.command, "--dashboard"], env)
    log = tmp_path / "nlp-0.log"
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/", process, log), START_TIMEOUT_S, "the dashboard")
