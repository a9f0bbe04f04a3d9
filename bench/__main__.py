"""Every benchmark, one after the other: ``python -m bench`` (what ``make bench`` runs).

Each benchmark runs in a process of its own (``python -m bench.<name>``), so no figure carries
memory or threads left over by the one before; each writes ``<name>.md`` and ``<name>.json`` to
``--out``. The plot of all of them and the summary table come last; a full-size run into the
default results directory also puts that table in the README. A benchmark that fails is reported
and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from rich.console import Console

from bench.results import DEFAULT_OUT, ROOT, Option, main

# In order: the engine baseline first, the plot and the summary of everything last.
REPORTS = ("plot", "summary")
BENCHMARKS = ("engines", "service", "churn", "memory", "kafka_path", "recovery", "accuracy", *REPORTS)
README = ROOT / "README.md"


def run(args: argparse.Namespace) -> int:
    console = Console()
    failed: list[str] = []
    for name in [name for name in BENCHMARKS if not args.only or name in args.only]:
        console.rule(f"bench.{name}")
        command = [sys.executable, "-m", f"bench.{name}", "--out", str(args.out)]
        if args.quick:
            command.append("--quick")
        elif name == "summary" and args.out.resolve() == DEFAULT_OUT.resolve():
            command += ["--readme", str(README)]
        started = time.monotonic()
        if subprocess.run(command, cwd=ROOT, check=False).returncode:
            failed.append(name)
            console.print(f"[red]bench.{name} failed[/red]")
        console.print(f"bench.{name}: {time.monotonic() - started:.0f} s")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
        return 1
    console.print(f"results in {args.out}")
    return 0


OPTIONS: list[Option] = [
    ("--only", {"action": "append", "choices": BENCHMARKS, "help": "run only this benchmark (repeatable)"})
]

if __name__ == "__main__":
    sys.exit(main("bench", __doc__, OPTIONS, run))
