"""``python -m bench.engines --quick``: both engines measured, both result files written and sane."""

from __future__ import annotations

from typing import Any

import pytest

from bench.report import EngineResult, PassResult
from tests.test_bench.quick import QuickRun, load_result, run_quick

QUICK_FILES = 3


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    return run_quick("engines", tmp_path_factory.mktemp("bench"), timeout_s=300)


@pytest.fixture(scope="module")
def report(quick_run: QuickRun) -> dict[str, Any]:
    return load_result(quick_run, "engines")


def assert_positive(record: dict[str, Any], keys: set[str]) -> None:
    for key in keys:
        assert isinstance(record[key], float), key
        assert record[key] > 0, key


def test_report_names_the_machine_and_both_engines(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert report["chunk_ms"] == 200
    machine = report["machine"]
    assert machine["cpu"]
    assert machine["cores"] >= 1
    assert machine["python"].startswith("3.")
    assert set(machine["libraries"]) >= {"vosk", "faster-whisper", "ctranslate2"}
    assert set(report["engines"]) == {"whisper", "vosk"}


@pytest.mark.parametrize("engine", ["whisper", "vosk"])
def test_engine_numbers_are_sane(report: dict[str, Any], engine: str) -> None:
    result = report["engines"][engine]
    assert set(result) == set(EngineResult.__annotations__)
    assert result["engine"] == engine
    assert len(result["files"]) == QUICK_FILES
    assert_positive(
        result, {"audio_s", "load_s", "rss_before_load_mib", "rss_after_load_mib", "peak_rss_mib"}
    )
    assert result["rss_after_load_mib"] > result["rss_before_load_mib"]
    assert result["peak_rss_mib"] >= result["rss_after_load_mib"] * 0.9
    assert result["audio_s"] == pytest.approx(sum(result["groups"].values()))
    for key in ("partials_on", "partials_off"):
        measured = result[key]
        assert set(measured) == set(PassResult.__annotations__)
        assert measured["partials"] is (key == "partials_on")
        assert_positive(measured, {"wall_s", "cpu_s", "rtf", "cpu_s_per_audio_s", "steady_accept_max_ms"})
        assert measured["rtf"] == pytest.approx(measured["wall_s"] / result["audio_s"])
        assert 0 <= measured["steady_accept_p50_ms"] <= measured["steady_accept_max_ms"]


def test_wer_only_where_the_model_speaks_the_audio_language(report: dict[str, Any]) -> None:
    whisper, vosk = report["engines"]["whisper"], report["engines"]["vosk"]
    for key in ("partials_on", "partials_off"):
        wer = whisper[key]["wer"]
        assert 0.0 <= wer["overall"] < 0.5
        assert set(wer) <= {"overall", "librivox", "moonshine", "calls", "commands"}
        assert vosk[key]["wer"] is None


def test_markdown_and_terminal_table(quick_run: QuickRun, report: dict[str, Any]) -> None:
    out, done = quick_run
    markdown = (out / "engines.md").read_text(encoding="utf-8")
    assert "| Model load (s) |" in markdown
    assert report["machine"]["cpu"] in markdown
    assert "WER would be meaningless" in markdown
    assert "Model load (s)" in done.stdout
