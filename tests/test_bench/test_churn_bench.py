"""``python -m bench.churn --quick``: every scenario measured, results written and sane."""

from __future__ import annotations

from typing import Any

import pytest

from bench.churn import ChurnReport, Comparison, RunResult
from tests.test_bench.quick import QuickRun, load_result, run_quick


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return run_quick("churn", tmp_path_factory.mktemp("churn"), timeout_s=600)


@pytest.fixture(scope="module")
def report(quick_run: QuickRun) -> dict[str, Any]:
    return load_result(quick_run, "churn")


def test_report_shape_and_machine(report: dict[str, Any]) -> None:
    assert set(report) == set(ChurnReport.__annotations__)
    assert report["quick"] is True
    assert report["machine"]["cores"] >= 1
    assert "vosk" in report["machine"]["libraries"]


def test_every_scenario_was_run(report: dict[str, Any]) -> None:
    scenarios = {(r["engine"], r["protocol"], r["pool"], r["kind"]) for r in report["runs"]}
    expected = {("vosk", p, pool, "short") for p in ("ws", "http") for pool in (True, False)}
    expected |= {("vosk", p, True, "long") for p in ("ws", "http")}
    expected |= {("whisper", "ws", pool, "short") for pool in (True, False)} | {
        ("whisper", "ws", True, "long")
    }
    assert scenarios == expected


def test_run_numbers_are_sane(report: dict[str, Any]) -> None:
    sizes = report["sizes"]
    for run in report["runs"]:
        assert set(run) == set(RunResult.__annotations__)
        assert run["errors"] == 0
        per_stream = sizes["sessions"] if run["kind"] == "short" else 1
        assert run["sessions"] == sizes["streams"] * per_stream
        assert run["audio_s"] == pytest.approx(run["sessions"] * run["session_audio_s"])
        assert run["server_cpu_s"] > 0
        assert run["audio_s_per_cpu_s"] == pytest.approx(run["audio_s"] / run["server_cpu_s"])
        assert run["first_chunk"]["count"] == run["sessions"]
        assert 0 < run["reply"]["p50_ms"] <= run["reply"]["max_ms"]
        assert run["first_chunk"]["p95_ms"] <= run["first_chunk"]["max_ms"]


def test_pool_is_used_only_when_on(report: dict[str, Any]) -> None:
    for run in report["runs"]:
        if run["pool"]:
            assert run["pool_stats"]["acquired_hit"] > 0
        else:
            assert run["pool_stats"]["acquired_hit"] == 0
            assert run["pool_stats"]["recognizers_idle"] == 0


def test_each_figure_has_its_baseline_and_ratio(report: dict[str, Any]) -> None:
    comparisons = report["comparisons"]
    assert comparisons
    for comparison in comparisons:
        assert set(comparison) == set(Comparison.__annotations__)
        if comparison["baseline"] > 0:
            assert comparison["ratio"] == pytest.approx(comparison["value"] / comparison["baseline"])
    throughput = [c for c in comparisons if c["figure"].startswith("audio s per CPU s")]
    assert len(throughput) == 6  # vosk ws/http and whisper ws, pool on and off


def test_markdown_and_terminal_table(quick_run: QuickRun, report: dict[str, Any]) -> None:
    out, done = quick_run
    markdown = (out / "churn.md").read_text(encoding="utf-8")
    assert "## Against the in-run baselines" in markdown
    assert report["machine"]["cpu"] in markdown
    assert "Session churn" in done.stdout
