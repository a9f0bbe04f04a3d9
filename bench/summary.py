"""The headline table of every benchmark: ``python -m bench.summary`` writes ``summary.md``.

Reads the results the benchmarks wrote (the same figures ``bench.plot`` draws) and keeps every
figure that has a target, with its baseline from the same run, the ratio and whether the target
was met, plus the machine and its load. ``--readme README.md`` also replaces the part of that file
between ``<!-- bench:summary -->`` and ``<!-- /bench:summary -->`` with the same table, so the
README shows what the last full run measured and nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.figures import Figure, number, ratio_text
from bench.plot import panels
from bench.report import markdown_table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
SUMMARY = "summary.md"
START, END = "<!-- bench:summary -->", "<!-- /bench:summary -->"
HEADER = ["Benchmark", "Figure", "Measured", "Baseline (same run)", "Ratio", "Target", "Met"]


class SummaryError(Exception):
    """Nothing to summarise, or a README without the markers."""


def targeted_rows(results: Path) -> list[list[str]]:
    rows = []
    for title, figures in panels(results):
        for f in figures:
            if not f.get("target"):
                continue
            rows.append(
                [
                    title,
                    f["name"],
                    number(f["value"], f.get("unit", "")),
                    f"{number(f.get('baseline'), f.get('unit', ''))} ({f.get('baseline_name', 'baseline')})",
                    ratio_text(f),
                    str(f.get("target", "")),
                    _met(f),
                ]
            )
    return rows


def _met(f: Figure) -> str:
    met = f.get("met")
    return "n/a" if met is None else ("yes" if met else "**no**")


def machines(results: Path) -> list[str]:
    """One line per distinct machine and date the results were measured on."""
    lines = []
    for path in sorted(results.glob("*.json")):
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        machine = data.get("machine") if isinstance(data, dict) else None
        if not isinstance(machine, dict):
            continue
        quick = " (quick)" if data.get("quick") else ""
        date = str(machine.get("date", ""))[:16].replace("T", " ")
        lines.append(
            f"- `{path.stem}`{quick}: {machine.get('cpu', '?')}, {machine.get('usable_cores', '?')} usable "
            f"cores, Python {machine.get('python', '?')}, {date} UTC" + _load(data)
        )
    return lines


def _load(data: dict[str, Any]) -> str:
    """The 1-minute load average the result recorded (before → after, or at the end)."""
    places = [data, *(data.get(k) for k in ("machine", "settings", "details"))]
    load = next(
        (p["load_average_1min"] for p in places if isinstance(p, dict) and "load_average_1min" in p), None
    )
    if isinstance(load, list | tuple) and len(load) == 2:
        return f", load average {load[0]:.2f} → {load[1]:.2f}"
    if isinstance(load, int | float):
        return f", load average {load:.2f} at the end"
    return ""


def render(results: Path) -> str:
    rows = targeted_rows(results)
    if not rows:
        raise SummaryError(f"no figure with a target in {results}")
    return "\n".join(
        [
            *markdown_table(HEADER, rows),
            "",
            "Measured on:",
            "",
            *machines(results),
        ]
    )


def replace_block(text: str, block: str) -> str:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SummaryError(f"the README has no {START} … {END} block")
    return text[: start + len(START)] + "\n" + block + "\n" + text[end:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry: summarising is quick")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    parser.add_argument("--readme", type=Path, help="also update this file's bench:summary block")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        block = render(args.out)
        (args.out / SUMMARY).write_text(f"# Benchmark summary\n\n{block}\n", encoding="utf-8")
        if args.readme is not None:
            args.readme.write_text(replace_block(args.readme.read_text(encoding="utf-8"), block), "utf-8")
    except (SummaryError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
