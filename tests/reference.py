"""Reference decodes under the memory allocator the served decoder runs on.

Tests compare a served decode with the same audio through one recognizer created directly. The
two agree to the letter only under one allocator (``decoder_api/allocator.py``: under jemalloc
Vosk's confidences differ from glibc's in the fifth decimal, enough to flip a word now and then).
This test process runs on glibc's malloc, while ``serve`` starts the decoder on jemalloc by
default. So the reference recognizers live in a child process started with the environment
``serve`` gives the decoder (``allocator_env`` of the same choice), which loads the model once per
test session: ``ReferenceEngine`` is an ``Engine`` whose recognizers forward every call there, one
JSON line each way (a few kB per 200 ms chunk, nothing beside the decode itself). The child
reports the allocator it has loaded, measured as the server's ``/readyz`` measures it
(``running_allocator``), so a test checks rather than assumes that both sides run the same one.

``python -m tests.reference MODEL`` is the child.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from decoder_api.allocator import allocator_env, running_allocator
from decoder_api.engines.base import Final, ModelInfo, Recognizer, RecognizerOptions
from decoder_api.errors import DecoderError
from decoder_api.sessions.registry import final_from_record, final_to_record

ROOT = Path(__file__).resolve().parent.parent


class ReferenceEngine:
    """A Vosk model loaded in a child process on the allocator ``serve`` would use for
    ``allocator`` (None: its default); ``create`` hands out recognizers that decode there."""

    name = "vosk"

    def __init__(self, model: str = "ko", allocator: str | None = None) -> None:
        env = {**os.environ, **allocator_env(allocator, os.environ)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.reference", model],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            encoding="utf-8",
        )
        hello = self._receive()
        self.allocator: str = hello["allocator"]  # as loaded in the child
        self.graph: str = hello["graph"]  # the decoding graph the child's engine searches
        self.model = ModelInfo(**{**hello["model"], "aliases": tuple(hello["model"]["aliases"])})

    def create(self, options: RecognizerOptions) -> Recognizer:
        recognizer_id = self.call(None, "create", dataclasses.asdict(options))
        return RemoteRecognizer(self, recognizer_id, options.sample_rate_hz)

    def call(self, recognizer_id: int | None, method: str, *args: Any) -> Any:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": recognizer_id, "method": method, "args": args}) + "\n")
        self._process.stdin.flush()
        answer = self._receive()
        if "error" in answer:
            raise RuntimeError(f"reference {method}: {answer['error']}: {answer['message']}")
        return answer["result"]

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)

    def _receive(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference decoder exited with {self._process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer


class RemoteRecognizer:
    """A recognizer of the reference decoder's child process (the ``Recognizer`` contract)."""

    def __init__(self, engine: ReferenceEngine, recognizer_id: int, sample_rate_hz: int) -> None:
        self._engine, self._id, self._rate_hz = engine, recognizer_id, sample_rate_hz

    @property
    def sample_rate_hz(self) -> int:
        return self._rate_hz

    def accept(self, pcm: bytes) -> list[Final]:
        return self._finals("accept", _encode(pcm))

    def replay(self, pcm: bytes) -> list[Final]:
        return self._finals("replay", _encode(pcm))

    def flush(self) -> list[Final]:
        return self._finals("flush")

    def partial(self) -> str:
        return str(self._engine.call(self._id, "partial"))

    def horizon_ms(self) -> int:
        return int(self._engine.call(self._id, "horizon_ms"))

    def reset(self) -> None:
        self._engine.call(self._id, "reset")

    def restart(self) -> None:
        self._engine.call(self._id, "restart")

    def resume(self, position_samples: int, next_utterance: int) -> None:
        self._engine.call(self._id, "resume", position_samples, next_utterance)

    def close(self) -> None:
        self._engine.call(self._id, "close")

    def _finals(self, method: str, *args: Any) -> list[Final]:
        return [final_from_record(raw) for raw in self._engine.call(self._id, method, *args)]


def _encode(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


# --- the child --------------------------------------------------------------------------------

PCM_METHODS = frozenset({"accept", "replay"})
FINALS_METHODS = frozenset({"accept", "replay", "flush"})
METHODS = FINALS_METHODS | {"partial", "horizon_ms", "reset", "restart", "resume", "close"}


def serve(model: str, requests: IO[str], answers: IO[str]) -> None:
    """Answer one JSON line per request on ``requests`` until it ends."""
    from decoder_api.engines.models import resolve_model
    from decoder_api.engines.vosk import VoskEngine

    def send(answer: dict[str, Any]) -> None:
        print(json.dumps(answer, ensure_ascii=False), file=answers, flush=True)

    engine = VoskEngine(resolve_model("vosk", model, None))
    recognizers: dict[int, Recognizer] = {}  # by creation order; a closed one stays, unusable
    send({"allocator": running_allocator(), "graph": engine.graph, "model": dataclasses.asdict(engine.model)})
    for line in requests:
        request = json.loads(line)
        try:
            send({"result": handle(engine, recognizers, request)})
        except DecoderError as exc:
            send({"error": exc.code, "message": exc.message})
    engine.close()


def handle(engine: Any, recognizers: dict[int, Recognizer], request: dict[str, Any]) -> Any:
    method, args = request["method"], request["args"]
    if method == "create":
        options = {**args[0], "phrases": tuple(args[0]["phrases"]) if args[0]["phrases"] else None}
        recognizer_id = len(recognizers)
        recognizers[recognizer_id] = engine.create(RecognizerOptions(**options))
        return recognizer_id
    if method not in METHODS:
        raise ValueError(f"no such recognizer method: {method}")
    if method in PCM_METHODS:
        args = [base64.b64decode(args[0])]
    result = getattr(recognizers[request["id"]], method)(*args)
    return [final_to_record(f) for f in result] if method in FINALS_METHODS else result


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever a native library prints stays off the answers
    serve(sys.argv[1], sys.stdin, answers)


if __name__ == "__main__":
    main()
