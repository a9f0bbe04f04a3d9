"""Label schemes of any sentiment model, and the trained model on the sample calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nlp_consumer import runtime
from nlp_consumer.corpus import asr_style, fetch_sdist, label_for, load_corpus
from nlp_consumer.errors import ModelUnavailable
from nlp_consumer.sentiment import LabelScheme, SentimentAnalyzer
from nlp_consumer.train import TrainConfig, base_model_dir, default_cache_dir
from tests.test_nlp_consumer.conftest import Turn


def test_two_label_model_gets_a_neutral_band() -> None:
    scheme = LabelScheme.from_labels({0: "NEGATIVE", 1: "POSITIVE"}, neutral_band=0.3)
    positive = scheme.sentiment([0.1, 0.9])
    assert (positive.label, round(positive.polarity, 2), round(positive.score, 2)) == ("POSITIVE", 0.8, 0.9)
    neutral = scheme.sentiment([0.45, 0.55])
    assert (neutral.label, round(neutral.polarity, 2), round(neutral.score, 2)) == ("NEUTRAL", 0.1, 0.9)
    assert scheme.sentiment([0.8, 0.2]).label == "NEGATIVE"


def test_three_label_model_maps_labels_by_name_in_any_order() -> None:
    scheme = LabelScheme.from_labels({0: "positive", 1: "negative", 2: "neutral"}, neutral_band=0.3)
    assert scheme.sentiment([0.2, 0.1, 0.7]).label == "NEUTRAL"
    result = scheme.sentiment([0.1, 0.6, 0.3])
    assert (result.label, round(result.polarity, 2), result.score) == ("NEGATIVE", -0.5, 0.6)


def test_star_ratings_become_polarity() -> None:
    scheme = LabelScheme.from_labels(
        {i: f"{i + 1} star{'s' if i else ''}" for i in range(5)}, neutral_band=0.3
    )
    assert scheme.sentiment([0, 0, 0, 0, 1.0]).polarity == 1.0
    assert scheme.sentiment([0, 0, 1.0, 0, 0]).label == "NEUTRAL"
    assert scheme.sentiment([0.9, 0.1, 0, 0, 0]).label == "NEGATIVE"


@pytest.mark.parametrize("labels", [{0: "LABEL_0", 1: "LABEL_1"}, {0: "joy", 1: "anger", 2: "fear"}])
def test_models_that_are_not_sentiment_classifiers_are_refused(labels: dict[int, str]) -> None:
    with pytest.raises(ModelUnavailable, match="do not name"):
        LabelScheme.from_labels(labels, neutral_band=0.3)


@pytest.fixture(scope="module")
def sst2_style_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised two-label (NEGATIVE/POSITIVE) model directory, built offline."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    directory = tmp_path_factory.mktemp("sst2-style")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    BertForSequenceClassification(config).save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(base_model_dir())).save_pretrained(str(directory))
    return directory


def test_analyzer_loads_any_model_directory(sst2_style_model: Path) -> None:
    analyzer = SentimentAnalyzer(str(sst2_style_model), neutral_band=0.3)
    results = analyzer.analyze(["what a lovely day", "terrible", "the box is on the table"])
    assert len(results) == 3
    for result in results:
        assert -1 <= result.polarity <= 1 and 0 <= result.score <= 1
        assert result.label == "NEUTRAL" if abs(result.polarity) < 0.3 else result.label != "NEUTRAL"
    assert analyzer.info.model == str(sst2_style_model) and len(analyzer.info.version) == 16
    assert analyzer.info.to_dict()["runtime"] == "torch"


TEXTS = ["what a lovely day", "terrible", "the box is on the table, next to the lamp by the window", ""]


def test_onnx_runtime_gives_torch_probabilities_from_a_graph_exported_once(
    sst2_style_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = SentimentAnalyzer(str(sst2_style_model)).probabilities(TEXTS)
    analyzer = SentimentAnalyzer(str(sst2_style_model), onnx_dir=tmp_path, threads=1)
    assert analyzer.info.runtime == "onnx"
    assert [p.name for p in tmp_path.iterdir()] == [f"{analyzer.info.version}-{runtime.EXPORT_VERSION}.onnx"]
    for batch in (TEXTS, TEXTS[:1], TEXTS[::-1]):  # padded rows, and a batch of one
        got = analyzer.probabilities(batch)
        want = [expected[TEXTS.index(t)] for t in batch]
        assert got == [pytest.approx(row, abs=1e-5) for row in want]

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(runtime, "export_graph", no_export)
    cached = SentimentAnalyzer(str(sst2_style_model), onnx_dir=tmp_path)
    assert cached.probabilities(TEXTS) == [pytest.approx(row, abs=1e-5) for row in expected]


def test_the_int8_graph_is_quantized_once_beside_the_fp32_graph(
    sst2_style_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyzer = SentimentAnalyzer(str(sst2_style_model), onnx_dir=tmp_path, int8=True)
    version = analyzer.info.version
    fp32, int8 = runtime.graph_path(tmp_path, version), runtime.graph_path(tmp_path, version, int8=True)
    assert analyzer.info.runtime == "onnx-int8" and sorted(tmp_path.iterdir()) == sorted([fp32, int8])
    assert int8.stat().st_size < fp32.stat().st_size / 2  # the weights are a byte each
    got = analyzer.probabilities(TEXTS)
    assert all(len(row) == 2 and sum(row) == pytest.approx(1, abs=1e-5) for row in got)
    assert got == [analyzer.probabilities([text])[0] for text in TEXTS]  # whatever it is batched with

    def no_quantize(*args: object) -> None:
        raise AssertionError("quantized again")

    monkeypatch.setattr(runtime, "quantize_graph", no_quantize)
    assert SentimentAnalyzer(str(sst2_style_model), onnx_dir=tmp_path, int8=True).probabilities(TEXTS) == got


def test_an_unwritable_graph_cache_still_runs_onnx(sst2_style_model: Path, tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    analyzer = SentimentAnalyzer(str(sst2_style_model), onnx_dir=not_a_directory / "onnx")
    assert analyzer.info.runtime == "onnx" and len(analyzer.analyze(TEXTS)) == len(TEXTS)


def test_texts_that_tokenize_alike_are_computed_once(sst2_style_model: Path) -> None:
    analyzer = SentimentAnalyzer(str(sst2_style_model), batch_size=2)
    classify = analyzer._classify
    rows: list[int] = []

    def counted(batch: runtime.Batch) -> runtime.Probabilities:
        rows.append(len(batch["input_ids"]))
        return classify(batch)

    analyzer._classify = counted
    texts = ["Terrible", "terrible", "what a lovely day", "terrible", "What a lovely day"]
    results = analyzer.probabilities(texts)
    assert sum(rows) == 2  # the model is uncased: two distinct token sequences
    assert results[0] == results[1] == results[3] and results[2] == results[4]
    assert results[0] == pytest.approx(analyzer.probabilities(["terrible"])[0], abs=1e-6)
    assert analyzer.probabilities([]) == []


def test_analyzer_says_in_one_line_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="cannot load sentiment model") as caught:
        SentimentAnalyzer(str(tmp_path / "nowhere"))
    assert "\n" not in caught.value.message


@pytest.mark.timeout(1800)
def test_trained_model_agrees_with_the_intended_labels_of_the_sample_calls(
    trained_model: Path, manifest_turns: list[Turn]
) -> None:
    analyzer = SentimentAnalyzer(str(trained_model))
    labels = [s.label for s in analyzer.analyze([t.text for t in manifest_turns])]
    agree = sum(label == t.sentiment for label, t in zip(labels, manifest_turns, strict=True))
    assert agree / len(manifest_turns) >= 0.8, list(
        zip(labels, [t.sentiment for t in manifest_turns], strict=True)
    )


@pytest.mark.timeout(1800)
def test_trained_model_labels_the_same_in_onnx_runtime_as_in_torch(
    trained_model: Path, manifest_turns: list[Turn], tmp_path: Path
) -> None:
    texts = [t.text for t in manifest_turns]
    variants = [
        " ".join(w for j, w in enumerate(t.split()) if j != i) for t in texts for i in range(len(t.split()))
    ]
    torch, onnx = (
        SentimentAnalyzer(str(trained_model)),
        SentimentAnalyzer(str(trained_model), onnx_dir=tmp_path),
    )
    expected, got = torch.analyze(texts + variants), onnx.analyze(texts + variants)
    assert [s.label for s in got] == [s.label for s in expected]
    assert [s.polarity for s in got] == [pytest.approx(s.polarity, abs=1e-5) for s in expected]


@pytest.mark.timeout(1800)
def test_the_int8_graph_of_the_trained_model_is_as_accurate_on_held_out_sentences(
    trained_model: Path, tmp_path: Path
) -> None:
    config = TrainConfig()
    _, held_out = load_corpus(fetch_sdist(default_cache_dir(os.environ) / "data")).split(
        config.held_out_percent
    )
    polar = [r for r in held_out if label_for(r.mean_rating, config.neutral_below) != "NEUTRAL"]
    texts = [asr_style(r.text) for r in polar]

    def accuracy(found: list[float]) -> float:
        return sum((p > 0) == (r.mean_rating > 0) for p, r in zip(found, polar, strict=True)) / len(polar)

    fp32 = SentimentAnalyzer(str(trained_model), onnx_dir=tmp_path).polarities(texts)
    int8 = SentimentAnalyzer(str(trained_model), onnx_dir=tmp_path, int8=True).polarities(texts)
    assert len(polar) > 300
    assert accuracy(int8) >= accuracy(fp32) - 0.01
    # weights scaled per output channel keep each polarity close (one scale per weight moved them 0.06)
    assert sum(abs(a - b) for a, b in zip(int8, fp32, strict=True)) / len(texts) < 0.04
