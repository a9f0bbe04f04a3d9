"""Each benchmark at ``--quick`` size: it ran, wrote its result in the one format, and its figures
stand beside baselines measured in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.results import Figure, Result
from bench.service import search_capacity
from tests.test_bench.conftest import load

pytestmark = pytest.mark.timeout(900)


def check_result(out: Path, benchmark: str) -> dict[str, Any]:
    """The result has the one shape, and its markdown was rendered from it."""
    result = load(out, benchmark)
    assert set(result) == set(Result.__annotations__)
    assert result["benchmark"] == benchmark and result["quick"] is True
    assert result["machine"]["usable_cores"] >= 1 and len(result["machine"]["load_average_1min"]) == 2
    markdown = (out / f"{benchmark}.md").read_text(encoding="utf-8")
    assert markdown.startswith(f"# {result['title']} (quick)")
    assert result["machine"]["cpu"] in markdown and "$" not in markdown.split("## How to read it")[-1]
    for f in result["figures"]:
        assert set(f) == set(Figure.__annotations__)
        if f["value"] is not None and f["baseline"]:
            assert f["ratio"] == pytest.approx(f["value"] / f["baseline"])
        assert f"| {f['name']} |" in markdown
    return result


def by_name(result: dict[str, Any]) -> dict[str, Figure]:
    return {f["name"]: f for f in result["figures"]}


def test_engines(quick_results: tuple[Path, str]) -> None:
    result = check_result(quick_results[0], "engines")
    engines = result["details"]["engines"]
    assert set(engines) == {"whisper"}  # quick: the engine with a WER on data/
    for name, measured in engines.items():
        assert measured["rss_after_load_mib"] > measured["rss_before_load_mib"] > 0
        for key in ("partials_on", "partials_off"):
            assert measured[key]["rtf"] == pytest.approx(measured[key]["wall_s"] / measured["audio_s"])
        rtf = by_name(result)[f"RTF {name}, streaming"]
        assert (rtf["value"], rtf["baseline"]) == (
            measured["partials_on"]["rtf"],
            measured["partials_off"]["rtf"],
        )
    assert 0 <= engines["whisper"]["partials_on"]["wer"]["overall"] < 0.5
    assert "## Word error rate, whisper" in (quick_results[0] / "engines.md").read_text(encoding="utf-8")


def test_service_beside_the_bare_engine_and_a_peer(quick_results: tuple[Path, str]) -> None:
    result = check_result(quick_results[0], "service")
    vosk = result["details"]["engines"]["vosk"]
    assert set(vosk["capacity"]) == {"bare_engine", "service_websocket", "peer fake-peer"}
    bound = vosk["bound"]
    assert bound["callers"] == pytest.approx(bound["cores"] / bound["bare_rtf"])
    for row in vosk["overhead"]:
        for measured in (row["http"], row["websocket"], row["peers"]["fake-peer"]):
            assert measured["errors"] == 0 and measured["throughput"] > 0
            assert measured["ratio"] == pytest.approx(measured["throughput"] / row["bare"]["throughput"])
    figures = by_name(result)
    websocket = figures["vosk: throughput over WebSocket, 2 callers"]
    assert websocket["target"] == "ratio >= 0.90" and isinstance(websocket["met"], bool)
    peer = figures["vosk: throughput over peer fake-peer, 2 callers"]
    assert peer["target"] == "" and peer["baseline"] == websocket["baseline"]
    for found in vosk["capacity"].values():
        assert found["steps"] and found["ratio"] == pytest.approx(found["callers"] / bound["callers"])
    assert all(step["partial_lag"] is not None for step in vosk["capacity"]["service_websocket"]["steps"])
    assert result["settings"]["peers"] == {"fake-peer": result["settings"]["peers"]["fake-peer"]}
    # The bare engine runs in the benchmark's process, restarted on the service's allocator.
    assert ("jemalloc" in vosk["service_allocator"]) == (vosk["bare_allocator"] == "jemalloc")
    live = vosk["live_calls"]  # the servers' first calls: ours, and the peer found on this machine
    assert set(live) == {"websocket", "peer fake-peer"}
    ours = live["websocket"]
    assert ours["callers"] == 8 and ours["errors"] == 0 and ours["peak_rss_mib"] > 0
    assert ours["per_call_mib"] == pytest.approx((ours["peak_rss_mib"] - vosk["idle_rss_mib"]["service"]) / 8)
    memory = figures["vosk: RSS per live call"]
    assert memory["value"] == ours["per_call_mib"] and memory["target"] == "ratio <= 0.50"


def test_churn(quick_results: tuple[Path, str]) -> None:
    result = check_result(quick_results[0], "churn")
    runs = result["details"]["runs"]
    kinds = {(r["protocol"], r["pool"], r["kind"]) for r in runs}  # quick: Vosk over the WebSocket
    assert kinds == {("ws", True, "short"), ("ws", True, "long"), ("ws", False, "short")}
    for run in runs:
        assert run["errors"] == 0 and run["server_cpu_s"] > 0
        assert run["audio_s_per_cpu_s"] == pytest.approx(run["audio_s"] / run["server_cpu_s"])
        assert (run["pool_stats"]["acquired_hit"] > 0) is run["pool"]
    throughput = [f for f in result["figures"] if f["name"].startswith("audio s per CPU s")]
    assert len(throughput) == 2 and all(f["target"] == "ratio >= 0.8" for f in throughput)
    first = by_name(result)["first-chunk p95 (ms) of a new session, pool on, vosk, ws"]
    assert first["baseline"] == next(r for r in runs if not r["pool"])["first_chunk"]["p95_ms"]


def test_memory(quick_results: tuple[Path, str]) -> None:
    result = check_result(quick_results[0], "memory")
    servers, bare = result["details"]["servers"], result["details"]["bare"]
    assert [(s["engine"], s["pool"]) for s in servers] == [("vosk", True)]  # quick: Vosk, pool on
    for server in servers:
        assert server["idle_ratio"] == pytest.approx(server["rss_idle_after_mib"] / server["rss_idle_mib"])
        assert server["churn_curve"][-1] == [server["churn_sessions"], server["rss_after_churn_mib"]]
    assert [b["variant"] for b in bare] == ["default"]
    assert bare[0]["rss_per_recognizer_mib"] > 0 and len(bare[0]["transcripts"]) == 1
    live = by_name(result)["RSS per live session, vosk, pool on"]
    assert live["baseline"] == bare[0]["rss_per_recognizer_mib"]


def test_kafka_path(quick_results: tuple[Path, str]) -> None:
    result = check_result(quick_results[0], "kafka_path")
    for run in result["details"]["paced"]:
        assert run["complete"] is True and 0 < run["hop_p50_ms"] <= run["enriched_p50_ms"] * 10
    assert [run["consumers"] for run in result["details"]["paced"]] == [2]  # the group grew to two
    throughput = by_name(result)["Consumer throughput"]
    assert throughput["baseline"] == result["details"]["throughput"]["bare_events_per_s"] > 0
    assert throughput["target"] == "ratio >= 0.8"


def test_recovery(quick_results: tuple[Path, str]) -> None:
    result = check_result(quick_results[0], "recovery")
    (repetition,) = result["details"]["repetitions"]
    assert repetition["words_lost"] == 0 and repetition["transcript_identical"] is True
    assert repetition["first_partial_s"] >= repetition["first_reply_s"] > 0
    lost = by_name(result)["Words lost per call, max"]
    assert lost["value"] == 0 and lost["met"] is True
    first = by_name(result)["Kill → first reply of the new owner, median"]
    assert first["baseline"] == result["settings"]["heartbeat_ttl_s"]


def test_accuracy_reads_the_same_runs_engines(quick_results: tuple[Path, str]) -> None:
    result = check_result(quick_results[0], "accuracy")
    assert result["details"]["engines_json"] == str(quick_results[0] / "engines.json")
    figures = by_name(result)
    wer = figures["WER whisper, all of data/"]
    assert wer["baseline_name"] == "same engine, finals only (offline)"
    # the sentiment figures are of the model as the consumer runs it, beside the trained model in torch
    sentiment = result["details"]["sentiment"]
    assert sentiment["runtime"] == "onnx-int8"
    name = "Sentiment accuracy as served (onnx-int8), held-out split, positive vs negative (ASR style)"
    served = figures[name]
    assert served["baseline"] == pytest.approx(100 * sentiment["held_out"]["asr_style"]["accuracy"])
    assert served["value"] is not None and served["baseline"] is not None
    assert abs(served["value"] - served["baseline"]) <= 2.0


def test_the_capacity_search_closes_in_on_the_largest_passing_number() -> None:
    def probe(callers: int) -> dict[str, Any]:
        tried.append(callers)
        return {"errors": 0, "behind": 0, "latency_p95_ms": 100.0 if callers <= 7 else 900.0}

    tried: list[int] = []
    assert search_capacity(probe, 46, 300.0, 5, "latency")[0] == 7  # down to 6 passing, then 8 and 7
    assert tried == [46, 28, 17, 10, 6, 8, 7]
    tried.clear()
    assert search_capacity(probe, 5, 300.0, 5, "latency")[0] == 7 and tried == [5, 8, 6, 7]


def test_plot_and_summary_of_the_run(quick_results: tuple[Path, str]) -> None:
    out = quick_results[0]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text(encoding="utf-8")
    for benchmark in ("churn", "memory", "service", "kafka_path", "recovery"):
        assert f"- `{benchmark}` (quick):" in summary
