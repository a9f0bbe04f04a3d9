"""``python -m bench.service --quick``: overhead, capacity and peer figures written, shaped and sane."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from bench.service import (
    CapacityResult,
    EngineReport,
    OverheadRow,
    Report,
    Throughput,
    headline_figures,
    lag_quantile,
    partial_lag,
)
from tests.test_bench.quick import QuickRun, load_result, run_quick


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return run_quick("service", tmp_path_factory.mktemp("bench"), timeout_s=300)


@pytest.fixture(scope="module")
def report(quick_run: QuickRun) -> dict[str, Any]:
    return load_result(quick_run, "service")


def test_report_names_the_machine_targets_and_peer(report: dict[str, Any]) -> None:
    assert set(report) == set(Report.__annotations__)
    assert report["quick"] is True
    assert report["chunk_ms"] == 200
    assert report["targets"] == {"overhead": 0.90, "capacity": 0.85}
    assert "not installable offline" in report["peer"]
    assert report["machine"]["usable_cores"] >= 1
    assert set(report["engines"]) == {"vosk", "whisper"}
    assert report["profile"] is None  # never in quick runs


def assert_throughput(measured: dict[str, Any], bare: dict[str, Any]) -> None:
    assert set(measured) == set(Throughput.__annotations__)
    assert measured["throughput"] > 0
    assert measured["wall_s"] > 0
    assert measured["errors"] == 0
    assert measured["ratio"] == pytest.approx(measured["throughput"] / bare["throughput"])


@pytest.mark.parametrize("engine", ["vosk", "whisper"])
def test_overhead_against_the_bare_engine_of_the_same_run(report: dict[str, Any], engine: str) -> None:
    result = report["engines"][engine]
    assert set(result) == set(EngineReport.__annotations__)
    cores = report["machine"]["usable_cores"]
    assert cores in [row["callers"] for row in result["overhead"]]
    for row in result["overhead"]:
        assert set(row) == set(OverheadRow.__annotations__)
        assert row["bare"]["ratio"] == 1.0
        for path in ("http", "websocket", "peer"):
            if path == "peer" and engine != "vosk":
                assert row["peer"] is None
                continue
            assert_throughput(row[path], row["bare"])


@pytest.mark.parametrize("engine", ["vosk", "whisper"])
def test_capacity_against_the_bound(report: dict[str, Any], engine: str) -> None:
    result = report["engines"][engine]
    bound = result["bound"]
    assert bound["bare_rtf"] > 0
    assert bound["callers"] == pytest.approx(bound["cores"] / bound["bare_rtf"])
    expected = {"bare_engine", "service_websocket"} | ({"peer_websocket"} if engine == "vosk" else set())
    assert set(result["capacity"]) == expected
    for found in result["capacity"].values():
        assert set(found) == set(CapacityResult.__annotations__)
        assert found["steps"], "the search probed at least once"
        assert found["ratio"] == pytest.approx(found["callers"] / bound["callers"])
        assert found["peak_rss_mib"] > 0
        for step in found["steps"]:
            assert step["callers"] >= 1
            assert 0 <= step["latency_p50_ms"] <= step["latency_p95_ms"] <= step["latency_max_ms"]
            assert step["first_chunk_p50_ms"] >= 0
        assert {step["search"] for step in found["steps"]} <= {"latency", "keeping_up"}
        passed = [s["callers"] for s in found["steps"] if s["passed"] and s["search"] == "latency"]
        assert found["callers"] == max(passed, default=0)
        if found["callers_keeping_up"] is not None:  # searched only when no caller met the latency limit
            assert found["callers"] == 0
            assert found["callers_keeping_up"] >= 0
    assert set(result["idle_rss_mib"]) == ({"service", "peer"} if engine == "vosk" else {"service"})
    service_lags = [step["partial_lag"] for step in result["capacity"]["service_websocket"]["steps"]]
    assert all(lag is not None for lag in service_lags)  # read from the service's own /metrics
    assert all(step["partial_lag"] is None for step in result["capacity"]["bare_engine"]["steps"])
    if engine == "vosk":  # Vosk's partials come from the decoder's own state, never a background decode
        assert all(lag["published"] == 0 for lag in service_lags)


def test_partial_lag_quantiles_from_histogram_deltas() -> None:
    before = {0.1: 5.0, 0.3: 8.0, 1.0: 10.0, math.inf: 10.0}
    after = {0.1: 6.0, 0.3: 18.0, 1.0: 29.0, math.inf: 30.0}  # 20 more: 10 <= 0.3, 19 <= 1, 1 over
    lag = partial_lag(before, after)
    assert lag == {"published": 20, "p50_s": 0.3, "p95_s": 1.0}
    assert lag_quantile(before, {**after, math.inf: 40.0}, 0.95) is None  # beyond the largest bound
    assert partial_lag(after, after) == {"published": 0, "p50_s": None, "p95_s": None}


def test_headline_figures_carry_the_targets(report: dict[str, Any]) -> None:
    figures = {f["name"]: f for f in report["figures"]}
    websocket = figures["vosk: throughput over WebSocket, 2 callers"]
    row = next(r for r in report["engines"]["vosk"]["overhead"] if r["callers"] == 2)
    assert websocket["value"] == row["websocket"]["throughput"]
    assert websocket["baseline"] == row["bare"]["throughput"]
    assert websocket["met"] is (row["websocket"]["ratio"] >= 0.90)
    assert figures["vosk: throughput over peer (vosk-server design), 2 callers"]["target"] == ""
    capacity = figures["whisper: capacity, service, WebSocket"]
    assert capacity["baseline"] == report["engines"]["whisper"]["bound"]["callers"]
    assert capacity["target"] == "ratio >= 0.85"


def test_capacity_is_also_set_beside_the_bare_engine_with_many_streams(report: dict[str, Any]) -> None:
    vosk = copy.deepcopy(report["engines"]["vosk"])
    busiest = copy.deepcopy(vosk["overhead"][0])
    busiest["callers"] = vosk["bound"]["cores"] * 4
    busiest["bare"]["throughput"] = 12.5
    vosk["overhead"].append(busiest)
    figures = {f["name"]: f for f in headline_figures({"vosk": vosk})}
    many = figures["vosk: capacity, service, WebSocket, against many streams"]
    assert many["value"] == vosk["capacity"]["service_websocket"]["callers"]
    assert many["baseline"] == 12.5 and not many["target"]
    assert "vosk: capacity, bare engine, in-process, against many streams" not in figures
    quick = {f["name"] for f in report["figures"]}  # one stream per core only: no such comparison
    assert not any(name.endswith("against many streams") for name in quick)


def test_markdown_and_terminal_tables(quick_run: QuickRun, report: dict[str, Any]) -> None:
    out, done = quick_run
    markdown = (out / "service.md").read_text(encoding="utf-8")
    assert report["machine"]["cpu"] in markdown
    assert "vosk-server design re-implemented in bench/" in markdown
    assert "| bare-engine bound |" in markdown
    assert "Ratio to bare" in done.stdout
