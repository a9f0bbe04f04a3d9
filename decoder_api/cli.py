"""``python -m decoder_api``: transcribe files, manage models, serve, export an MLflow model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from decoder_api.allocator import allocator_env
from decoder_api.audio import DecodedAudio, decode_file
from decoder_api.config import Settings, load_settings
from decoder_api.engines import Engine, RecognizerOptions, load_engine, native_rate_hz
from decoder_api.engines.base import check_pcm
from decoder_api.errors import DecoderError, EmptyAudio, UnsupportedAudio
from decoder_api.sessions.transcripts import Transcript, final_to_dict, stream_pcm

logger = logging.getLogger(__name__)

PROGRESS_MIN_MS = 5000
RAW_SUFFIXES = frozenset({".raw", ".pcm"})

Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decoder_api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    _add_transcribe(commands, common)
    _add_models(commands, common)
    _add_serve(commands, common)
    _add_export(commands, common)
    return parser


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--engine", choices=("vosk", "whisper"), help="recognizer engine (default: whisper)")
    common.add_argument("--model", help="model name or alias, see `models list` (default: tiny.en)")
    common.add_argument("--model-dir", type=Path, help="directory of downloaded models (DECODER_MODEL_DIR)")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress and show tracebacks")
    return common


def _add_transcribe(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("transcribe", parents=[common], help="transcribe audio files offline")
    cmd.add_argument("files", nargs="+", type=Path, metavar="FILE", help="WAV/FLAC/MP3/OGG/… or raw PCM")
    cmd.add_argument("--json", action="store_true", help="one JSON object per file")
    cmd.add_argument("--words", action="store_true", help="include word timings (with --json)")
    cmd.add_argument("--timestamps", action="store_true", help="prefix each utterance with its times")
    cmd.add_argument("--chunk-ms", type=_positive_int, help="streaming chunk size (default 200)")
    cmd.add_argument("--sample-rate", type=_positive_int, default=16000, help="rate of .raw/.pcm input")
    cmd.set_defaults(run=run_transcribe)


def _add_models(commands: Any, common: argparse.ArgumentParser) -> None:
    models = commands.add_parser("models", help="list or download models, or build a static decoding graph")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", parents=[common], help="models available to the service")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    listing.set_defaults(run=run_models_list)
    download = sub.add_parser("download", parents=[common], help="fetch an official Vosk model")
    download.add_argument("name", help="e.g. vosk-model-small-en-us-0.15")
    download.set_defaults(run=run_models_download)
    compile_graph = sub.add_parser(
        "compile-graph",
        parents=[common],
        help="build the static decoding graph of a Vosk model with a lookahead pair (OpenFst tools)",
    )
    compile_graph.add_argument("--force", action="store_true", help="build it again even when it is built")
    compile_graph.set_defaults(run=run_models_compile_graph)


def _add_serve(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("serve", parents=[common], help="run the HTTP/WebSocket service (gunicorn)")
    cmd.add_argument("--host", help="address to bind (default 127.0.0.1, DECODER_HOST)")
    cmd.add_argument("--port", type=_positive_int, help="port (default 8080, DECODER_PORT)")
    cmd.add_argument("--threads", type=_positive_int, help="worker threads (default 96, DECODER_THREADS)")
    cmd.set_defaults(run=run_serve)


def _add_export(commands: Any, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export", help="package the configured engine and model for another platform"
    )
    formats = export.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    mlflow = formats.add_parser(
        "mlflow", parents=[common], help="an MLflow pyfunc model directory, weights included"
    )
    mlflow.add_argument("target", type=Path, metavar="DIR", help="a new or empty directory")
    mlflow.add_argument("--chunk-ms", type=_positive_int, help="streaming chunk size (default 200)")
    mlflow.set_defaults(run=run_export_mlflow)


def run_export_mlflow(args: argparse.Namespace, settings: Settings) -> int:
    """Write the MLflow pyfunc model (MLflow is imported only by this command)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from decoder_api.pyfunc import export_model

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its advice on pickling and input examples
    info = export_model(settings, args.target)
    print(f"{info.engine} model {info.name} exported to {args.target} (MLflow pyfunc)")
    return 0


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Replace this process with gunicorn: one worker, gthread, settings passed as DECODER_* env,
    with the memory allocator of ``allocator_env`` (jemalloc unless ``DECODER_ALLOCATOR`` says
    otherwise)."""
    from decoder_api.engines.models import resolve_model
    from decoder_api.sessions.registry import check_tls

    resolve_model(settings.engine, settings.model, settings.model_dir)
    check_tls(settings.redis_url, settings.redis_ssl_ca_certs)  # a certificate that does not verify
    env = dict(os.environ)
    env.update({f"DECODER_{k.upper()}": str(v) for k, v in _serve_overrides(args).items() if v is not None})
    env.update(allocator_env(settings.allocator, env))
    conf = Path(__file__).resolve().parent / "gunicorn.conf.py"
    argv = [sys.executable, "-m", "gunicorn", "--config", str(conf)]
    os.execve(sys.executable, argv, env)
    return 0


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("engine", "model", "model_dir", "host", "port", "threads")
    return {k: getattr(args, k) for k in keys}


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "threads": getattr(args, "threads", None),
        "engine": args.engine,
        "model": args.model,
        "model_dir": args.model_dir,
        "chunk_ms": getattr(args, "chunk_ms", None),
    }
    return load_settings(env, overrides)


def run_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    engine = load_engine(settings)
    console = Console()
    for path in args.files:
        audio = read_input(path, native_rate_hz(engine), args.sample_rate)
        transcript = transcribe(engine, audio, settings.chunk_ms, words=args.words, label=path.name)
        print_transcript(console, path, transcript, engine, args)
    return 0


def read_input(path: Path, rate_hz: int, raw_rate_hz: int) -> DecodedAudio:
    """Decode a file; ``.raw``/``.pcm`` files are s16le mono at ``raw_rate_hz``."""
    if path.suffix.lower() not in RAW_SUFFIXES:
        return decode_file(path, rate_hz)
    if not path.is_file():
        raise UnsupportedAudio(f"{path}: no such file")
    pcm = path.read_bytes()
    if not pcm:
        raise EmptyAudio(f"{path}: the file is empty")
    check_pcm(pcm)
    return DecodedAudio(pcm, raw_rate_hz, raw_rate_hz, 1, "pcm_s16le")


def transcribe(engine: Engine, audio: DecodedAudio, chunk_ms: int, words: bool, label: str) -> Transcript:
    options = RecognizerOptions(sample_rate_hz=audio.sample_rate_hz, words=words, partials=False)
    recognizer = engine.create(options)
    try:
        with _progress(label, len(audio.pcm), audio.duration_ms) as advance:
            return stream_pcm(recognizer, audio.pcm, chunk_ms, on_chunk=advance)
    finally:
        recognizer.close()


class _progress:
    """A rich progress bar on stderr for long files on a terminal; a no-op otherwise."""

    def __init__(self, label: str, total_bytes: int, duration_ms: int) -> None:
        console = Console(stderr=True)
        self._enabled = console.is_terminal and duration_ms >= PROGRESS_MIN_MS
        columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
        self._bar = Progress(*columns, console=console, transient=True, disable=not self._enabled)
        self._task = self._bar.add_task(label, total=total_bytes)

    def __enter__(self) -> Callable[[int, str], None]:
        self._bar.start()
        return self._advance

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def _advance(self, n_bytes: int, partial: str) -> None:
        self._bar.advance(self._task, n_bytes)


def print_transcript(
    console: Console, path: Path, transcript: Transcript, engine: Engine, args: argparse.Namespace
) -> None:
    if args.json:
        print(json.dumps(transcript_to_json(path, transcript, engine), ensure_ascii=False), flush=True)
        return
    if len(args.files) > 1:
        console.print(f"[bold]{path}[/bold]", highlight=False)
    for final in transcript.finals:
        prefix = f"[{format_ms(final.start_ms)} → {format_ms(final.end_ms)}] " if args.timestamps else ""
        print(prefix + final.text, flush=True)


def transcript_to_json(path: Path, transcript: Transcript, engine: Engine) -> dict[str, Any]:
    return {
        "file": str(path),
        "engine": engine.name,
        "model": engine.model.name,
        "duration_ms": transcript.duration_ms,
        "text": transcript.text,
        "utterances": [final_to_dict(f) for f in transcript.finals],
    }


def format_ms(ms: int) -> str:
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes:02d}:{rest / 1000:06.3f}"


def run_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from decoder_api.engines.models import list_models

    models = list_models(settings.model_dir)
    if args.json:
        print(json.dumps([_model_json(m) for m in models], ensure_ascii=False))
        return 0
    table = Table(title=f"Models (downloads go to {settings.model_dir})")
    for column in ("name", "engine", "language", "size", "source", "aliases"):
        table.add_column(column)
    for m in models:
        table.add_row(m.name, m.engine, m.language, _size(m.size_bytes), m.source, ", ".join(m.aliases))
    Console().print(table)
    return 0


def _model_json(model: Any) -> dict[str, Any]:
    return {
        "name": model.name,
        "engine": model.engine,
        "language": model.language,
        "size_bytes": model.size_bytes,
        "source": model.source,
        "aliases": list(model.aliases),
        "path": model.path,
    }


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes else "?"


def run_models_download(args: argparse.Namespace, settings: Settings) -> int:
    from decoder_api.engines.models import download_model

    progress = Console(stderr=True).is_terminal
    info = download_model(args.name, settings.model_dir, list_url=settings.model_list_url, progress=progress)
    print(f"{info.name} ({info.language}) is ready in {info.path}")
    return 0


def run_models_compile_graph(args: argparse.Namespace, settings: Settings) -> int:
    from decoder_api.engines.graphs import compile_static_graph, find_static_graph, read_manifest
    from decoder_api.engines.models import resolve_model

    info = resolve_model("vosk", settings.model, settings.model_dir)  # only Vosk models have a graph
    model_dir, graph_dir = Path(info.path), settings.vosk.graph_dir
    if not args.force and (built := find_static_graph(model_dir, info.name, graph_dir)) is not None:
        print(f"the static graph of {info.name} is built: {built}")
        return 0
    print(f"composing the static graph of {info.name} into {graph_dir} (minutes, about 3 GiB of memory)")
    built = compile_static_graph(model_dir, info.name, graph_dir, force=args.force)
    manifest = read_manifest(built)
    size = manifest["hclg_bytes"] / 2**20
    print(f"{info.name}: {built} ({size:.0f} MiB, built in {manifest['build_s']:.0f} s)")
    return 0


def configure_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.run(args, settings_from(args, dict(os.environ))))
    except DecoderError as exc:
        return fail(exc.message)
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
