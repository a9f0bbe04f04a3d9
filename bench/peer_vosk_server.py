"""Reference peer: the design of alphacep's vosk-server (``websocket/asr_server.py``), re-implemented here.

The original is not installable offline (it is not on PyPI), so this module rebuilds its documented
design from scratch, for ``bench.service`` to drive with the same callers and audio as our service:

* one asyncio ``websockets`` server in one process, one shared ``vosk.Model``;
* a new ``KaldiRecognizer`` per connection, created when the first audio arrives (after the optional
  config message), with word times on (vosk-server's default);
* every message decoded by ``loop.run_in_executor`` on a thread pool of ``os.cpu_count()`` threads;
* the same JSON protocol: ``{"config": {"sample_rate": ..., "words": ..., "phrase_list": [...],
  "max_alternatives": ...}}`` (no reply), binary PCM frames each answered by ``Result()`` (an
  utterance ended) or ``PartialResult()``, ``{"eof": 1}`` answered by ``FinalResult()`` and the end.

It keeps vosk-server's model as it is (Kaldi's own dither), has no session limits, metrics, registry
or Kafka: it is the lower bound of what a WebSocket front on Vosk costs, not a product.

``python -m bench.peer_vosk_server --port 2700`` serves the Korean model until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import vosk
from websockets.asyncio.server import ServerConnection, serve

from decoder_api.engines.models import resolve_model

logger = logging.getLogger(__name__)

DEFAULT_RATE_HZ = 16000


@dataclass(slots=True)
class Connection:
    """One client's options and, from its first audio on, its recognizer."""

    sample_rate_hz: float = DEFAULT_RATE_HZ
    words: bool = True
    phrases: list[str] | None = None
    max_alternatives: int = 0
    recognizer: vosk.KaldiRecognizer | None = None

    def configure(self, options: dict[str, object]) -> None:
        self.sample_rate_hz = float(str(options.get("sample_rate", self.sample_rate_hz)))
        self.words = bool(options.get("words", self.words))
        phrases = options.get("phrase_list")
        self.phrases = [str(p) for p in phrases] if isinstance(phrases, list) else None
        self.max_alternatives = int(str(options.get("max_alternatives", 0)))

    def recognizer_for(self, model: vosk.Model) -> vosk.KaldiRecognizer:
        if self.recognizer is None:
            if self.phrases is None:
                recognizer = vosk.KaldiRecognizer(model, self.sample_rate_hz)
            else:
                recognizer = vosk.KaldiRecognizer(model, self.sample_rate_hz, json.dumps(self.phrases))
            recognizer.SetWords(self.words)
            recognizer.SetMaxAlternatives(self.max_alternatives)
            self.recognizer = recognizer
        return self.recognizer


def decode_message(recognizer: vosk.KaldiRecognizer, message: str | bytes) -> tuple[str, bool]:
    """The reply to one message and whether the stream ends with it (runs on the thread pool)."""
    if isinstance(message, str):  # only eof is expected here; config was handled before
        return str(recognizer.FinalResult()), True
    if recognizer.AcceptWaveform(message):
        return str(recognizer.Result()), False
    return str(recognizer.PartialResult()), False


def control(message: str | bytes) -> dict[str, object] | None:
    """A text frame parsed as a JSON object, else None."""
    if not isinstance(message, str):
        return None
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


class PeerServer:
    """The shared model and thread pool, and the per-connection handler."""

    def __init__(self, model: vosk.Model, threads: int) -> None:
        self._model = model
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="recognize")

    async def handle(self, websocket: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        connection = Connection()
        async for message in websocket:
            command = control(message)
            if command is not None and isinstance(command.get("config"), dict):
                connection.configure(command["config"])  # type: ignore[arg-type]
                continue
            recognizer = connection.recognizer_for(self._model)
            reply, last = await loop.run_in_executor(self._pool, decode_message, recognizer, message)
            await websocket.send(reply)
            if last:
                break

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def run(host: str, port: int, peer: PeerServer) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(peer.handle, host, port, max_size=None):
        logger.info("peer_listening host=%s port=%d", host, port)
        await stop
    peer.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_vosk_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2700)
    parser.add_argument("--model", default="ko", help="an installed Vosk model name")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decoding thread pool size")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    vosk.SetLogLevel(-1)
    model = vosk.Model(resolve_model("vosk", args.model, None).path)
    asyncio.run(run(args.host, args.port, PeerServer(model, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
