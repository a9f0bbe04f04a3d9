"""``python -m recorder``: stream a microphone, a file or simulated callers to the decoder.

Modes: the microphone (default), ``-f FILE`` (any audio format; ``-f -`` reads raw s16le mono
PCM from stdin) or ``-S`` (simulated callers). A stereo file is a call with one speaker per
channel (``--speakers``), streamed as a two-channel session. Finals scroll and the current partial
updates in place; when standard output is not a terminal it carries only the transcript lines;
``--json`` prints JSON lines instead. Ctrl-C or SIGTERM ends the open call(s) cleanly: their
sessions are ended, so no final is lost, and the summary is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from rich.console import Console

from contract.env import InvalidSetting, env_bool
from contract.kafka import TRANSCRIPTS_TOPIC, Setting, load_kafka_client, parse_topic, transcripts_topic
from recorder.call import run_call
from recorder.client import HttpTransport, SessionRequest, Transport
from recorder.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    KafkaSettings,
    MicrophoneSettings,
    Mode,
    RecorderSettings,
    ServerSettings,
    SimulatorSettings,
    StreamSettings,
    parse_float,
    parse_int,
    parse_pause,
    parse_server_url,
    parse_speakers,
    parse_user_id,
)
from recorder.display import Display, JsonLinesDisplay, TerminalDisplay
from recorder.errors import ConfigError, RecorderError
from recorder.events import CallEvent, CallInfo, Observer
from recorder.kafka import TranscriptPublisher
from recorder.simulator import Simulator, StatsCollector
from recorder.sources import (
    BYTES_PER_SAMPLE,
    AudioSource,
    MicrophoneSource,
    amplified,
    bounded,
    list_input_devices,
    open_file_source,
    paced,
)
from recorder.vad import SilenceGate, speech_detector
from recorder.ws_client import WebSocketTransport

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Stream a microphone, an audio file or simulated callers to the decoder and show the transcript.

Modes: the microphone (default), -f FILE (any audio format; -f - reads raw s16le mono PCM from
stdin) or -S (simulated callers). A stereo file (and a stereo recording of the simulator) is a
call with one speaker per channel: both channels are streamed as a two-channel session whose
finals name their speaker (--speakers); --mono mixes files down to one channel instead, and a
file with more than two channels needs it. In a terminal the finals scroll and the current
partial updates in place (one line per speaker of a stereo call); when standard output is not a
terminal it carries only the transcript, one line per final ("speaker: text" for stereo), and
the session line and the summary go to standard error. --json prints JSON lines instead
(session, partial, final, end, summary, stats). Files and stdin are sent as fast as the decoder
answers unless --realtime; the microphone and the simulator are real time. Ctrl-C or SIGTERM ends
the open call(s) cleanly: their sessions are ended, so no final is lost, and the summary is
printed.

The microphone passes through a voice activity detector (WebRTC's when webrtcvad is installed,
else an energy threshold): silence longer than 2 s after speech is not sent (a chunk goes every
10 s to keep the session), speech and the 0.4 s before it always are.
"""

ENVIRONMENT_HELP = """\
environment (flags win over these):
  HOST             decoder address, as for -H
  DO_SIMULATE      true/false (also 1/0, yes/no, on/off): run the simulator, as -S
  KAFKA_BOOTSTRAP_SERVERS (or KAFKA_BROKERS)
                   Kafka bootstrap servers, as -b
  KAFKA_TOPIC      Kafka topic, as -t
  DECODER_API_KEY  API key, as --api-key (preferred: command lines are visible to other users)
  KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_CA_LOCATION, KAFKA_SSL_CERTIFICATE_LOCATION,
  KAFKA_SSL_KEY_LOCATION, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD or
  KAFKA_SASL_PASSWORD_FILE
                   TLS and SASL for the Kafka producer, the same variables as the decoder's and
                   the NLP consumer's (no flags: secrets stay off the command line)

exit status: 0 done (also after Ctrl-C/SIGTERM), 1 a call, a source or Kafka failed, 2 bad
options or environment, 70 internal error, 130 interrupted twice.
"""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m recorder",
        description=DESCRIPTION,
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server = parser.add_argument_group("decoder")
    server.add_argument(
        "-H",
        "--host",
        metavar="HOST[:PORT]",
        help=f"decoder address: HOST, HOST:PORT (port 8080 when omitted) or a URL such as "
        f"https://decoder.example.com (env HOST; default {DEFAULT_HOST})",
    )
    server.add_argument(
        "--api-key", metavar="KEY", help="API key sent as a bearer token (env DECODER_API_KEY)"
    )
    server.add_argument(
        "--protocol",
        choices=("http", "ws"),
        default="http",
        help="http: the native /v1/sessions API (default; retries and resumes); ws: the Vosk-protocol "
        "WebSocket /v1/stream",
    )
    server.add_argument(
        "--retry-s",
        metavar="S",
        help="how long one request keeps retrying transient failures such as 503, connection "
        "refused or a restarting decoder (default 30)",
    )
    audio = parser.add_argument_group("audio")
    audio.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="stream an audio file (WAV, FLAC, MP3, OGG, … any rate; mono, or stereo with one speaker "
        "per channel; .raw/.pcm: raw s16le mono at --input-rate); '-' reads raw PCM from stdin",
    )
    audio.add_argument(
        "--speakers",
        metavar="NAME0,NAME1",
        help="a stereo file's speakers, channel 0's then channel 1's (default: the decoder's, "
        "agent,customer)",
    )
    audio.add_argument(
        "--mono",
        action="store_true",
        help="mix files down to one channel (a mono session), also a file of more than two channels",
    )
    audio.add_argument(
        "-S", "--simulate", action="store_true", default=None, help="simulated callers (env DO_SIMULATE)"
    )
    audio.add_argument(
        "-s", "--source", metavar="DEVICE", help="microphone: input device index or part of its name"
    )
    audio.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    audio.add_argument(
        "-a",
        "--aggressiveness",
        metavar="0-3",
        help="microphone: how eagerly the voice activity detector calls audio silence; long "
        "silences are not sent, speech always is (default 1)",
    )
    audio.add_argument(
        "-V", "--volume", metavar="GAIN", help="input gain, a factor: 2 doubles, 0.5 halves (default 1)"
    )
    audio.add_argument(
        "--input-rate", metavar="HZ", help="sample rate of raw PCM input (stdin, .raw, .pcm; default 16000)"
    )
    audio.add_argument("--chunk-ms", metavar="MS", help="audio per request, in ms (default 200)")
    pacing = audio.add_mutually_exclusive_group()
    pacing.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=None,
        help="send no faster than real time (default for --simulate)",
    )
    pacing.add_argument(
        "--fast",
        dest="realtime",
        action="store_false",
        help="send as fast as the decoder answers (default for --file and stdin)",
    )
    audio.add_argument(
        "--duration",
        metavar="S",
        help="stop after S seconds: of audio for the microphone and files, of running for --simulate",
    )
    session = parser.add_argument_group("session")
    session.add_argument(
        "--user-id",
        metavar="ID",
        help="user id of the session; simulated caller n is ID-n (default recorder)",
    )
    session.add_argument(
        "--words", action="store_true", help="ask for word timings (in --json and Kafka events)"
    )
    simulator = parser.add_argument_group("simulator (with -S)")
    simulator.add_argument(
        "--data",
        metavar="DIR",
        help="recordings to play: call*.wav there, or every *.wav when there is no call*.wav "
        f"(default {DEFAULT_DATA_DIR})",
    )
    simulator.add_argument("--callers", metavar="N", help="concurrent callers, each a thread (default 1)")
    simulator.add_argument(
        "--pause-s", metavar="MIN,MAX", help="random pause between a caller's calls, in s (default 5,10)"
    )
    simulator.add_argument("--calls", metavar="N", help="stop after N calls in all (default: no limit)")
    simulator.add_argument("--stats-s", metavar="S", help="print statistics every S seconds (default 10)")
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument(
        "-b",
        "--broker",
        metavar="HOST:PORT[,...]",
        help="also publish the finals to Kafka (env KAFKA_BOOTSTRAP_SERVERS or KAFKA_BROKERS)",
    )
    kafka.add_argument(
        "-t",
        "--topic",
        metavar="TOPIC",
        help=f"Kafka topic for the finals (env KAFKA_TOPIC; default {TRANSCRIPTS_TOPIC})",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json",
        action="store_true",
        help="JSON lines on stdout instead of the live view (without it, a stdout that is not a "
        "terminal gets only the transcript lines)",
    )
    output.add_argument("-v", "--verbose", action="store_true", help="log requests and retries on stderr")
    return parser


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> RecorderSettings:
    """Flags, then environment, then defaults; every mistake is a ``ConfigError``."""
    mode = choose_mode(args, env)
    server = ServerSettings(
        url=parse_server_url(args.host or env.get("HOST") or DEFAULT_HOST, "--host" if args.host else "HOST"),
        api_key=args.api_key or env.get("DECODER_API_KEY") or None,
        protocol=args.protocol,
        retry_s=option(args.retry_s, "--retry-s", 30.0, lambda v, n: parse_float(v, n, 0, 3600)),
    )
    stream = StreamSettings(
        chunk_ms=option(args.chunk_ms, "--chunk-ms", 200, lambda v, n: parse_int(v, n, 10, 5000)),
        words=bool(args.words),
        user_id=parse_user_id(args.user_id) if args.user_id is not None else "recorder",
        speakers=parse_speakers(args.speakers) if args.speakers is not None else None,
        mixdown=bool(args.mono),
    )
    check_mode_options(args, mode)
    duration = args.duration
    return RecorderSettings(
        mode=mode,
        server=server,
        stream=stream,
        file=args.file,
        realtime=(mode == "simulate") if args.realtime is None else bool(args.realtime),
        input_rate_hz=option(
            args.input_rate, "--input-rate", 16000, lambda v, n: parse_int(v, n, 1000, 384000)
        ),
        volume=option(args.volume, "--volume", 1.0, lambda v, n: parse_float(v, n, 0, 100, low_open=True)),
        duration_s=None if duration is None else parse_float(duration, "--duration", 0, 10**7, low_open=True),
        json_output=bool(args.json),
        verbose=bool(args.verbose),
        microphone=MicrophoneSettings(
            device=args.source,
            aggressiveness=option(
                args.aggressiveness, "--aggressiveness", 1, lambda v, n: parse_int(v, n, 0, 3)
            ),
        ),
        simulator=simulator_settings(args),
        kafka=kafka_settings(args, env),
    )


def option(value: str | None, name: str, default: Any, parse: Callable[[str, str], Any]) -> Any:
    return default if value is None else parse(value, name)


def choose_mode(args: argparse.Namespace, env: Mapping[str, str]) -> Mode:
    try:
        env_simulate = env_bool(env, "DO_SIMULATE", default=False)
    except InvalidSetting as exc:
        raise ConfigError(exc.message) from None
    if args.file is not None and args.simulate:
        raise ConfigError("--file and --simulate exclude each other; choose one")
    if args.file is not None:
        return "file"
    return "simulate" if args.simulate or env_simulate else "microphone"


def check_mode_options(args: argparse.Namespace, mode: Mode) -> None:
    if mode != "simulate":
        given = [name for name in ("data", "callers", "pause_s", "calls", "stats_s") if getattr(args, name)]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} applies to --simulate only")
    if mode == "microphone" and args.realtime is not None:
        raise ConfigError("--realtime/--fast apply to --file and --simulate (a microphone is real time)")
    if mode == "microphone" and (args.speakers is not None or args.mono):
        raise ConfigError("--speakers/--mono apply to --file and --simulate (a microphone is mono)")


def simulator_settings(args: argparse.Namespace) -> SimulatorSettings:
    defaults = SimulatorSettings()
    calls = args.calls
    return SimulatorSettings(
        data_dir=Path(args.data).expanduser() if args.data else defaults.data_dir,
        callers=option(args.callers, "--callers", 1, lambda v, n: parse_int(v, n, 1, 500)),
        pause_s=parse_pause(args.pause_s) if args.pause_s is not None else defaults.pause_s,
        calls=None if calls is None else parse_int(calls, "--calls", 1, 10**9),
        stats_s=option(
            args.stats_s, "--stats-s", 10.0, lambda v, n: parse_float(v, n, 0, 86400, low_open=True)
        ),
    )


def kafka_settings(args: argparse.Namespace, env: Mapping[str, str]) -> KafkaSettings | None:
    """Where the finals are published too, if anywhere: ``-b``/``-t`` win over the contract's
    Kafka variables (``contract.kafka``, read and checked here)."""
    try:
        client = load_kafka_client(env, Setting("--broker", args.broker) if args.broker else None)
        topic = parse_topic(Setting("--topic", args.topic)) if args.topic else transcripts_topic(env)
    except InvalidSetting as exc:
        raise ConfigError(exc.message) from None
    if client is None and topic is None:
        return None
    if client is None:
        raise ConfigError(
            "a Kafka topic without a broker: give -b/--broker or KAFKA_BOOTSTRAP_SERVERS as well"
        )
    return KafkaSettings(client, topic or TRANSCRIPTS_TOPIC)


def make_transport(settings: RecorderSettings, stop: threading.Event) -> Transport:
    if settings.server.protocol == "ws":
        return WebSocketTransport(settings.server, stop)
    return HttpTransport(settings.server, stop)


def make_display(settings: RecorderSettings) -> Display:
    """JSON lines; the live view on a terminal; else the bare transcript on stdout, the rest on stderr."""
    if settings.json_output:
        return JsonLinesDisplay(sys.stdout)
    show_progress = settings.mode == "file"
    console = Console(highlight=False)
    if console.is_terminal:
        return TerminalDisplay(console, show_progress)
    return TerminalDisplay(Console(highlight=False, stderr=True), show_progress, transcript=sys.stdout)


def fanout(*observers: Observer | None) -> Observer:
    chosen = [o for o in observers if o is not None]

    def notify(event: CallEvent) -> None:
        for observer in chosen:
            observer(event)

    return notify


def open_source(settings: RecorderSettings) -> AudioSource:
    stream = settings.stream
    if settings.mode == "file":
        assert settings.file is not None
        return open_file_source(
            settings.file, stream.sample_rate_hz, stream.chunk_bytes, settings.input_rate_hz, stream.mixdown
        )
    return MicrophoneSource(settings.microphone.device, stream.sample_rate_hz, stream.chunk_bytes)


def audio_chunks(source: AudioSource, settings: RecorderSettings, stop: threading.Event) -> Iterator[bytes]:
    """The source's chunks, bounded, amplified, paced (files) or gated by the VAD (microphone)."""
    rate = settings.stream.sample_rate_hz
    frame_bytes = BYTES_PER_SAMPLE * source.channels
    max_ms = None if settings.duration_s is None else round(settings.duration_s * 1000)
    chunks = amplified(bounded(source.chunks(), rate, stop, max_ms, frame_bytes), settings.volume)
    if settings.mode == "microphone":
        detector = speech_detector(settings.microphone.aggressiveness, rate)
        logger.info("vad detector=%s aggressiveness=%d", detector.name, settings.microphone.aggressiveness)
        return SilenceGate(detector, rate, settings.stream.chunk_ms).filter(chunks)
    return paced(chunks, rate, stop, frame_bytes) if settings.realtime else chunks


def run_single_call(settings: RecorderSettings, stop: threading.Event) -> int:
    display = make_display(settings)
    publisher = TranscriptPublisher(settings.kafka) if settings.kafka else None
    source = open_source(settings)
    try:
        stream = settings.stream
        call = CallInfo(1, source.name, stream.user_id, total_ms=source.total_ms)
        request = SessionRequest(
            stream.sample_rate_hz,
            stream.user_id,
            stream.words,
            {"source": "recorder", "input": source.name},
            channels=source.channels,
            speakers=stream.speakers if source.channels > 1 else None,
        )
        started = time.monotonic()
        with display.running():
            summary = run_call(
                call,
                request,
                audio_chunks(source, settings, stop),
                make_transport(settings, stop),
                fanout(display, publisher),
                stop,
            )
        if summary.session_id is not None:
            display.summary([summary], time.monotonic() - started)
    finally:
        source.close()
    if publisher is not None:
        publisher.close()
    if summary.error:
        raise RecorderError(summary.error)
    return 0


def run_simulator(settings: RecorderSettings, stop: threading.Event) -> int:
    display = make_display(settings)
    publisher = TranscriptPublisher(settings.kafka) if settings.kafka else None
    stats = StatsCollector()
    simulator = Simulator(
        settings.simulator,
        settings.stream,
        lambda: make_transport(settings, stop),
        fanout(display, stats, publisher),
        stop,
    )
    timer = threading.Timer(settings.duration_s, stop.set) if settings.duration_s else None
    with display.running():
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            simulator.run(lambda: display.stats(stats.snapshot()), settings.simulator.stats_s)
        finally:
            if timer is not None:
                timer.cancel()
    display.stats(stats.snapshot(), final=True)
    if publisher is not None:
        publisher.close()
    final = stats.snapshot()
    if final.failed:
        ended = final.completed + final.failed
        raise RecorderError(f"{final.failed} of {ended} calls failed; last: {stats.last_error}")
    return 0


def list_devices(json_output: bool) -> int:
    devices = list_input_devices()
    if json_output:
        for d in devices:
            line = {
                "index": d.index,
                "name": d.name,
                "channels": d.channels,
                "default_rate": d.default_rate_hz,
            }
            print(json.dumps(line | {"default": d.is_default}, ensure_ascii=False))
    else:
        for d in devices:
            marker = "*" if d.is_default else " "
            print(f"{marker} {d.index:>3}  {d.name}  ({d.channels} ch, {d.default_rate_hz} Hz)")
    if not devices:
        raise RecorderError("no input devices found")
    return 0


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the calls end cleanly); a second one interrupts at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("recorder.kafka.librdkafka").setLevel(logging.CRITICAL)
    if verbose:
        logging.getLogger("recorder.sources").setLevel(logging.DEBUG)


def run(settings: RecorderSettings) -> int:
    stop = threading.Event()
    with stop_on_signals(stop):
        if settings.mode == "simulate":
            return run_simulator(settings, stop)
        return run_single_call(settings, stop)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        if args.list_devices:
            return list_devices(args.json)
        settings = settings_from(args, os.environ if env is None else env)
        logger.info("settings %s", replace(settings, server=replace(settings.server, api_key=None)))
        return run(settings)
    except RecorderError as exc:
        return fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            logger.exception("internal error")
        return fail(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for details)", code=70)


def fail(message: str, code: int = 1) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {first_line}", file=sys.stderr)
    return code
