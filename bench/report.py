"""Benchmark results: their shape, the machine they were measured on, their markdown/JSON/terminal forms."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from rich.console import Console
from rich.table import Table

LIBRARIES = ("vosk", "faster-whisper", "ctranslate2", "onnxruntime")
PASSES: dict[Literal["partials_on", "partials_off"], str] = {
    "partials_on": "partials on",
    "partials_off": "finals only",
}


class PassResult(TypedDict):
    """Every file decoded once with one setting of ``RecognizerOptions.partials``."""

    partials: bool
    wall_s: float
    cpu_s: float
    rtf: float  # decode wall time / audio time
    cpu_s_per_audio_s: float  # process CPU time (all threads) / audio time
    first_accept_p50_ms: float  # first 200 ms chunk of a fresh recognizer, over files
    first_accept_max_ms: float
    first_second_accept_mean_ms: float  # chunks of the first second of audio of each recognizer
    steady_accept_mean_ms: float  # every later chunk (flush excluded)
    steady_accept_p50_ms: float
    steady_accept_p95_ms: float
    steady_accept_max_ms: float
    wer: dict[str, float] | None  # "overall" and per group; None when the model's language is not the audio's


class EngineResult(TypedDict):
    engine: str
    model: str
    model_language: str
    settings: dict[str, Any]
    files: list[str]
    groups: dict[str, float]  # audio seconds per group
    audio_s: float
    load_s: float
    rss_before_load_mib: float
    rss_after_load_mib: float
    peak_rss_mib: float  # VmHWM, reset after the load: the peak while decoding
    process_first_accept_ms: float  # first chunk of the first recognizer of the process
    load_average_1min: tuple[float, float]  # before and after the measurement: other work on the machine
    partials_on: PassResult
    partials_off: PassResult


class Machine(TypedDict):
    cpu: str
    cores: int
    usable_cores: int
    python: str
    platform: str
    libraries: dict[str, str]
    date: str


class Report(TypedDict):
    quick: bool
    chunk_ms: int
    machine: Machine
    engines: dict[str, EngineResult]


Row = tuple[str, Callable[[EngineResult], str]]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def library_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> Machine:
    return Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        python=platform.python_version(),
        platform=platform.platform(),
        libraries={name: library_version(name) for name in LIBRARIES},
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def build_report(results: list[EngineResult], quick: bool, chunk_ms: int) -> Report:
    return Report(
        quick=quick,
        chunk_ms=chunk_ms,
        machine=machine_info(),
        engines={r["engine"]: r for r in results},
    )


def write_report(report: Report, out: Path) -> list[Path]:
    """``engines.json`` and ``engines.md`` in ``out`` (created when missing)."""
    return write_outputs(out, "engines", render_markdown(report), report)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def slashed(*values: float) -> str:
    return " / ".join(f"{value:.1f}" for value in values)


def summary_rows() -> list[Row]:
    rows: list[Row] = [
        ("Model", lambda r: r["model"]),
        ("Model load (s)", lambda r: f"{r['load_s']:.2f}"),
        ("RSS before load (MiB)", lambda r: f"{r['rss_before_load_mib']:.0f}"),
        ("RSS after load (MiB)", lambda r: f"{r['rss_after_load_mib']:.0f}"),
        ("Peak RSS while decoding (MiB)", lambda r: f"{r['peak_rss_mib']:.0f}"),
        ("First accept of the process (ms)", lambda r: f"{r['process_first_accept_ms']:.1f}"),
        ("Load average, 1 min (before / after)", lambda r: "{:.2f} / {:.2f}".format(*r["load_average_1min"])),
    ]
    for key, label in PASSES.items():
        rows += pass_rows(key, label)
    return rows


def pass_rows(key: Literal["partials_on", "partials_off"], label: str) -> list[Row]:
    def first(r: EngineResult) -> str:
        return slashed(r[key]["first_accept_p50_ms"], r[key]["first_accept_max_ms"])

    def steady(r: EngineResult) -> str:
        p = r[key]
        return slashed(p["steady_accept_p50_ms"], p["steady_accept_p95_ms"], p["steady_accept_max_ms"])

    return [
        (f"RTF, {label}", lambda r: f"{r[key]['rtf']:.3f}"),
        (f"CPU s per audio s, {label}", lambda r: f"{r[key]['cpu_s_per_audio_s']:.3f}"),
        (f"First accept of a fresh recognizer (ms, median / max), {label}", first),
        (
            f"Accept mean, first second of audio (ms), {label}",
            lambda r: f"{r[key]['first_second_accept_mean_ms']:.1f}",
        ),
        (
            f"Accept mean after the first second (ms), {label}",
            lambda r: f"{r[key]['steady_accept_mean_ms']:.1f}",
        ),
        (f"Accept after the first second (ms, p50 / p95 / max), {label}", steady),
        (f"WER, {label}", lambda r: percent((r[key]["wer"] or {}).get("overall"))),
    ]


def wer_rows(result: EngineResult) -> list[list[str]]:
    """Group, audio seconds, WER with partials on, WER with finals only."""
    on, off = result["partials_on"]["wer"] or {}, result["partials_off"]["wer"] or {}
    seconds = {"overall": result["audio_s"], **result["groups"]}
    return [[group, f"{seconds[group]:.1f}", percent(on[group]), percent(off.get(group))] for group in on]


def write_outputs(out: Path, name: str, markdown: str, data: Mapping[str, Any]) -> list[Path]:
    """``<name>.md`` and ``<name>.json`` in ``out`` (created when missing)."""
    out.mkdir(parents=True, exist_ok=True)
    as_json, as_markdown = out / f"{name}.json", out / f"{name}.md"
    as_json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    as_markdown.write_text(markdown, encoding="utf-8")
    return [as_markdown, as_json]


def rich_table(
    title: str, header: Sequence[str], rows: Iterable[Sequence[str]], left: Container[int] | None = None
) -> Table:
    """A terminal table; the columns in ``left`` (default: all) are left-aligned, the others right."""
    table = Table(title=title)
    for n, column in enumerate(header):
        table.add_column(column, justify="left" if left is None or n in left else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(report: Report) -> str:
    engines = list(report["engines"].values())
    machine = report["machine"]
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    first = engines[0]
    lines = [
        "# Engine baseline" + (" (quick: 3 short files)" if report["quick"] else ""),
        "",
        f"Measured with `python -m bench.engines` on {machine['date']}, in-process (no HTTP).",
        "",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['platform']}, no GPU",
        f"- **Software:** Python {machine['python']}; {libraries}",
        f"- **Audio:** {len(first['files'])} files of `data/` (English), {first['audio_s']:.1f} s in all, "
        f"fed through `stream_pcm` in {report['chunk_ms']} ms chunks with a fresh recognizer per file",
        "",
        *markdown_table(
            ["", *(r["engine"] for r in engines)],
            [[label] + [f(r) for r in engines] for label, f in summary_rows()],
        ),
    ]
    for result in engines:
        if result["partials_on"]["wer"] is not None:
            lines += ["", f"## Word error rate, {result['engine']} ({result['model']})", ""]
            lines += markdown_table(["Group", "Audio (s)", "partials on", "finals only"], wer_rows(result))
    lines += ["", "## How to read it", "", *notes(engines, report["chunk_ms"]), "", "## Engine settings", ""]
    lines += [
        f"- {r['engine']} ({r['model']}): " + ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        for r in engines
    ]
    return "\n".join(lines) + "\n"


def notes(engines: list[EngineResult], chunk_ms: int) -> list[str]:
    audio_mib = engines[0]["audio_s"] * 32000 / 2**20
    lines = [
        "- Each engine runs in a fresh process of its own, so its RSS figures are not shared with the other.",
        "- Model load is the wall time of `load_engine(settings)`; libraries are imported before it.",
        "- RTF is decode wall time over audio time (below 1 is faster than real time); CPU s per audio s "
        "counts every thread of the process. Both include recognizer creation and the final `flush()`. "
        "Other work on the machine (see the load average) slows wall time more than CPU time.",
        "- *partials on* is `RecognizerOptions(partials=True)`, what a live stream costs; *finals only* is "
        "`partials=False`, the offline cost.",
        f"- An accept is one `accept()` of a {chunk_ms} ms chunk (plus `partial()`), as `stream_pcm` feeds "
        "them. First accept of a fresh recognizer: median and maximum over files. The first second of audio "
        "is where a fresh recognizer warms up; after it, every later chunk counts (`flush()` does not). "
        "First accept of the process: the first chunk of the first recognizer after the load (a warm-up "
        "decode of the first file, not counted in the passes).",
        "- Peak RSS is VmHWM reset after the load, so it is the peak while decoding; it includes about "
        f"{audio_mib:.1f} MiB of decoded audio held in memory.",
        "- WER is corpus WER (edits over reference words) after Whisper's English normaliser.",
    ]
    for r in engines:
        if r["partials_on"]["wer"] is None:
            lines.append(
                f"- {r['engine']}: the model ({r['model']}) is {r['model_language']} and `data/` is English, "
                "so its WER would be meaningless; only its speed and memory are reported."
            )
    return lines


def print_tables(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    engines = list(report["engines"].values())
    summary = Table(title="Engine baseline" + (" (quick)" if report["quick"] else ""))
    summary.add_column("")
    for result in engines:
        summary.add_column(result["engine"], justify="right")
    for label, cell in summary_rows():
        summary.add_row(label, *(cell(r) for r in engines))
    console.print(summary)
    for result in engines:
        if result["partials_on"]["wer"] is not None:
            header = ("Group", "Audio (s)", "partials on", "finals only")
            console.print(rich_table(f"Word error rate, {result['engine']}", header, wer_rows(result), {0}))
