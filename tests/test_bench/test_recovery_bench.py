"""``python -m bench.recovery --quick``: an owner killed mid-call, the call finished by the survivor."""

from __future__ import annotations

from typing import Any

import pytest

from bench.figures import Figure, Result
from tests.test_bench.quick import QuickRun, load_result, run_quick

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return run_quick("recovery", tmp_path_factory.mktemp("bench"), timeout_s=540)


@pytest.fixture(scope="module")
def result(quick_run: QuickRun) -> dict[str, Any]:
    return load_result(quick_run, "recovery")


def test_result_shape(result: dict[str, Any]) -> None:
    assert set(result) == set(Result.__annotations__)
    assert result["benchmark"] == "recovery"
    assert result["quick"] is True
    assert result["settings"]["heartbeat_ttl_s"] > 0
    for f in result["figures"]:
        assert set(f) == set(Figure.__annotations__)


def test_the_call_survives_the_kill_without_losing_words(result: dict[str, Any]) -> None:
    details = result["details"]
    assert details["expected_finals"], "the uninterrupted decode produced no final"
    assert details["uninterrupted"]["words_lost"] == 0
    assert len(details["repetitions"]) == result["settings"]["repetitions"]
    for repetition in details["repetitions"]:
        assert repetition["words_lost"] == 0
        assert repetition["transcript_identical"] is True
        assert repetition["first_reply_s"] > 0
        assert repetition["first_partial_s"] >= repetition["first_reply_s"]
        assert repetition["back_on_schedule_s"] >= 0


def test_figures_carry_their_baselines(result: dict[str, Any]) -> None:
    figures = {f["name"]: f for f in result["figures"]}
    lost = figures["Words lost per call, max"]
    assert lost["value"] == 0 and lost["met"] is True
    first = figures["Kill → first reply of the new owner, median"]
    assert first["baseline"] == result["settings"]["heartbeat_ttl_s"]
    assert first["ratio"] == pytest.approx(first["value"] / first["baseline"])
    summary = result["details"]["summary"]
    assert summary["first_reply_s_median"] <= summary["first_reply_s_max"]


def test_markdown(quick_run: QuickRun) -> None:
    markdown = (quick_run[0] / "recovery.md").read_text(encoding="utf-8")
    assert "| Words lost per call, max |" in markdown
    assert "Repetition 1:" in markdown
