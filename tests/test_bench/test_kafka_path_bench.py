"""``python -m bench.kafka_path --quick``: a real broker and consumer, both result files written and sane."""

from __future__ import annotations

from typing import Any

import pytest

from bench.figures import Figure, Result
from tests.test_bench.quick import QuickRun, load_result, run_quick

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return run_quick("kafka_path", tmp_path_factory.mktemp("bench"), timeout_s=540)


@pytest.fixture(scope="module")
def result(quick_run: QuickRun) -> dict[str, Any]:
    return load_result(quick_run, "kafka_path")


def test_result_shape(result: dict[str, Any]) -> None:
    assert set(result) == set(Result.__annotations__)
    assert result["benchmark"] == "kafka_path"
    assert result["quick"] is True
    assert result["machine"]["cores"] >= 1
    for f in result["figures"]:
        assert set(f) == set(Figure.__annotations__)


def test_every_event_came_out_enriched(result: dict[str, Any]) -> None:
    details = result["details"]
    assert details["paced"], "no paced run"
    for run in details["paced"]:
        assert run["sent"] > 0
        assert run["delivered"] == run["sent"]
        assert run["complete"] is True
        assert 0 < run["hop_p50_ms"] <= run["hop_p99_ms"]
        assert 0 < run["enriched_p50_ms"] <= run["enriched_p99_ms"] <= run["enriched_max_ms"]
    through = details["throughput"]
    assert through["batches"] >= 2
    assert through["consumer_events_per_s"] > 0
    assert through["bare_events_per_s"] > 0


def test_figures_carry_their_baselines(result: dict[str, Any]) -> None:
    by_name = {f["name"]: f for f in result["figures"]}
    throughput = by_name["Consumer throughput"]
    assert throughput["ratio"] == pytest.approx(throughput["value"] / throughput["baseline"])
    assert throughput["target"] == "ratio >= 0.8"
    assert isinstance(throughput["met"], bool)
    latency = [f for f in result["figures"] if f["unit"] == "ms"]
    assert len(latency) == 2 * len(result["details"]["paced"])
    assert all(f["baseline"] > 0 and f["value"] > 0 for f in latency)


def test_markdown_and_terminal_table(quick_run: QuickRun, result: dict[str, Any]) -> None:
    out, done = quick_run
    markdown = (out / "kafka_path.md").read_text(encoding="utf-8")
    assert "| Consumer throughput |" in markdown
    assert result["machine"]["cpu"] in markdown
    assert "Consumer" in done.stdout
