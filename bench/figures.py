"""Headline figures of a benchmark, each beside its baseline, and their JSON/markdown/terminal forms.

Every benchmark of this package except ``bench.engines`` (whose report predates it) writes
``<name>.json`` with the same top level::

    {"benchmark": name, "title": ..., "quick": bool, "machine": {...}, "settings": {...},
     "figures": [Figure, ...], "details": {...}}

and ``<name>.md`` with the figures as a table, followed by the benchmark's own notes.
``bench.plot`` draws the ``figures`` of every result file it finds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from rich.console import Console

from bench.report import Machine, machine_info, rich_table, write_outputs

Better = Literal["lower", "higher"]


class Figure(TypedDict):
    """One measured value beside the baseline it should be read against (measured in the same run)."""

    name: str
    unit: str  # "ms", "s", "events/s", "%", "words", ...
    value: float | None  # None: could not be measured (see the notes)
    baseline: float | None
    baseline_name: str  # what the baseline is
    ratio: float | None  # value / baseline
    better: Better  # which direction is an improvement
    target: str  # e.g. "ratio >= 0.8"; "" when there is none
    met: bool | None  # whether the target is met; None without a target or a value


class Result(TypedDict):
    benchmark: str
    title: str
    quick: bool
    machine: Machine
    settings: dict[str, Any]
    figures: list[Figure]
    details: dict[str, Any]


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
    usable = value is not None and baseline is not None and baseline != 0 and math.isfinite(baseline)
    ratio = value / baseline if usable and value is not None and baseline is not None else None
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


def build_result(
    benchmark: str,
    title: str,
    quick: bool,
    settings: dict[str, Any],
    figures: list[Figure],
    details: dict[str, Any],
) -> Result:
    return Result(
        benchmark=benchmark,
        title=title,
        quick=quick,
        machine=machine_info(),
        settings=settings,
        figures=figures,
        details=details,
    )


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value:.1f} %"
    magnitude = abs(value)
    if float(value).is_integer() and magnitude < 1e6:
        return f"{int(value)}" + (f" {unit}" if unit else "")
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    return f"{value:.{digits}f}" + (f" {unit}" if unit else "")


def ratio_text(f: Figure) -> str:
    return "n/a" if f.get("ratio") is None else f"{f['ratio']:.2f}"


def target_text(f: Figure) -> str:
    if not f["target"]:
        return ""
    return f"{f['target']} ({'met' if f['met'] else 'missed' if f['met'] is False else 'n/a'})"


def figure_rows(figures: Sequence[Figure]) -> list[list[str]]:
    return [
        [
            f["name"],
            number(f["value"], f["unit"]),
            f"{number(f['baseline'], f['unit'])} ({f['baseline_name']})",
            ratio_text(f),
            target_text(f),
        ]
        for f in figures
    ]


HEADER = ["Figure", "Value", "Baseline", "Ratio", "Target"]


def render_markdown(result: Result, intro: Sequence[str], notes: Sequence[str]) -> str:
    machine = result["machine"]
    lines = [
        f"# {result['title']}" + (" (quick)" if result["quick"] else ""),
        "",
        *intro,
        "",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['platform']}, Python {machine['python']}; measured {machine['date']}",
        "- **Settings:** " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|---:|---:|---:|---|",
        *("| " + " | ".join(row) + " |" for row in figure_rows(result["figures"])),
    ]
    if notes:
        lines += ["", "## How to read it", "", *notes]
    return "\n".join(lines) + "\n"


def write_result(result: Result, out: Path, intro: Sequence[str], notes: Sequence[str]) -> list[Path]:
    """``<benchmark>.json`` and ``<benchmark>.md`` in ``out`` (created when missing)."""
    return write_outputs(out, result["benchmark"], render_markdown(result, intro, notes), result)


def print_figures(result: Result, console: Console | None = None) -> None:
    title = result["title"] + (" (quick)" if result["quick"] else "")
    (console or Console()).print(rich_table(title, HEADER, figure_rows(result["figures"]), {0, 4}))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation; ``values`` need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load_result(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
