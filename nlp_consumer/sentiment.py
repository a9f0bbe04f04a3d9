"""POSITIVE/NEUTRAL/NEGATIVE sentiment from any Hugging Face sequence-classification sentiment model.

``SentimentAnalyzer`` loads a model directory or a hub id found in the local Hugging Face cache
(never downloads: ``HF_HUB_OFFLINE=1``, ``local_files_only``). The model's ``id2label`` names
decide how its scores become a ``Sentiment``:

* three labels named positive / neutral / negative (any case, e.g. ``LABEL_POS`` or ``negative``):
  the label is the most probable class, polarity = p(positive) − p(negative);
* two labels named positive / negative (SST-2 style): polarity = p(positive) − p(negative), and the
  label is NEUTRAL when ``|polarity| < neutral_band``;
* star ratings (``1 star`` … ``5 stars``): polarity = the expected rating mapped onto [-1, 1], the
  label as for two labels.

``score`` is the confidence of the label: its probability, or ``1 − |polarity|`` for a NEUTRAL
that comes from the band. Anything else is refused with ``ModelUnavailable``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nlp_consumer.errors import ModelUnavailable
from nlp_consumer.runtime import Batch, Classifier, TorchClassifier, onnx_classifier

logger = logging.getLogger(__name__)

POSITIVE, NEUTRAL, NEGATIVE = "POSITIVE", "NEUTRAL", "NEGATIVE"
_STARS = re.compile(r"^\s*(\d+)\s*stars?\s*$", re.IGNORECASE)
WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: str
    score: float  # confidence of the label, 0 … 1
    polarity: float  # -1 (negative) … +1 (positive)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 4), "polarity": round(self.polarity, 4)}


@dataclass(frozen=True, slots=True)
class LabelScheme:
    """How class probabilities become polarity and label; built from a model's ``id2label``."""

    valence: tuple[float, ...]  # per class, -1 … +1
    neutral_class: int | None  # the NEUTRAL class of a three-way model
    neutral_band: float

    @classmethod
    def from_labels(cls, id2label: dict[int, str], neutral_band: float) -> LabelScheme:
        names = [str(id2label[i]) for i in sorted(id2label)]
        stars = [_STARS.match(n) for n in names]
        if len(names) >= 2 and all(stars):
            counts = [int(m.group(1)) for m in stars if m]
            low, high = min(counts), max(counts)
            if high > low:
                return cls(tuple(2 * (c - low) / (high - low) - 1 for c in counts), None, neutral_band)
        kinds = [_kind(n) for n in names]
        polar = {POSITIVE, NEGATIVE}
        if len(names) == 2 and set(kinds) == polar:
            return cls(tuple(1.0 if k == POSITIVE else -1.0 for k in kinds), None, neutral_band)
        if len(names) == 3 and set(kinds) == polar | {NEUTRAL}:
            valence = tuple({POSITIVE: 1.0, NEGATIVE: -1.0, NEUTRAL: 0.0}[k] for k in kinds if k)
            return cls(valence, kinds.index(NEUTRAL), neutral_band)
        raise ModelUnavailable(
            f"labels {', '.join(names)} do not name a positive/negative (/neutral) sentiment"
        )

    def sentiment(self, probabilities: Sequence[float]) -> Sentiment:
        polarity = max(-1.0, min(1.0, sum(p * v for p, v in zip(probabilities, self.valence, strict=True))))
        if self.neutral_class is not None:
            best = max(range(len(probabilities)), key=probabilities.__getitem__)
            label = (
                NEUTRAL if best == self.neutral_class else (POSITIVE if self.valence[best] > 0 else NEGATIVE)
            )
            return Sentiment(label, float(probabilities[best]), polarity)
        if abs(polarity) < self.neutral_band:
            return Sentiment(NEUTRAL, 1.0 - abs(polarity), polarity)
        label = POSITIVE if polarity > 0 else NEGATIVE
        side = sum(
            p for p, v in zip(probabilities, self.valence, strict=True) if (v > 0) == (polarity > 0) and v
        )
        return Sentiment(label, float(side), polarity)


def _kind(name: str) -> str | None:
    lowered = name.lower()
    for kind, stem in ((POSITIVE, "pos"), (NEGATIVE, "neg"), (NEUTRAL, "neu")):
        if stem in lowered:
            return kind
    return None


@dataclass(frozen=True, slots=True)
class AnalyzerInfo:
    """Which model enriched an event: ``model`` as configured, ``version`` a content hash or revision,
    ``runtime`` where its forward pass ran (``torch``, ``onnx`` fp32 or ``onnx-int8``: polarities
    differ slightly between them)."""

    model: str
    version: str
    runtime: str = "torch"

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "version": self.version, "runtime": self.runtime}


class SentimentAnalyzer:
    """Batched sentiment of short texts with one loaded model (thread-confined: one per consumer).

    With ``onnx_dir`` the forward pass runs in ONNX Runtime on a graph cached there
    (``runtime.py``; ``threads`` intra-op threads, 0: one per core; ``int8``: its weights
    quantized, one row per pass), else in torch. Texts that tokenize alike (repeats, or case
    differences for an uncased model) are computed once.
    """

    def __init__(
        self,
        model: str,
        neutral_band: float = 0.3,
        max_length: int = 64,
        batch_size: int = 64,
        onnx_dir: Path | None = None,
        threads: int = 0,
        int8: bool = False,
    ) -> None:
        self._tokenizer, encoder = load_local_model(model, "sentiment model", classifier=True)
        self.scheme = LabelScheme.from_labels(dict(encoder.config.id2label), neutral_band)
        version = _version(model, encoder.config)
        self.max_length = max_length
        self.batch_size = batch_size
        self._input_names = list(self._tokenizer.model_input_names)
        self._pad_values = {
            "input_ids": self._tokenizer.pad_token_id or 0,
            "token_type_ids": self._tokenizer.pad_token_type_id,
        }
        self._classify: Classifier = TorchClassifier(encoder)
        runtime = "torch"
        if onnx_dir is not None and version != "unknown":
            self._classify = onnx_classifier(encoder, self._input_names, version, onnx_dir, threads, int8)
            runtime = "onnx-int8" if int8 else "onnx"
            if int8:  # activations are scaled per forward pass: a row alone does not depend on its batch
                self.batch_size = 1
        self.info = AnalyzerInfo(model, version, runtime)

    def analyze(self, texts: Sequence[str]) -> list[Sentiment]:
        """One ``Sentiment`` per text, in order."""
        return [self.scheme.sentiment(p) for p in self.probabilities(texts)]

    def polarities(self, texts: Sequence[str]) -> list[float]:
        return [s.polarity for s in self.analyze(texts)]

    def probabilities(self, texts: Sequence[str]) -> list[list[float]]:
        """Class probabilities per text; each distinct token sequence is computed once, and
        sequences of similar length share a forward pass (little padding)."""
        if not texts:
            return []
        encoded = self._tokenizer(list(texts), truncation=True, max_length=self.max_length)
        distinct: dict[tuple[int, ...], int] = {}  # token ids → row of the first text that has them
        rows = [distinct.setdefault(tuple(ids), i) for i, ids in enumerate(encoded["input_ids"])]
        order = sorted(distinct.values(), key=lambda i: len(encoded["input_ids"][i]))
        result: dict[int, list[float]] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            probabilities = self._classify(self._padded(encoded, chunk)).tolist()
            result.update(zip(chunk, probabilities, strict=True))
        return [result[row] for row in rows]

    def _padded(self, encoded: Mapping[str, list[list[int]]], rows: Sequence[int]) -> Batch:
        """The model inputs of ``rows``, padded as the tokenizer pads (its side, its pad ids)."""
        width = max(len(encoded["input_ids"][i]) for i in rows)
        batch = {}
        for name in self._input_names:
            array = np.full((len(rows), width), self._pad_values.get(name, 0), dtype=np.int64)
            for r, i in enumerate(rows):
                values = encoded[name][i]
                if self._tokenizer.padding_side == "left":
                    array[r, width - len(values) :] = values
                else:
                    array[r, : len(values)] = values
            batch[name] = array
        return batch


def load_local_model(model: str, what: str, classifier: bool = False) -> tuple[Any, Any]:
    """``model``'s tokenizer and (sequence classification, else bare) encoder from local files
    only, in evaluation mode; a model that cannot be loaded is ``ModelUnavailable`` naming ``what``."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # models are installed or trained offline, never downloaded
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    kind = AutoModelForSequenceClassification if classifier else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        encoder = kind.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot load {what} {model}: {first}") from None
    encoder.eval()
    return tokenizer, encoder


def _version(model: str, config: Any) -> str:
    """The training key of a model built here, the hub revision, or a hash of the weights."""
    directory = Path(model)
    record = directory / "training.json"
    if record.is_file():
        return str(json.loads(record.read_text(encoding="utf-8"))["key"])
    if directory.is_dir():
        digest = hashlib.sha256()
        for name in WEIGHT_FILES:
            if (directory / name).is_file():
                digest.update((directory / name).read_bytes())
        return digest.hexdigest()[:16]
    revision = getattr(config, "_commit_hash", None)
    return str(revision) if revision else "unknown"
