"""The training corpus, and the cached model build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.processes import ROOT
from nlp_consumer.corpus import asr_style, label_for, load_corpus
from nlp_consumer.errors import ModelUnavailable
from nlp_consumer.train import TrainConfig, default_cache_dir, default_model_dir, target_polarity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Oh, that is GREAT news!!", "oh that is great news"),
        ("@anonymous I can't wait http://url_removed &amp; more", "i can't wait more"),
        ("It's 'quoted' -- really.", "it's quoted really"),
    ],
)
def test_asr_style_is_lower_case_without_punctuation(text: str, expected: str) -> None:
    assert asr_style(text) == expected


@pytest.mark.parametrize(
    ("mean", "label"),
    [(-2.0, "NEGATIVE"), (-0.75, "NEGATIVE"), (-0.7, "NEUTRAL"), (0.0, "NEUTRAL"), (0.8, "POSITIVE")],
)
def test_labels_come_from_the_mean_rating(mean: float, label: str) -> None:
    assert label_for(mean, neutral_below=0.75) == label


def test_training_target_puts_the_human_neutral_edge_on_the_band() -> None:
    config = TrainConfig()
    assert target_polarity(config.neutral_below, config) == pytest.approx(config.neutral_band)
    assert target_polarity(-config.neutral_below, config) == pytest.approx(-config.neutral_band)
    assert target_polarity(0.0, config) == 0.0
    assert 0.9 < target_polarity(4.0, config) < 1.0  # the top of the scale, never a hard 1
    ratings = [-4.0, -2.0, -0.5, 0.0, 0.5, 2.0, 4.0]
    targets = [target_polarity(r, config) for r in ratings]
    assert targets == sorted(targets)


@pytest.mark.timeout(1800)
def test_trained_model_meets_the_held_out_accuracy_target(trained_model: Path) -> None:
    metrics = json.loads((trained_model / "training.json").read_text())["metrics"]["held_out"]
    for variant in ("asr_style", "as_written"):
        assert metrics[variant]["accuracy"] >= 0.85, (variant, metrics[variant])  # positive vs negative
        assert metrics[variant]["pearson"] >= 0.7, (variant, metrics[variant])
        assert metrics[variant]["three_way"]["accuracy"] >= 0.65, (variant, metrics[variant])


@pytest.mark.timeout(1800)
def test_second_training_run_is_a_cache_hit(trained_model: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "nlp_consumer.train"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    elapsed_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "cached" in result.stdout and str(trained_model) in result.stdout
    assert elapsed_s < 30  # python start-up and hashing the inputs; no training

    config = json.loads((trained_model / "config.json").read_text())
    assert config["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (trained_model / name).is_file(), name
    record = json.loads((trained_model / "training.json").read_text())
    accuracy = record["metrics"]["held_out"]["asr_style"]["accuracy"]
    assert f"{accuracy:.1%}" in (trained_model / "README.md").read_text()


@pytest.mark.timeout(1800)
def test_held_out_split_is_fixed_and_disjoint(trained_model: Path) -> None:
    corpus = load_corpus(default_cache_dir(os.environ) / "data" / "vaderSentiment-3.3.2.tar.gz")
    train, held_out = corpus.split(10)
    assert len(corpus.sentences) > 20_000
    assert 0.08 < len(held_out) / len(corpus.sentences) < 0.12
    assert not {(s.source, s.sentence_id) for s in train} & {(s.source, s.sentence_id) for s in held_out}
    assert held_out == corpus.split(10)[1]


def test_consumer_without_a_trained_model_is_told_to_train(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"python -m nlp_consumer\.train"):
        default_model_dir(tmp_path)
