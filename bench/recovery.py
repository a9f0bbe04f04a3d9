"""Recovery: an instance SIGKILLed mid-utterance, the call carried on by another one.

``python -m bench.recovery``: two Vosk decoders sharing a Redis registry behind a front door like the
OpenShift Route, a call streamed in real time by the recorder's own HTTP client, the owner killed
mid-utterance; how it is measured is in ``bench/METHOD.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import socket
import socketserver
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jiwer

from bench.results import Figure, Result, figure, main, result
from bench.speech import espeak_korean, silence
from decoder_api.config import load_settings
from decoder_api.engines.base import RecognizerOptions
from decoder_api.engines.models import resolve_model
from decoder_api.engines.vosk import VoskEngine
from decoder_api.sessions.transcripts import stream_pcm
from devtools.clients import CHUNK_MS, RATE_HZ, split_chunks
from devtools.processes import DecoderServer, decoder_env, free_port, start_redis
from recorder.client import HttpTransport, SessionRequest
from recorder.config import ServerSettings

logger = logging.getLogger(__name__)

PAUSE_MS = 1200
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
    first_turn: int
    repetitions: int
    heartbeat_ttl_s: float
    pool_warm: int  # recognizers each decoder warms at start


FULL = Size(len(TURNS), first_turn=0, repetitions=3, heartbeat_ttl_s=DEFAULT_HEARTBEAT_TTL_S, pool_warm=1)
QUICK = Size(turns=1, first_turn=3, repetitions=1, heartbeat_ttl_s=1.5, pool_warm=0)


@dataclass(frozen=True)
class SpokenCall:
    pcm: bytes
    spans_ms: tuple[tuple[int, int], ...]  # where each turn is


def speak_call(turns: Sequence[str], workdir: Path) -> SpokenCall:
    pcm, spans = silence(0.3), []
    for text in turns:
        start = len(pcm) // 32
        pcm += espeak_korean(text, workdir, speed=130)
        spans.append((start, len(pcm) // 32))
        pcm += silence(PAUSE_MS / 1000)
    return SpokenCall(pcm, tuple(spans))


def uninterrupted(pcm: bytes) -> list[str]:
    with contextlib.closing(VoskEngine(resolve_model("vosk", "ko", None))) as engine:
        recognizer = engine.create(RecognizerOptions(RATE_HZ, words=True))
        return [f.text for f in stream_pcm(recognizer, pcm, CHUNK_MS).finals if f.text.strip()]


def words_lost(expected: Sequence[str], got: Sequence[str]) -> int:
    """Words of ``expected`` missing from or changed in ``got`` (deletions + substitutions)."""
    output = jiwer.process_words(" ".join(expected), " ".join(got))  # empty texts count too
    return int(output.deletions + output.substitutions)


class Route(socketserver.ThreadingTCPServer):
    """A TCP front door: each new connection goes to the first of ``backends`` (ports) that accepts it, so
    a client stays on the instance that owns its call while it lives (as with the Route's sticky cookie)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        self.backends: list[int] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.1,), name="route", daemon=True).start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        for port in list(self.backends):
            with contextlib.suppress(OSError):
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
                upstream.settimeout(None)
                threading.Thread(target=pump, args=(upstream, request), daemon=True).start()
                pump(request, upstream)
                return

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()


@dataclass
class Reply:
    due: float  # perf_counter when the chunk was due (real time)
    sent: float
    done: float
    partial: str


@dataclass
class CallOutcome:
    finals: list[str]
    replies: list[Reply]
    killed_at: float | None
    retries: list[tuple[float, float, str]]  # (perf_counter, delay s, reason)


def stream_call(
    route: Route, call: SpokenCall, kill_at_s: float | None = None, owner: DecoderServer | None = None
) -> CallOutcome:
    """Stream ``call`` in real time through ``route``; SIGKILL ``owner`` ``kill_at_s`` into the call. The
    client's retries are read from its ``recorder.retry`` log lines."""
    transport = HttpTransport(ServerSettings(url=route.url, retry_s=60.0), threading.Event())
    replies: list[Reply] = []
    killed: list[float] = []
    retries: list[tuple[float, float, str]] = []

    def retried(record: logging.LogRecord) -> bool:
        _, _, delay, reason = cast(tuple[str, int, float, str], record.args)  # what, attempt, in_s, reason
        retries.append((time.perf_counter(), delay, reason))
        return True

    def kill() -> None:
        if owner is not None:  # else an uninterrupted call
            killed.append(time.perf_counter())
            owner.kill()

    retry_log, timer = logging.getLogger("recorder.retry"), threading.Timer(kill_at_s or 0.0, kill)
    retry_log.addFilter(retried)
    retry_log.setLevel(logging.INFO)
    try:
        transport.open(SessionRequest(sample_rate_hz=RATE_HZ, user_id="bench-recovery", words=True))
        start = time.perf_counter()
        timer.start()
        finals: list[str] = []
        for seq, chunk in enumerate(split_chunks(call.pcm)):
            due = start + seq * CHUNK_MS / 1000
            if (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)  # the microphone's pace
            sent = time.perf_counter()
            reply = transport.send(chunk, seq)
            replies.append(Reply(due, sent, time.perf_counter(), reply.partial))
            finals += [f.text for f in reply.finals]
        finals += [f.text for f in transport.end().finals]
        timer.join()
    finally:
        transport.close()
        retry_log.removeFilter(retried)
    finals = [f for f in finals if f.strip()]
    return CallOutcome(finals, replies, killed[0] if killed else None, retries)


def kill_points_s(call: SpokenCall, repetitions: int) -> list[float]:
    """Mid-utterance instants: inside a different middle turn each time, at 40–60 % of it."""
    middle = list(range(1, len(call.spans_ms))) or [0]
    spans = [call.spans_ms[middle[i % len(middle)]] for i in range(repetitions)]
    return [
        (start + (end - start) * (0.4 + 0.2 * (i % 3) / 2)) / 1000 for i, (start, end) in enumerate(spans)
    ]


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
            {"after_kill_s": at - killed, "delay_s": s, "reason": why} for at, s, why in outcome.retries
        ],
        "words_lost": words_lost(expected, outcome.finals),
        "transcript_identical": outcome.finals == expected,
        "finals": outcome.finals,
    }


def measure(size: Size, workdir: Path) -> dict[str, Any]:
    call = speak_call(TURNS[size.first_turn : size.first_turn + size.turns], workdir)
    settings = {"engine": "vosk", "model": "ko", "pool_warm": str(size.pool_warm)}
    settings["registry_heartbeat_ttl_s"] = f"{size.heartbeat_ttl_s:g}"
    with contextlib.ExitStack() as running:  # stopped in reverse: the decoders, the route, Redis
        redis, launched = start_redis(workdir / "redis"), itertools.count()
        running.callback(redis.stop)
        route = Route()
        running.callback(route.stop)

        def new_decoder() -> DecoderServer:
            env = decoder_env(settings, {"REDIS_URL": redis.url, "KAFKA_BOOTSTRAP_SERVERS": ""})
            env["DECODER_INSTANCE_ID"] = name = f"bench-{uuid.uuid4().hex[:6]}"
            log = workdir / f"decoder-{next(launched)}.log"
            return running.enter_context(DecoderServer(free_port(), env, log, name).launch())

        live = [new_decoder(), new_decoder()]
        expected = uninterrupted(call.pcm)  # while the decoders load their model
        for decoder in live:
            decoder.wait_ready()
        route.backends[:] = [d.port for d in live]
        logger.info("uninterrupted call through the pair")
        plain = stream_call(route, call)
        repetitions = []
        for i, kill_at in enumerate(kill_points_s(call, size.repetitions)):
            logger.info("repetition %d: killing %s %.1f s into the call", i + 1, live[0].name, kill_at)
            repetitions.append(recovery_of(stream_call(route, call, kill_at, live[0]), expected, kill_at))
            if i + 1 < size.repetitions:  # a new instance replaces the dead one for the next call
                live = [*live[1:], new_decoder()]
                live[-1].wait_ready()
                route.backends[:] = [d.port for d in live]
    reply_ms = [(r.done - r.sent) * 1000 for r in plain.replies]
    return {
        "audio_s": len(call.pcm) / 2 / RATE_HZ,
        "expected_finals": expected,
        "uninterrupted": {
            "words_lost": words_lost(expected, plain.finals),
            "transcript_identical": plain.finals == expected,
            "reply_p50_ms": statistics.median(reply_ms),
            "reply_max_ms": max(reply_ms),
        },
        "repetitions": repetitions,
    }


def summary(repetitions: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("first_reply_s", "first_partial_s", "back_on_schedule_s"):
        found = [r[key] for r in repetitions if r[key] is not None]
        out[f"{key}_median"] = statistics.median(found) if found else None
        out[f"{key}_max"] = max(found, default=None)
    lost = [r["words_lost"] for r in repetitions]
    out["words_lost_max"] = max(lost, default=None)
    out["words_lost_total"] = sum(lost) if lost else None
    return out


KILL_FIGURES = (
    ("Kill → first reply of the new owner, median", "first_reply_s_median"),
    ("Kill → first reply of the new owner, max", "first_reply_s_max"),
    ("Kill → first non-empty partial, median", "first_partial_s_median"),
    ("Kill → first non-empty partial, max", "first_partial_s_max"),
    ("Kill → client back on real time, max", "back_on_schedule_s_max"),
)


def figures_of(details: Mapping[str, Any], ttl_s: float) -> list[Figure]:
    s, plain = details["summary"], details["uninterrupted"]
    figures = [figure(name, "s", s[key], ttl_s, f"heartbeat TTL {ttl_s:g} s") for name, key in KILL_FIGURES]
    lost, plain_lost = s["words_lost_max"], float(plain["words_lost"])
    baseline = "uninterrupted call through the same pair"
    met = None if lost is None else lost == 0
    figures.append(figure("Words lost per call, max", "words", lost, plain_lost, baseline, "lower", "0", met))
    return figures


def notes(details: Mapping[str, Any]) -> list[str]:
    plain = details["uninterrupted"]
    lines = [
        f"- The call: {details['audio_s']:.1f} s, {len(details['expected_finals'])} finals when decoded "
        f"uninterrupted; through the pair without a failure {plain['words_lost']} words lost, replies p50 "
        f"{plain['reply_p50_ms']:.0f} ms, max {plain['reply_max_ms']:.0f} ms."
    ]
    for i, r in enumerate(details["repetitions"], start=1):
        first = "n/a" if r["first_reply_s"] is None else f"{r['first_reply_s']:.2f} s"
        lines.append(
            f"- Repetition {i}: kill at {r['kill_at_s']:.1f} s, first reply after {first}, "
            f"{r['client_retries']} client retries, {r['words_lost']} words lost, transcript "
            f"{'identical' if r['transcript_identical'] else 'different'}."
        )
    return lines


def run(args: argparse.Namespace) -> Result:
    size = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        details = measure(size, Path(tmp))
    details["summary"] = summary(details["repetitions"])
    settings = {"engine": "vosk", "model": "ko", "heartbeat_ttl_s": size.heartbeat_ttl_s}
    settings |= {"repetitions": size.repetitions, "turns": size.turns, "chunk_ms": CHUNK_MS}
    figures, title = figures_of(details, size.heartbeat_ttl_s), "Recovery after an instance is killed"
    return result("recovery", title, args.quick, settings, figures, details, notes=notes(details))


if __name__ == "__main__":
    sys.exit(main("recovery", __doc__, [], run))
