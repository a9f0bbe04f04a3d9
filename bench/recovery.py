"""Recovery: an instance SIGKILLed mid-utterance, the call carried on by another one.

``python -m bench.recovery`` starts a redis-server and two Vosk decoders sharing it as their
session registry, behind a small TCP front door that behaves like the OpenShift Route (a
connection goes to the first instance that accepts it, the owner while it lives). A call of
synthetic Korean speech (espeak-ng; the Korean model is the only Vosk model installed) is
streamed in real time by the recorder's own HTTP client (``recorder.client.HttpTransport``: its
retries, back-off and numbered chunks). Mid-utterance the owner's whole process group is
SIGKILLed; the client keeps its real-time schedule, buffering what it cannot send.

Measured per repetition: the time from the kill to the first reply the new owner serves (and to
the first non-empty partial), the time until the client is back on its real-time schedule, and
the words lost: the final transcript against an uninterrupted decode of the same audio in this
process (must be 0). A new instance replaces the dead one before the next repetition, and the
next call is opened on the survivor, so every repetition kills a different process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import requests

from bench.figures import Figure, Result, build_result, figure, print_figures, write_result
from bench.load import stop_group
from bench.streams import espeak_korean, silence
from decoder_api.audio import chunk_bytes, iter_chunks
from decoder_api.config import load_settings
from decoder_api.engines.base import RecognizerOptions
from decoder_api.engines.models import resolve_model
from decoder_api.engines.vosk import VoskEngine
from decoder_api.sessions.transcripts import stream_pcm
from devtools import devstack
from recorder.client import HttpTransport, SessionRequest
from recorder.config import ServerSettings

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
RATE_HZ = 16000
CHUNK_MS = 200
PAUSE_MS = 1200
READY_TIMEOUT_S = 120.0
TURNS = (
    "안녕하세요 주문 때문에 전화했습니다",
    "지난주에 주문한 물건이 아직 도착하지 않았습니다",
    "배송 조회 페이지도 며칠째 그대로입니다",
    "네 주소는 예전과 같습니다",
    "새 상품을 바로 보내 주셔서 감사합니다",
    "오늘은 그게 전부입니다",
)
DEFAULT_HEARTBEAT_TTL_S = load_settings({}, {}).registry_heartbeat_ttl_s  # the service's default


@dataclass(frozen=True)
class Size:
    turns: int
    repetitions: int
    heartbeat_ttl_s: float


FULL = Size(turns=len(TURNS), repetitions=3, heartbeat_ttl_s=DEFAULT_HEARTBEAT_TTL_S)
QUICK = Size(turns=2, repetitions=1, heartbeat_ttl_s=1.5)


# --- audio ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpokenCall:
    pcm: bytes
    spans_ms: tuple[tuple[int, int], ...]  # where each turn is

    @property
    def chunks(self) -> list[bytes]:
        return list(iter_chunks(self.pcm, chunk_bytes(RATE_HZ, CHUNK_MS)))


def speak_call(turns: Sequence[str], workdir: Path) -> SpokenCall:
    """The turns spoken by espeak-ng's Korean voice, separated by pauses, as 16 kHz PCM."""
    pcm, spans = silence(0.3), []
    for text in turns:
        start = len(pcm) // 32
        pcm += espeak_korean(text, workdir, speed=130)
        spans.append((start, len(pcm) // 32))
        pcm += silence(PAUSE_MS / 1000)
    return SpokenCall(pcm, tuple(spans))


def uninterrupted(pcm: bytes) -> list[str]:
    """The call's finals from one recognizer in this process, as the server would decode it unharmed."""
    engine = VoskEngine(resolve_model("vosk", "ko", None))
    try:
        recognizer = engine.create(RecognizerOptions(RATE_HZ, words=True))
        return [f.text for f in stream_pcm(recognizer, pcm, CHUNK_MS).finals if f.text.strip()]
    finally:
        engine.close()


def words_lost(expected: Sequence[str], got: Sequence[str]) -> int:
    """Words of ``expected`` missing from or changed in ``got`` (deletions + substitutions)."""
    reference, hypothesis = " ".join(expected), " ".join(got)
    if not reference.strip():
        return 0
    if not hypothesis.strip():
        return len(reference.split())
    output = jiwer.process_words(reference, hypothesis)
    return int(output.deletions + output.substitutions)


# --- processes --------------------------------------------------------------------------------------


@dataclass
class Decoder:
    """``python -m decoder_api serve`` (gunicorn) in a process group of its own."""

    name: str
    env: Mapping[str, str]
    log: Path
    port: int = field(default_factory=devstack.free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Decoder:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "decoder_api", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env={**os.environ, **self.env, "DECODER_INSTANCE_ID": self.name},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self) -> Decoder:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"decoder {self.name} exited: {self.log.read_text(errors='replace')[-2000:]}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"decoder {self.name} not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)  # poll interval

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn's arbiter and worker): a node or OOM loss."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        stop_group(self.process)


class Route:
    """A TCP front door: each new connection goes to the first backend that accepts it.

    Like the OpenShift Route with its sticky cookie, a client stays on the instance that owns its
    call while it lives; when that instance is gone its connections fail and the next ones reach
    another instance.
    """

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends  # ports, in order of preference
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Route:
        threading.Thread(target=self._accept, name="route", daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        for port in list(self.backends):
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
            _pump(client, upstream)
            return
        client.close()

    def stop(self) -> None:
        self._closed.set()
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until either side closes, then close both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


@dataclass(frozen=True)
class Retry:
    at: float  # perf_counter when the client decided to retry
    delay_s: float
    reason: str


class RetryLog(logging.Handler):
    """The recorder client's retries, from its ``recorder.retry`` log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.retries: list[Retry] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        delay = float(str(args[2])) if len(args) > 2 else 0.0
        reason = str(args[3]) if len(args) > 3 else record.getMessage()
        self.retries.append(Retry(time.perf_counter(), delay, reason))


# --- one call ---------------------------------------------------------------------------------------


@dataclass
class Reply:
    seq: int
    due: float  # perf_counter when the chunk was due (real time)
    sent: float
    done: float
    partial: str


@dataclass
class CallOutcome:
    finals: list[str]
    replies: list[Reply]
    killed_at: float | None
    retries: list[Retry]


def stream_call(
    route: Route, call: SpokenCall, kill_at_s: float | None, owner: Decoder | None
) -> CallOutcome:
    """Stream ``call`` in real time through ``route``; SIGKILL ``owner`` ``kill_at_s`` into the call."""
    stop = threading.Event()
    transport = HttpTransport(ServerSettings(url=route.url, retry_s=60.0), stop)
    counter = RetryLog()
    retry_log = logging.getLogger("recorder.retry")
    retry_log.addHandler(counter)
    retry_log.setLevel(logging.INFO)
    replies: list[Reply] = []
    killed: list[float] = []
    try:
        transport.open(SessionRequest(sample_rate_hz=RATE_HZ, user_id="bench-recovery", words=True))
        start = time.perf_counter()
        timer = None
        if kill_at_s is not None and owner is not None:

            def kill() -> None:
                killed.append(time.perf_counter())
                owner.kill()

            timer = threading.Timer(kill_at_s, kill)
            timer.start()
        finals: list[str] = []
        for seq, chunk in enumerate(call.chunks):
            due = start + seq * CHUNK_MS / 1000
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the microphone's pace
            sent = time.perf_counter()
            reply = transport.send(chunk, seq)
            replies.append(Reply(seq, due, sent, time.perf_counter(), reply.partial))
            finals += [f.text for f in reply.finals]
        finals += [f.text for f in transport.end().finals]
        if timer is not None:
            timer.join()
    finally:
        transport.close()
        retry_log.removeHandler(counter)
    return CallOutcome(
        [f for f in finals if f.strip()], replies, killed[0] if killed else None, counter.retries
    )


def kill_points_s(call: SpokenCall, repetitions: int) -> list[float]:
    """Mid-utterance instants: inside a different middle turn each time, at 40–60 % of it."""
    middle = list(range(1, len(call.spans_ms))) or [0]
    points = []
    for i in range(repetitions):
        start, end = call.spans_ms[middle[i % len(middle)]]
        points.append((start + (end - start) * (0.4 + 0.2 * (i % 3) / 2)) / 1000)
    return points


def recovery_of(outcome: CallOutcome, expected: list[str], kill_at_s: float) -> dict[str, Any]:
    killed = outcome.killed_at
    assert killed is not None, "the owner was not killed during the call"
    after = [r for r in outcome.replies if r.done > killed]
    first = after[0] if after else None
    partial = next((r for r in after if r.partial.strip()), None)
    late = [r for r in after if r.sent - r.due > CHUNK_MS / 1000]
    return {
        "kill_at_s": kill_at_s,
        "first_reply_s": first.done - killed if first else None,
        "first_partial_s": partial.done - killed if partial else None,
        "first_reply_partial": first.partial if first else None,
        "back_on_schedule_s": (late[-1].done - killed) if late else 0.0,
        "client_retries": len(outcome.retries),
        "retries": [
            {"after_kill_s": r.at - killed, "delay_s": r.delay_s, "reason": r.reason} for r in outcome.retries
        ],
        "words_lost": words_lost(expected, outcome.finals),
        "transcript_identical": outcome.finals == expected,
        "finals": outcome.finals,
    }


# --- the run ------------------------------------------------------------------------------------------


def measure(size: Size, workdir: Path) -> dict[str, Any]:
    call = speak_call(TURNS[: size.turns], workdir)
    expected = uninterrupted(call.pcm)
    redis_port = devstack.free_port()
    redis_server = devstack.start_redis(redis_port, workdir / "redis.log")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        "DECODER_ENGINE": "vosk",
        "DECODER_MODEL": "ko",
        "REDIS_URL": redis_url,
        "DECODER_REGISTRY_HEARTBEAT_TTL_S": f"{size.heartbeat_ttl_s:g}",
        "DECODER_SESSION_RATE_PER_MIN": "0",
        "DECODER_POOL_WARM": "1",
        "KAFKA_BOOTSTRAP_SERVERS": "",
    }
    decoders: list[Decoder] = []

    def new_decoder() -> Decoder:
        decoder = Decoder(f"bench-{uuid.uuid4().hex[:6]}", env, workdir / f"decoder-{len(decoders)}.log")
        decoders.append(decoder.start())
        return decoder

    route = Route([]).start()
    try:
        devstack.wait_for_redis(redis_url, process=redis_server)
        live = [new_decoder(), new_decoder()]
        for decoder in live:
            decoder.wait_ready()
        route.backends[:] = [d.port for d in live]
        logger.info("uninterrupted call through the pair")
        plain = stream_call(route, call, None, None)
        baseline_reply_ms = [(r.done - r.sent) * 1000 for r in plain.replies]
        repetitions = []
        for i, kill_at in enumerate(kill_points_s(call, size.repetitions)):
            owner = live[0]
            logger.info("repetition %d: killing %s %.1f s into the call", i + 1, owner.name, kill_at)
            outcome = stream_call(route, call, kill_at, owner)
            repetitions.append(recovery_of(outcome, expected, kill_at))
            live = [*live[1:], new_decoder().wait_ready()]
            route.backends[:] = [d.port for d in live]
    finally:
        route.stop()
        for decoder in decoders:
            decoder.stop()
        redis_server.terminate()
        redis_server.wait(timeout=10)
    return {
        "audio_s": len(call.pcm) / 2 / RATE_HZ,
        "expected_finals": expected,
        "uninterrupted": {
            "words_lost": words_lost(expected, plain.finals),
            "transcript_identical": plain.finals == expected,
            "reply_p50_ms": statistics.median(baseline_reply_ms),
            "reply_max_ms": max(baseline_reply_ms),
        },
        "repetitions": repetitions,
        "load_average_1min": os.getloadavg()[0],
    }


def values(details: Mapping[str, Any], key: str) -> list[float]:
    return [r[key] for r in details["repetitions"] if r[key] is not None]


def summary(details: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("first_reply_s", "first_partial_s", "back_on_schedule_s"):
        found = values(details, key)
        out[f"{key}_median"] = statistics.median(found) if found else None
        out[f"{key}_max"] = max(found) if found else None
    lost = values(details, "words_lost")
    out["words_lost_max"] = max(lost) if lost else None
    out["words_lost_total"] = sum(lost) if lost else None
    return out


def figures_of(details: Mapping[str, Any], ttl_s: float) -> list[Figure]:
    s = details["summary"]
    ttl = f"heartbeat TTL {ttl_s:g} s"
    plain = details["uninterrupted"]
    return [
        figure("Kill → first reply of the new owner, median", "s", s["first_reply_s_median"], ttl_s, ttl),
        figure("Kill → first reply of the new owner, max", "s", s["first_reply_s_max"], ttl_s, ttl),
        figure("Kill → first non-empty partial, median", "s", s["first_partial_s_median"], ttl_s, ttl),
        figure("Kill → first non-empty partial, max", "s", s["first_partial_s_max"], ttl_s, ttl),
        figure("Kill → client back on real time, max", "s", s["back_on_schedule_s_max"], ttl_s, ttl),
        figure(
            "Words lost per call, max",
            "words",
            s["words_lost_max"],
            float(plain["words_lost"]),
            "uninterrupted call through the same pair",
            target="0",
            met=s["words_lost_max"] == 0 if s["words_lost_max"] is not None else None,
        ),
    ]


INTRO = [
    "Measured with `python -m bench.recovery`: redis-server and Vosk decoders (Korean model) on this "
    "machine, the recorder's HTTP client streaming in real time through a TCP front door that acts "
    "like the OpenShift Route.",
]


def notes(details: Mapping[str, Any], size: Size) -> list[str]:
    plain = details["uninterrupted"]
    lines = [
        f"- A call of {details['audio_s']:.1f} s ({size.turns} turns of espeak-ng Korean speech, "
        f"{len(details['expected_finals'])} finals when decoded uninterrupted), streamed in {CHUNK_MS} ms "
        f"chunks at real-time pace; {size.repetitions} repetition(s), each killing the owner (SIGKILL to "
        "gunicorn's process group) at 40–60 % of a different middle utterance.",
        "- *First reply of the new owner*: from the kill to the first audio reply received afterwards "
        "(the client's resent chunk, or the next one, after the takeover and the replay of the "
        "un-finalised tail). The owner cannot be replaced before its heartbeat expires, so the TTL "
        "(`DECODER_REGISTRY_HEARTBEAT_TTL_S`, refreshed every TTL/3) is the baseline. The surviving "
        "instance answers `409 wrong_instance` with a `Retry-After` of what is left of the dead owner's "
        "heartbeat, rounded up to whole seconds, and the client retries then; the rounding, the "
        "connection attempts to the dead instance and the replay of the tail add to the TTL.",
        "- *Back on real time*: until the client has sent the audio it buffered during the outage.",
        "- *Words lost*: deletions + substitutions of the final transcript against an uninterrupted decode "
        "of the same audio by the same model in this process. Baseline: the same call through the same "
        f"pair without a failure ({plain['words_lost']} lost; replies p50 {plain['reply_p50_ms']:.0f} ms, "
        f"max {plain['reply_max_ms']:.0f} ms).",
    ]
    for i, r in enumerate(details["repetitions"], start=1):
        first = "n/a" if r["first_reply_s"] is None else f"{r['first_reply_s']:.2f} s"
        lines.append(
            f"- Repetition {i}: kill at {r['kill_at_s']:.1f} s, first reply after {first}, "
            f"{r['client_retries']} client retries, {r['words_lost']} words lost, transcript "
            f"{'identical' if r['transcript_identical'] else 'different'}."
        )
    lines.append(f"- Load average at the end: {details['load_average_1min']:.2f}.")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one repetition, a short call, a 1.5 s TTL")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    parser.add_argument("--repetitions", type=int, help="owner kills (default 3)")
    parser.add_argument(
        "--heartbeat-ttl-s", type=float, help="registry heartbeat TTL (default: the service's)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    base = QUICK if args.quick else FULL
    size = Size(
        turns=base.turns,
        repetitions=args.repetitions or base.repetitions,
        heartbeat_ttl_s=args.heartbeat_ttl_s or base.heartbeat_ttl_s,
    )
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        details = measure(size, Path(tmp))
    details["summary"] = summary(details)
    settings = {
        "engine": "vosk",
        "model": "ko",
        "heartbeat_ttl_s": size.heartbeat_ttl_s,
        "repetitions": size.repetitions,
        "turns": size.turns,
        "chunk_ms": CHUNK_MS,
    }
    result: Result = build_result(
        "recovery",
        "Recovery after an instance is killed",
        args.quick,
        settings,
        figures_of(details, size.heartbeat_ttl_s),
        details,
    )
    for path in write_result(result, args.out, INTRO, notes(details, size)):
        logger.info("wrote %s", path)
    print_figures(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
