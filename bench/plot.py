"""One picture of every benchmark result: ``python -m bench.plot`` writes ``bench.png``.

Reads every result file (``*.json``, see ``bench.results``) in the results directory and draws one
panel per benchmark: each figure with a value as a bar beside a bar for its baseline. Figures have
different units, so both bars are drawn relative to the baseline (baseline = 1; a logarithmic axis
when they spread widely) and labelled with the measured numbers.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench.results
from bench.results import Figure, Option, load_results, number

IMAGE = "bench.png"
VALUE_COLOUR, BASELINE_COLOUR, MISSED_COLOUR = "#1f77b4", "#b0b0b0", "#d62728"
MARKS = {None: "", True: "  ✓ ", False: "  ✗ "}  # after a value with a target: met or missed
ROW_INCHES = 0.62
LOG_SPREAD = 20.0  # a log axis when the largest relative bar is this many times the smallest

Panel = tuple[str, list[Figure]]


def panels(results: Path) -> list[Panel]:
    return [
        (res["title"] + (" (quick)" if res["quick"] else ""), figures)
        for res in load_results(results)
        if (figures := [f for f in res["figures"] if isinstance(f.get("value"), int | float)])
    ]


def relative(f: Figure) -> tuple[float, float]:
    """(value bar, baseline bar) in units of the baseline; both raw when there is no usable baseline."""
    value, baseline = float(f["value"] or 0.0), f.get("baseline")
    if baseline is None or baseline == 0 or not math.isfinite(baseline):
        return value, float(baseline or 0.0)
    return value / baseline, 1.0


def draw(panel_list: Sequence[Panel], image: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(2, len(figures)) * ROW_INCHES + 0.9 for _, figures in panel_list]
    fig, axes = plt.subplots(
        len(panel_list), 1, figsize=(12, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for axis, (title, figures) in zip(axes[:, 0], panel_list, strict=True):
        draw_panel(axis, title, figures)
    fig.tight_layout()
    image.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(image, dpi=110)
    plt.close(fig)
    return image


def draw_panel(axis: Any, title: str, figures: Sequence[Figure]) -> None:
    bars = [relative(f) for f in figures]
    positive = [b for pair in bars for b in pair if b > 0]
    log = bool(positive) and max(positive) / min(positive) > LOG_SPREAD
    floor = min(positive) / 2 if log else 0.0
    rows, height = range(len(figures)), 0.38
    values, baselines = [max(v, floor) for v, _ in bars], [max(b, floor) for _, b in bars]
    colours = [MISSED_COLOUR if f.get("met") is False else VALUE_COLOUR for f in figures]
    axis.barh([r - height / 2 for r in rows], values, height, color=colours, label="measured")
    axis.barh([r + height / 2 for r in rows], baselines, height, color=BASELINE_COLOUR, label="baseline")
    if log:
        axis.set_xscale("log")
    for r, f, v, b in zip(rows, figures, values, baselines, strict=True):
        mark = MARKS[f.get("met")]
        measured = number(f["value"], f["unit"]) + (mark + f["target"] if mark else "")
        baseline = f"{number(f.get('baseline'), f['unit'])}  ({f['baseline_name']})"
        axis.text(v, r - height / 2, " " + measured, va="center", fontsize=8)
        axis.text(b, r + height / 2, " " + baseline, va="center", fontsize=8, color="#555555")
    axis.set_yticks(list(rows), [f["name"] for f in figures], fontsize=8)
    axis.invert_yaxis()
    axis.set_title(title, fontsize=10, loc="left")
    axis.set_xlabel("relative to the baseline (baseline = 1)" + (", log scale" if log else ""), fontsize=8)
    axis.set_xlim(right=max([*values, *baselines, 1.0]) * (8 if log else 1.9))
    axis.legend(loc="lower right", fontsize=7)


def run(args: argparse.Namespace) -> int:
    found = panels(args.results or args.out)
    if not found:
        print(f"error: no benchmark results in {args.results or args.out}", file=sys.stderr)
        return 1
    image = draw(found, args.out / IMAGE)
    print(f"wrote {image} ({len(found)} panels)")
    return 0


OPTIONS: list[Option] = [("--results", {"type": Path, "help": "where the *.json are (default: --out)"})]
main = functools.partial(bench.results.main, "plot", __doc__, OPTIONS, run)


if __name__ == "__main__":
    sys.exit(main())
