"""Engine baseline: model load time, memory, real-time factor, chunk latency and WER, in-process (no HTTP).

``python -m bench.engines`` measures every engine in a fresh subprocess of its own, so each RSS
figure belongs to one engine only. It then writes ``engines.md`` and ``engines.json`` to ``--out`` and
prints the table. Every file of ``data/`` goes through ``stream_pcm`` in 200 ms chunks on a fresh
recognizer, the path the server uses, once with partials on and once with finals only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.report import EngineResult, PassResult, build_report, print_tables, write_report
from decoder_api.audio import decode_file
from decoder_api.config import load_settings
from decoder_api.engines import Engine, RecognizerOptions, load_engine
from decoder_api.sessions.transcripts import stream_pcm
from devtools.evaluation import load_manifest, whole_files, word_error_rate

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "data" / "manifest.tsv"
DEFAULT_OUT = ROOT / "bench" / "results"
ENGINES = {"whisper": {"engine": "whisper", "model": "tiny.en"}, "vosk": {"engine": "vosk", "model": "ko"}}
CHUNK_MS = 200
RATE_HZ = 16000
AUDIO_LANGUAGE = "en"
QUICK_FILES = 3
WARMUP_CHUNKS = 1000 // CHUNK_MS  # the first second of audio of a fresh recognizer
# Every file of data/ falls in exactly one group, matched by file-name prefix.
GROUPS = {
    "librivox": ("librivox-",),
    "moonshine": ("beckett", "two_cities"),
    "calls": ("call",),
    "commands": ("cards", "goforward"),
}


@dataclass(frozen=True, slots=True)
class Clip:
    """One file of ``data/`` as 16 kHz PCM, with its reference transcript."""

    name: str
    group: str
    pcm: bytes
    reference: str

    @property
    def audio_s(self) -> float:
        return len(self.pcm) / 2 / RATE_HZ


@dataclass(frozen=True, slots=True)
class Decoded:
    """One file through one fresh recognizer: its text, cost, and the wall time of each ``accept``."""

    text: str
    wall_s: float
    cpu_s: float
    accept_ms: list[float]


class AcceptTimer:
    """``stream_pcm``'s ``on_chunk`` hook: milliseconds between calls, i.e. each ``accept`` + ``partial``."""

    def __init__(self) -> None:
        self.accept_ms: list[float] = []
        self._last = time.perf_counter()

    def __call__(self, n_bytes: int, partial: str) -> None:
        now = time.perf_counter()
        self.accept_ms.append((now - self._last) * 1000)
        self._last = now


def group_of(name: str) -> str:
    return next(group for group, prefixes in GROUPS.items() if name.startswith(prefixes))


def load_clips(quick: bool) -> list[Clip]:
    """Every whole file of the manifest, or only the ``QUICK_FILES`` shortest ones."""
    entries = whole_files(load_manifest(MANIFEST), AUDIO_LANGUAGE)
    if quick:
        entries = sorted(entries, key=lambda e: e.seconds)[:QUICK_FILES]
    return [
        Clip(e.path.name, group_of(e.path.name), decode_file(e.path, RATE_HZ).pcm, e.transcript)
        for e in entries
    ]


def status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Set VmHWM back to the current RSS, so the next peak is the decoding's alone."""
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def decode(engine: Engine, clip: Clip, partials: bool) -> Decoded:
    wall, cpu = time.perf_counter(), time.process_time()
    recognizer = engine.create(RecognizerOptions(sample_rate_hz=RATE_HZ, partials=partials))
    try:
        timer = AcceptTimer()
        transcript = stream_pcm(recognizer, clip.pcm, CHUNK_MS, on_chunk=timer)
    finally:
        recognizer.close()
    return Decoded(transcript.text, time.perf_counter() - wall, time.process_time() - cpu, timer.accept_ms)


def measure_pass(engine: Engine, clips: list[Clip], partials: bool) -> PassResult:
    decoded = [decode(engine, clip, partials) for clip in clips]
    audio_s = sum(clip.audio_s for clip in clips)
    wall_s, cpu_s = sum(d.wall_s for d in decoded), sum(d.cpu_s for d in decoded)
    first = [d.accept_ms[0] for d in decoded]
    warmup = [ms for d in decoded for ms in d.accept_ms[:WARMUP_CHUNKS]]
    steady = [ms for d in decoded for ms in d.accept_ms[WARMUP_CHUNKS:]]
    english = engine.model.language.split("-")[0] == AUDIO_LANGUAGE
    wer = wer_by_group(clips, [d.text for d in decoded]) if english else None
    return PassResult(
        partials=partials,
        wall_s=wall_s,
        cpu_s=cpu_s,
        rtf=wall_s / audio_s,
        cpu_s_per_audio_s=cpu_s / audio_s,
        first_accept_p50_ms=statistics.median(first),
        first_accept_max_ms=max(first),
        first_second_accept_mean_ms=statistics.fmean(warmup),
        steady_accept_mean_ms=statistics.fmean(steady),
        steady_accept_p50_ms=statistics.median(steady),
        steady_accept_p95_ms=statistics.quantiles(steady, n=20)[18],
        steady_accept_max_ms=max(steady),
        wer=wer,
    )


def wer_by_group(clips: list[Clip], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER over all files, then over each group present."""
    wer = {"overall": word_error_rate([c.reference for c in clips], hypotheses, AUDIO_LANGUAGE)}
    for group in GROUPS:
        pairs = [(c.reference, h) for c, h in zip(clips, hypotheses, strict=True) if c.group == group]
        if pairs:
            refs, hyps = zip(*pairs, strict=True)
            wer[group] = word_error_rate(list(refs), list(hyps), AUDIO_LANGUAGE)
    return wer


def measure_engine(name: str, quick: bool) -> EngineResult:
    """Load one engine in this process and measure it; run in a fresh process for clean RSS figures."""
    settings = load_settings(os.environ, ENGINES[name])
    clips = load_clips(quick)
    load_before = os.getloadavg()[0]
    rss_before = status_mib("VmRSS")
    started = time.perf_counter()
    engine = load_engine(settings)
    load_s = time.perf_counter() - started
    rss_after = status_mib("VmRSS")
    reset_peak_rss()
    try:
        process_first_ms = decode(engine, clips[0], partials=True).accept_ms[0]  # also warms the process
        partials_on = measure_pass(engine, clips, partials=True)
        partials_off = measure_pass(engine, clips, partials=False)
        peak = status_mib("VmHWM")
    finally:
        engine.close()
    return EngineResult(
        engine=engine.name,
        model=engine.model.name,
        model_language=engine.model.language,
        settings=dataclasses.asdict(getattr(settings, engine.name)),
        files=[clip.name for clip in clips],
        groups={
            g: sum(c.audio_s for c in clips if c.group == g)
            for g in GROUPS
            if any(c.group == g for c in clips)
        },
        audio_s=sum(clip.audio_s for clip in clips),
        load_s=load_s,
        rss_before_load_mib=rss_before,
        rss_after_load_mib=rss_after,
        peak_rss_mib=peak,
        process_first_accept_ms=process_first_ms,
        load_average_1min=(load_before, os.getloadavg()[0]),
        partials_on=partials_on,
        partials_off=partials_off,
    )


def run_in_subprocess(name: str, quick: bool) -> EngineResult:
    """``measure_engine`` in a fresh interpreter; its JSON is the last line of its stdout."""
    command = [sys.executable, "-m", "bench.engines", "--engine", name, "--json"]
    command += ["--quick"] if quick else []
    logger.info("measuring engine=%s", name)
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    result: EngineResult = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__)
    parser.add_argument("--engine", choices=tuple(ENGINES), help="measure only this engine")
    parser.add_argument("--json", action="store_true", help="measure --engine in this process; print JSON")
    parser.add_argument("--quick", action="store_true", help=f"only the {QUICK_FILES} shortest files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    if args.json:
        if args.engine is None:
            build_parser().error("--json needs --engine")
        print(json.dumps(measure_engine(args.engine, args.quick)), flush=True)
        return 0
    names = [args.engine] if args.engine else list(ENGINES)
    try:
        results = [run_in_subprocess(name, args.quick) for name in names]
    except subprocess.CalledProcessError as err:
        print(f"error: {err.cmd[4]} benchmark failed (exit {err.returncode})", file=sys.stderr)
        return 1
    report = build_report(results, quick=args.quick, chunk_ms=CHUNK_MS)
    for path in write_report(report, args.out):
        logger.info("wrote %s", path)
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
