"""``python -m bench.memory --quick``: served and bare measurements written and sane."""

from __future__ import annotations

from typing import Any

import pytest

from bench.memory import BareResult, MemoryReport, ServerResult
from tests.test_bench.quick import QuickRun, load_result, run_quick


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return run_quick("memory", tmp_path_factory.mktemp("memory"), timeout_s=600)


@pytest.fixture(scope="module")
def report(quick_run: QuickRun) -> dict[str, Any]:
    return load_result(quick_run, "memory")


def test_report_shape(report: dict[str, Any]) -> None:
    assert set(report) == set(MemoryReport.__annotations__)
    assert report["quick"] is True
    assert report["machine"]["cores"] >= 1
    assert {(s["engine"], s["pool"]) for s in report["servers"]} == {
        ("vosk", True),
        ("vosk", False),
        ("whisper", True),
    }


def test_server_numbers_are_sane(report: dict[str, Any]) -> None:
    for server in report["servers"]:
        assert set(server) == set(ServerResult.__annotations__)
        assert server["rss_loaded_mib"] > 50
        assert server["rss_warm_mib"] >= server["rss_loaded_mib"] * 0.9
        assert server["churn_ratio"] == pytest.approx(server["rss_after_churn_mib"] / server["rss_warm_mib"])
        curve = server["churn_curve"]
        assert [done for done, _ in curve] == sorted({done for done, _ in curve})
        assert curve[-1] == [server["churn_sessions"], server["rss_after_churn_mib"]]
        assert 0.5 < server["second_half_ratio"] < 2
        assert server["second_half_ratio"] == pytest.approx(
            server["rss_second_half_mib"] / server["rss_first_half_mib"]
        )
        assert server["live_sessions"] >= 1
        assert server["rss_live_mib"] > 0
        assert server["rss_after_live_closed_mib"] > 0
        assert 0 < server["rss_idle_mib"] <= server["rss_warm_mib"] * 1.05
        assert server["idle_ratio"] == pytest.approx(server["rss_idle_after_mib"] / server["rss_idle_mib"])
        if server["pool"]:  # the churn really went through the pool, and the TTL emptied it
            assert server["pool_stats"]["acquired_hit"] > 0


def test_headline_figures(report: dict[str, Any]) -> None:
    names = [f["name"] for f in report["figures"]]
    churn = report["servers"][0]["churn_sessions"]
    assert f"RSS after {churn} sessions, idle recognizers freed, vosk, pool on" in names
    assert f"RSS after {churn} sessions, pool holding its recognizers, vosk, pool on" in names
    assert f"RSS in the 2nd half of {churn} sessions, vosk, pool on" in names
    assert "RSS per live session, vosk, pool on" in names
    for f in report["figures"]:
        if f["target"]:
            assert f["met"] is (f["value"] / f["baseline"] <= 1.05)


def test_bare_engine_numbers_are_sane(report: dict[str, Any]) -> None:
    bare = report["bare"]
    assert [b["variant"] for b in bare] == ["default", "max-active=1000"]
    for result in bare:
        assert set(result) == set(BareResult.__annotations__)
        assert result["rss_model_mib"] > 100
        assert result["rss_per_recognizer_mib"] > 0
        assert result["fresh_cpu_s"] > 0
        assert result["reused_cpu_s"] > 0
        assert len(result["transcripts"]) == report["sizes"]["recognizers"]
    assert bare[0]["agreement_wer"] is None
    assert bare[1]["conf"] == {"max-active": "1000"}
    assert bare[1]["agreement_wer"] is None or bare[1]["agreement_wer"] >= 0


def test_markdown_files_and_terminal_table(quick_run: QuickRun, report: dict[str, Any]) -> None:
    out, done = quick_run
    assert report["machine"]["cpu"] in (out / "memory.md").read_text(encoding="utf-8")
    findings = (out / "memory-report.md").read_text(encoding="utf-8")
    assert "## What one recognizer consists of" in findings
    assert "max-active=1000" in findings
    assert "Memory of the served decoder" in done.stdout
