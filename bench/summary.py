"""The headline table of every benchmark: ``python -m bench.summary`` writes ``summary.md``.

Reads the results the benchmarks wrote (the same figures ``bench.plot`` draws) and keeps every
figure that has a target, with its baseline from the same run, the ratio and whether the target
was met, plus the machine and its load. ``--readme README.md`` also replaces the part of that file
between ``<!-- bench:summary -->`` and ``<!-- /bench:summary -->`` with the same table, so the
README shows what the last full run measured and nothing else.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import bench.results
from bench.results import Option, Result, figure_cells, load_results, load_text, markdown_table

SUMMARY = "summary.md"
START, END = "<!-- bench:summary -->", "<!-- /bench:summary -->"
HEADER = ["Benchmark", "Figure", "Measured", "Baseline (same run)", "Ratio", "Target", "Met"]


class SummaryError(Exception):
    """Nothing to summarise, or a README without the markers."""


def machine_line(res: Result) -> str:
    machine, quick = res["machine"], " (quick)" if res["quick"] else ""
    load = load_text(machine.get("load_average_1min"))
    date = str(machine.get("date", ""))[:16].replace("T", " ")
    where = f"{machine.get('cpu', '?')}, {machine.get('usable_cores', '?')} usable cores"
    when = f"Python {machine.get('python', '?')}, {date} UTC" + (f", {load}" if load else "")
    return f"- `{res['benchmark']}`{quick}: {where}, {when}"


def render(directory: Path) -> str:
    results, met = load_results(directory), {True: "yes", False: "**no**", None: "n/a"}
    rows = []
    for res in results:
        name = res["benchmark"] + (" (quick)" if res["quick"] else "")
        rows += [
            [name, *figure_cells(f), f["target"], met[f["met"]]] for f in res["figures"] if f.get("target")
        ]
    if not rows:
        raise SummaryError(f"no figure with a target in {directory}")
    return "\n".join([*markdown_table(HEADER, rows), "", "Measured on:", "", *map(machine_line, results)])


def replace_block(text: str, block: str) -> str:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SummaryError(f"the README has no {START} … {END} block")
    return text[: start + len(START)] + "\n" + block + "\n" + text[end:]


def run(args: argparse.Namespace) -> int:
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


OPTIONS: list[Option] = [("--readme", {"type": Path, "help": "also update this file's bench:summary block"})]
main = functools.partial(bench.results.main, "summary", __doc__, OPTIONS, run)


if __name__ == "__main__":
    sys.exit(main())
