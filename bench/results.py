"""The one results model and writer of every benchmark: figures beside their baselines, as JSON and Markdown.

Every benchmark writes ``<name>.json`` (a ``Result``) and ``<name>.md`` rendered from it alone: the
figures, each beside its baseline measured in the same run, then its tables, then how to read them
(its section of ``bench/METHOD.md`` with ``$setting`` replaced, and the run's own notes).
``bench.plot`` and ``bench.summary`` read the figures of every ``*.json``. ``main`` is the command
line every benchmark shares.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import string
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
METHOD = Path(__file__).resolve().parent / "METHOD.md"
LIBRARIES = ("vosk", "faster-whisper", "ctranslate2", "onnxruntime")
FIGURE_HEADER = ["Figure", "Value", "Baseline (same run)", "Ratio", "Target"]

Better = Literal["lower", "higher"]


class Figure(TypedDict):
    """One measured value beside the baseline it is read against (measured in the same run)."""

    name: str
    unit: str  # "ms", "s", "events/s", "%", "words", ...
    value: float | None  # None: could not be measured (see the notes)
    baseline: float | None
    baseline_name: str  # what the baseline is
    ratio: float | None  # value / baseline
    better: Better  # which direction is an improvement
    target: str  # e.g. "ratio >= 0.8"; "" when there is none
    met: bool | None  # whether the target is met; None without a target or a value


class Table(TypedDict):
    title: str
    header: list[str]
    rows: list[list[str]]


class Result(TypedDict):
    benchmark: str
    title: str
    quick: bool
    machine: dict[str, Any]
    settings: dict[str, Any]
    figures: list[Figure]
    tables: list[Table]
    notes: list[str]  # the run's own notes (Markdown list items); the method is in METHOD.md
    details: dict[str, Any]  # every measurement the figures and tables come from


def figure(
    name: str,
    unit: str,
    value: float | None,
    baseline: float | None,
    baseline_name: str,
    better: Better = "lower",
    target: str = "",
    met: bool | None = None,
) -> Figure:
    ratio = value / baseline if value is not None and baseline and math.isfinite(baseline) else None
    return Figure(
        name=name,
        unit=unit,
        value=value,
        baseline=baseline,
        baseline_name=baseline_name,
        ratio=ratio,
        better=better,
        target=target,
        met=met,
    )


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    return Table(title=title, header=list(header), rows=[list(row) for row in rows])


Column = tuple[str, Callable[[Any], str]]  # a header, and how an item's cell is written


def column_table(title: str, columns: Sequence[Column], items: Iterable[Any]) -> Table:
    return table(title, [header for header, _ in columns], [[cell(i) for _, cell in columns] for i in items])


def machine_info(load_before: float | None = None) -> dict[str, Any]:
    names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(encoding="utf-8"), re.M)
    load = os.getloadavg()[0]
    return {
        "cpu": names[0].strip() if names else platform.processor() or "unknown",
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: library_version(name) for name in LIBRARIES},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_1min": [load if load_before is None else load_before, load],
    }


def library_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def result(
    benchmark: str,
    title: str,
    quick: bool,
    settings: Mapping[str, Any],
    figures: Sequence[Figure],
    details: Mapping[str, Any],
    tables: Sequence[Table] = (),
    notes: Sequence[str] = (),
) -> Result:
    return Result(
        benchmark=benchmark,
        title=title,
        quick=quick,
        machine=machine_info(),
        settings=dict(settings),
        figures=list(figures),
        tables=list(tables),
        notes=list(notes),
        details=dict(details),
    )


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value:.1f} %"
    magnitude, whole = abs(value), float(value).is_integer()
    digits = 0 if whole or magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    return f"{value:.{digits}f}" + (f" {unit}" if unit else "")


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f} %"


def figure_cells(f: Figure) -> list[str]:
    """Name, value, baseline (with what it is) and ratio: the cells every table of figures starts with."""
    baseline = f"{number(f['baseline'], f['unit'])} ({f['baseline_name']})"
    ratio = "n/a" if f.get("ratio") is None else f"{f['ratio']:.2f}"
    return [f["name"], number(f["value"], f["unit"]), baseline, ratio]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def load_text(load: Any) -> str:
    """The 1-minute load average a result recorded: before → after, or a single one at the end."""
    if isinstance(load, list | tuple) and len(load) == 2:
        return f"load average {load[0]:.2f} → {load[1]:.2f}"
    return f"load average {load:.2f} at the end" if isinstance(load, int | float) else ""


def machine_line(machine: Mapping[str, Any]) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    load = load_text(machine.get("load_average_1min"))
    return (
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['platform']}, Python {machine['python']}; {libraries}; measured {machine['date']}"
        + (f"; {load}" if load else "")
    )


def method(benchmark: str, settings: Mapping[str, Any]) -> list[str]:
    text = METHOD.read_text(encoding="utf-8") if METHOD.exists() else ""
    found = re.search(rf"^## {re.escape(benchmark)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    values = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in settings.items()}
    return string.Template(found[1].strip()).safe_substitute(values).splitlines() if found else []


def render_markdown(res: Result) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in res["settings"].items())
    lines = [f"# {res['title']}" + (" (quick)" if res["quick"] else ""), ""]
    lines += [f"Measured with `python -m bench.{res['benchmark']}`.", "", machine_line(res["machine"])]
    met = {True: "met", False: "missed", None: "n/a"}
    rows = [
        [*figure_cells(f), f"{f['target']} ({met[f['met']]})" if f["target"] else ""] for f in res["figures"]
    ]
    lines += [f"- **Settings:** {settings}", "", *markdown_table(FIGURE_HEADER, rows)]
    for t in res["tables"]:
        lines += ["", f"## {t['title']}", "", *markdown_table(t["header"], t["rows"])]
    notes = method(res["benchmark"], res["settings"]) + res["notes"]
    if notes:
        lines += ["", "## How to read it", "", *notes]
    return "\n".join(lines) + "\n"


def write(res: Result, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    as_json, as_markdown = out / f"{res['benchmark']}.json", out / f"{res['benchmark']}.md"
    as_json.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    as_markdown.write_text(render_markdown(res), encoding="utf-8")
    return [as_markdown, as_json]


def load_results(directory: Path) -> list[Result]:
    """Every result file of ``directory`` with figures, by file name; others are left out, logged."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("skipped %s: %s", path.name, exc)
            continue
        if isinstance(data, dict) and isinstance(data.get("figures"), list) and "benchmark" in data:
            found.append(cast(Result, data))
        else:
            logger.warning("skipped %s: not a benchmark result", path.name)
    return found


Option = tuple[str, dict[str, Any]]  # a flag and its ``add_argument`` keywords
SERVICE_ENV: Option = ("--service-env", {"nargs": "*", "default": [], "metavar": "KEY=VALUE"})


def env_items(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` items as a mapping (items without ``=`` are left out)."""
    return dict(item.split("=", 1) for item in items if "=" in item)


def main(
    benchmark: str,
    doc: str,
    options: Sequence[Option],
    measure: Callable[[argparse.Namespace], Result | int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``options`` beside ``--quick`` and ``--out``, measure, then write and show the result
    with the machine and its load before and after; ``measure`` returns an exit status instead of a
    result when it has nothing to publish."""
    prog = "python -m bench" + ("" if benchmark == "bench" else f".{benchmark}")  # bench: every benchmark
    cli = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    cli.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    cli.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    for flag, keywords in options:
        cli.add_argument(flag, **keywords)
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("bench", "__main__"):  # a benchmark runs as ``python -m bench.<name>``
        logging.getLogger(name).setLevel(logging.INFO)
    load_before = os.getloadavg()[0]
    res = measure(args)
    if isinstance(res, int):
        return res
    res["machine"] = machine_info(load_before)
    paths = write(res, args.out)
    print(paths[0].read_text(encoding="utf-8"))
    logger.info("wrote %s", ", ".join(map(str, paths)))
    return 0


def run_json(module: str, *argv: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``python -m <module> <argv>`` in a fresh interpreter (this environment plus ``env``); the JSON
    object it printed on its last line of output."""
    command, environ = [sys.executable, "-m", module, *argv], {**os.environ, **(env or {})}
    done = subprocess.run(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation; ``values`` need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values_s: Sequence[float]) -> dict[str, float]:
    """Count and p50 / p95 / max in milliseconds (zeros when there are no values)."""
    if not values_s:
        return {"count": 0, "p50_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0}
    ms = [v * 1000 for v in values_s]
    return {"count": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "max_ms": max(ms)}
