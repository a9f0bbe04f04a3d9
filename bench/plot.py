"""One picture of every benchmark result: ``python -m bench.plot`` writes ``bench.png``.

Reads every ``*.json`` in the results directory and draws one panel per benchmark: each of its
figures as a bar beside a bar for its baseline. Figures have different units, so both bars are
drawn relative to the baseline (baseline = 1; a logarithmic axis when they spread widely) and
labelled with the measured numbers. Result files with ``figures`` (``bench.figures``) are drawn as
they are; ``engines.json`` is drawn as its real-time factors and CPU cost, streaming beside
offline; in any other result, every object with a numeric ``value`` and ``baseline`` is a figure.
A file that is missing, cannot be read or holds no such figure is left out, with a line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.figures import Figure, figure, number

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
IMAGE = "bench.png"
VALUE_COLOUR, BASELINE_COLOUR = "#1f77b4", "#b0b0b0"
MISSED_COLOUR = "#d62728"
ROW_INCHES = 0.62
LOG_SPREAD = 20.0  # a log axis when the largest relative bar is this many times the smallest


Panel = tuple[str, list[Figure]]


def engines_figures(report: Mapping[str, Any]) -> list[Figure]:
    """The engine baseline's cost figures: streaming (partials on) beside offline (finals only)."""
    figures = []
    for name, result in report["engines"].items():
        on, off = result["partials_on"], result["partials_off"]
        figures += [
            figure(f"RTF {name}, streaming", "", on["rtf"], off["rtf"], "finals only"),
            figure(
                f"CPU s per audio s {name}, streaming",
                "",
                on["cpu_s_per_audio_s"],
                off["cpu_s_per_audio_s"],
                "finals only",
            ),
        ]
    return figures


def compared_figures(data: Any, context: tuple[str, ...] = ()) -> list[Figure]:
    """Figures anywhere in a result of another shape: objects with a numeric ``value`` and
    ``baseline`` (named by ``name`` or ``figure``, ``baseline_name`` or ``baseline_label``)."""
    found: list[Figure] = []
    if isinstance(data, dict):
        value, baseline = data.get("value"), data.get("baseline")
        if (
            isinstance(value, int | float)
            and isinstance(baseline, int | float)
            and _number(value)
            and _number(baseline)
        ):
            name = str(data.get("name") or data.get("figure") or "/".join(context) or "figure")
            where = [str(data[k]) for k in ("engine", "protocol") if isinstance(data.get(k), str)]
            met = data.get("met", data.get("meets_target"))
            found.append(
                figure(
                    ", ".join([name, *where]),
                    str(data.get("unit", "")),
                    float(value),
                    float(baseline),
                    str(data.get("baseline_name") or data.get("baseline_label") or "baseline"),
                    target=str(data.get("target") or ""),
                    met=met if isinstance(met, bool) else None,
                )
            )
            return found
        for key, item in data.items():
            found += compared_figures(item, (*context, str(key)))
    elif isinstance(data, list):
        for item in data:
            found += compared_figures(item, context)
    return found


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def panel_of(path: Path) -> Panel | None:
    """The panel of one result file, or None when it has nothing this module can draw."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("skipped %s: %s", path.name, exc)
        return None
    if not isinstance(data, dict):
        logger.warning("skipped %s: not a result object", path.name)
        return None
    quick = " (quick)" if data.get("quick") else ""
    try:
        if isinstance(data.get("figures"), list):
            figures = [f for f in data["figures"] if _drawable(f)]
            title = str(data.get("title") or data.get("benchmark") or path.stem)
        elif path.stem == "engines" and isinstance(data.get("engines"), dict):
            figures, title = engines_figures(data), "Engine baseline"
        else:
            figures = compared_figures(data)
            title = str(data.get("title") or data.get("benchmark") or path.stem)
    except (KeyError, TypeError) as exc:
        logger.warning("skipped %s: unexpected shape (%s)", path.name, exc)
        return None
    if not figures:
        logger.warning("skipped %s: no figure beside a baseline", path.name)
        return None
    return title + quick, figures


def _drawable(f: Any) -> bool:
    return isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("value"), int | float)


def panels(results: Path) -> list[Panel]:
    found = [panel_of(path) for path in sorted(results.glob("*.json"))]
    return [p for p in found if p is not None]


def relative(f: Figure) -> tuple[float, float]:
    """(value bar, baseline bar) in units of the baseline; both raw when there is no usable baseline."""
    value, baseline = float(f["value"] or 0.0), f.get("baseline")
    if baseline is None or baseline == 0 or not math.isfinite(baseline):
        return value, float(baseline or 0.0)
    return value / baseline, 1.0


def label(f: Figure, which: str) -> str:
    unit = f.get("unit", "")
    if which == "value":
        met = f.get("met")
        mark = "" if met is None else ("  ✓ " if met else "  ✗ ") + f.get("target", "")
        return number(f["value"], unit) + mark
    return f"{number(f.get('baseline'), unit)}  ({f.get('baseline_name', 'baseline')})"


def draw(panel_list: Sequence[Panel], image: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(2, len(figures)) * ROW_INCHES + 0.9 for _, figures in panel_list]
    fig, axes = plt.subplots(
        len(panel_list),
        1,
        figsize=(12, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
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
    rows = range(len(figures))
    height = 0.38
    values = [max(v, floor) for v, _ in bars]
    baselines = [max(b, floor) for _, b in bars]
    colours = [MISSED_COLOUR if f.get("met") is False else VALUE_COLOUR for f in figures]
    axis.barh([r - height / 2 for r in rows], values, height, color=colours, label="measured")
    axis.barh([r + height / 2 for r in rows], baselines, height, color=BASELINE_COLOUR, label="baseline")
    if log:
        axis.set_xscale("log")
    for r, f, v, b in zip(rows, figures, values, baselines, strict=True):
        axis.text(v, r - height / 2, " " + label(f, "value"), va="center", fontsize=8)
        axis.text(b, r + height / 2, " " + label(f, "baseline"), va="center", fontsize=8, color="#555555")
    axis.set_yticks(list(rows), [f["name"] for f in figures], fontsize=8)
    axis.invert_yaxis()
    axis.set_title(title, fontsize=10, loc="left")
    axis.set_xlabel("relative to the baseline (baseline = 1)" + (", log scale" if log else ""), fontsize=8)
    right = max([*values, *baselines, 1.0])
    axis.set_xlim(right=right * (8 if log else 1.9))
    axis.legend(loc="lower right", fontsize=7)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="accepted for symmetry: plotting is always quick"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    parser.add_argument("--results", type=Path, help="where the *.json are (default: --out)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    found = panels(args.results or args.out)
    if not found:
        print(f"error: no benchmark results in {args.results or args.out}", file=sys.stderr)
        return 1
    image = draw(found, args.out / IMAGE)
    logger.info("wrote %s (%d panels)", image, len(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
