"""Running a benchmark at ``--quick`` size for its smoke test, and reading what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from devtools.processes import ROOT

QuickRun = tuple[Path, subprocess.CompletedProcess[str]]  # (results directory, the finished run)


def run_quick(benchmark: str, out: Path, timeout_s: float) -> QuickRun:
    """``python -m bench.<benchmark> --quick --out <out>``; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{benchmark}", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def load_result(run: QuickRun, benchmark: str) -> dict[str, Any]:
    """The ``<benchmark>.json`` the run wrote."""
    result: dict[str, Any] = json.loads((run[0] / f"{benchmark}.json").read_text(encoding="utf-8"))
    return result
