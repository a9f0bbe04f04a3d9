"""Engine baseline: model load time, memory, real-time factor, chunk latency and WER, in-process (no HTTP).

``python -m bench.engines`` measures every engine in a fresh subprocess of its own (``--json``), every
file of ``data/`` through ``stream_pcm`` with partials on and with finals only; how it measures is in
``bench/METHOD.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import Column, Option, Result, figure, main, percent, result, run_json, table
from decoder_api.audio import decode_file
from decoder_api.config import load_settings
from decoder_api.engines import Engine, RecognizerOptions, load_engine
from decoder_api.sessions.transcripts import stream_pcm
from devtools.clients import CHUNK_MS, RATE_HZ
from devtools.evaluation import DEFAULT_MANIFEST, load_manifest, whole_files, word_error_rate
from devtools.processes import status_mib

logger = logging.getLogger(__name__)

ENGINES = {"whisper": {"engine": "whisper", "model": "tiny.en"}, "vosk": {"engine": "vosk", "model": "ko"}}
AUDIO_LANGUAGE = "en"
QUICK_FILES = 2
QUICK_ENGINES = ("whisper",)  # the engine that has a WER on data/
WARMUP_CHUNKS = 1000 // CHUNK_MS  # the first second of audio of a fresh recognizer
PASSES = {"partials_on": "partials on", "partials_off": "finals only"}
# Every file of data/ falls in exactly one group, matched by file-name prefix.
GROUPS = {
    "librivox": ("librivox-",),
    "moonshine": ("beckett", "two_cities"),
    "calls": ("call",),
    "commands": ("cards", "goforward"),
}


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    group: str
    pcm: bytes
    reference: str

    @property
    def audio_s(self) -> float:
        return len(self.pcm) / 2 / RATE_HZ


def load_clips(quick: bool) -> list[Clip]:
    """Every whole file of the manifest, or only the ``QUICK_FILES`` shortest ones."""
    entries = whole_files(load_manifest(DEFAULT_MANIFEST), AUDIO_LANGUAGE)
    if quick:
        entries = sorted(entries, key=lambda e: e.seconds)[:QUICK_FILES]
    group = {e.path.name: next(g for g, p in GROUPS.items() if e.path.name.startswith(p)) for e in entries}
    return [
        Clip(e.path.name, group[e.path.name], decode_file(e.path, RATE_HZ).pcm, e.transcript) for e in entries
    ]


def decode(engine: Engine, clip: Clip, partials: bool) -> tuple[str, float, float, list[float]]:
    """One file through a fresh recognizer: (text, wall s, CPU s, ms of each ``accept`` + ``partial``)."""
    wall, cpu = time.perf_counter(), time.process_time()
    ends = [time.perf_counter()]  # then the end of each chunk's ``accept`` + ``partial``
    options = RecognizerOptions(sample_rate_hz=RATE_HZ, partials=partials)
    with contextlib.closing(engine.create(options)) as recognizer:
        text = stream_pcm(recognizer, clip.pcm, CHUNK_MS, lambda *_: ends.append(time.perf_counter())).text
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return text, wall, cpu, [(end - start) * 1000 for start, end in itertools.pairwise(ends)]


def measure_pass(engine: Engine, clips: list[Clip], partials: bool) -> dict[str, Any]:
    decoded = [decode(engine, clip, partials) for clip in clips]
    audio_s = sum(clip.audio_s for clip in clips)
    wall_s, cpu_s = sum(d[1] for d in decoded), sum(d[2] for d in decoded)
    first = [d[3][0] for d in decoded]
    warmup = [ms for d in decoded for ms in d[3][:WARMUP_CHUNKS]]
    steady = [ms for d in decoded for ms in d[3][WARMUP_CHUNKS:]]
    english = engine.model.language.split("-")[0] == AUDIO_LANGUAGE
    return {
        "partials": partials,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "rtf": wall_s / audio_s,  # decode wall time / audio time
        "cpu_s_per_audio_s": cpu_s / audio_s,  # process CPU time (all threads) / audio time
        "first_accept_p50_ms": statistics.median(first),
        "first_accept_max_ms": max(first),
        "first_second_accept_mean_ms": statistics.fmean(warmup),
        "steady_accept_mean_ms": statistics.fmean(steady),
        "steady_accept_p50_ms": statistics.median(steady),
        "steady_accept_p95_ms": statistics.quantiles(steady, n=20)[18],
        "steady_accept_max_ms": max(steady),
        "wer": wer_by_group(clips, [d[0] for d in decoded]) if english else None,
    }


def wer_by_group(clips: list[Clip], hypotheses: list[str]) -> dict[str, float]:
    wer = {"overall": word_error_rate([c.reference for c in clips], hypotheses, AUDIO_LANGUAGE)}
    for group in GROUPS:
        pairs = [(c.reference, h) for c, h in zip(clips, hypotheses, strict=True) if c.group == group]
        if pairs:
            wer[group] = word_error_rate([r for r, _ in pairs], [h for _, h in pairs], AUDIO_LANGUAGE)
    return wer


def measure_engine(name: str, quick: bool) -> dict[str, Any]:
    settings = load_settings(os.environ, ENGINES[name])
    clips = load_clips(quick)
    load_before = os.getloadavg()[0]
    rss_before = status_mib(os.getpid(), "VmRSS")
    started = time.perf_counter()
    engine = load_engine(settings)
    load_s = time.perf_counter() - started
    rss_after = status_mib(os.getpid(), "VmRSS")
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")  # VmHWM from here: the decoding's peak
    with contextlib.closing(engine):
        process_first_ms = decode(engine, clips[0], partials=True)[3][0]  # also warms the process
        partials_on = measure_pass(engine, clips, partials=True)
        partials_off = measure_pass(engine, clips, partials=False)
        peak = status_mib(os.getpid(), "VmHWM")
    groups = {g: sum(c.audio_s for c in clips if c.group == g) for g in GROUPS}
    return {
        "engine": engine.name,
        "model": engine.model.name,
        "model_language": engine.model.language,
        "settings": dataclasses.asdict(getattr(settings, engine.name)),
        "files": [clip.name for clip in clips],
        "groups": {g: seconds for g, seconds in groups.items() if seconds},  # audio seconds per group
        "audio_s": sum(clip.audio_s for clip in clips),
        "load_s": load_s,
        "rss_before_load_mib": rss_before,
        "rss_after_load_mib": rss_after,
        "peak_rss_mib": peak,  # VmHWM, reset after the load: the peak while decoding
        "process_first_accept_ms": process_first_ms,  # first chunk of the first recognizer of the process
        "load_average_1min": (load_before, os.getloadavg()[0]),
        "partials_on": partials_on,
        "partials_off": partials_off,
    }


def slashed(prefix: str, *quantiles: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda p: " / ".join(f"{p[f'{prefix}_{q}_ms']:.1f}" for q in quantiles)


ENGINE_ROWS: list[Column] = [
    ("Model", lambda r: r["model"]),
    ("Model load (s)", lambda r: f"{r['load_s']:.2f}"),
    ("RSS before load (MiB)", lambda r: f"{r['rss_before_load_mib']:.0f}"),
    ("RSS after load (MiB)", lambda r: f"{r['rss_after_load_mib']:.0f}"),
    ("Peak RSS while decoding (MiB)", lambda r: f"{r['peak_rss_mib']:.0f}"),
    ("First accept of the process (ms)", lambda r: f"{r['process_first_accept_ms']:.1f}"),
    ("Load average, 1 min (before / after)", lambda r: "{:.2f} / {:.2f}".format(*r["load_average_1min"])),
]
PASS_ROWS: list[Column] = [
    ("RTF", lambda p: f"{p['rtf']:.3f}"),
    ("CPU s per audio s", lambda p: f"{p['cpu_s_per_audio_s']:.3f}"),
    ("First accept of a fresh recognizer (ms, median / max)", slashed("first_accept", "p50", "max")),
    ("Accept mean, first second of audio (ms)", lambda p: f"{p['first_second_accept_mean_ms']:.1f}"),
    ("Accept mean after the first second (ms)", lambda p: f"{p['steady_accept_mean_ms']:.1f}"),
    ("Accept after the first second (ms, p50 / p95 / max)", slashed("steady_accept", "p50", "p95", "max")),
    ("WER", lambda p: percent((p["wer"] or {}).get("overall"))),
]


def report(engines: Mapping[str, Mapping[str, Any]], quick: bool) -> Result:
    figures, notes = [], []
    rows = [[label, *(cell(r) for r in engines.values())] for label, cell in ENGINE_ROWS]
    for key, name in PASSES.items():
        rows += [[f"{label}, {name}", *(cell(r[key]) for r in engines.values())] for label, cell in PASS_ROWS]
    tables = [table("Engines", ["", *engines], rows)]
    for name, r in engines.items():
        on, off = r["partials_on"], r["partials_off"]
        for key, label in (("rtf", "RTF"), ("cpu_s_per_audio_s", "CPU s per audio s")):
            figures.append(figure(f"{label} {name}, streaming", "", on[key], off[key], "finals only"))
        if on["wer"] is None:
            notes.append(
                f"- {name}: the model ({r['model']}) is {r['model_language']} and `data/` is English, so its "
                "WER would be meaningless; only its speed and memory are reported."
            )
        else:
            seconds = {"overall": r["audio_s"], **r["groups"]}
            wer_on, wer_off = on["wer"], off["wer"] or {}
            rows = [[g, f"{seconds[g]:.1f}", percent(wer_on[g]), percent(wer_off.get(g))] for g in wer_on]
            header = ["Group", "Audio (s)", *PASSES.values()]
            tables.append(table(f"Word error rate, {name} ({r['model']})", header, rows))
        used = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        notes.append(f"- {name} ({r['model']}) settings: {used}")
    first = next(iter(engines.values()))
    settings = {"chunk_ms": CHUNK_MS, "files": len(first["files"]), "audio_s": round(first["audio_s"], 1)}
    settings["audio_mib"] = round(first["audio_s"] * 32000 / 2**20, 1)
    title = "Engine baseline" + (f" ({QUICK_FILES} short files)" if quick else "")
    return result("engines", title, quick, settings, figures, {"engines": dict(engines)}, tables, notes)


def run(args: argparse.Namespace) -> Result | int:
    if args.json:
        print(json.dumps(measure_engine(args.engine, args.quick), default=str))  # paths as text
        return 0
    names = [args.engine] if args.engine else QUICK_ENGINES if args.quick else list(ENGINES)
    engines = {}
    for name in names:
        logger.info("measuring engine=%s", name)
        engines[name] = run_json("bench.engines", "--engine", name, "--json", *(["--quick"] * args.quick))
    return report(engines, args.quick)


OPTIONS: list[Option] = [
    ("--engine", {"choices": tuple(ENGINES), "help": "measure only this engine"}),
    ("--json", {"action": "store_true", "help": "measure --engine in this process; print JSON"}),
]

if __name__ == "__main__":
    sys.exit(main("engines", __doc__, OPTIONS, run))
