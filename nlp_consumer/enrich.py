"""The enrichment pipeline: transcript.v1 documents in, transcript.enriched.v1 documents out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nlp_consumer.config import ModelSettings
from nlp_consumer.events import ENRICHED_SCHEMA, now_rfc3339
from nlp_consumer.explain import OcclusionExplainer, extract_keywords
from nlp_consumer.runtime import graph_dir
from nlp_consumer.sentiment import SentimentAnalyzer

logger = logging.getLogger(__name__)


class Enricher:
    """Sentiment, explanation and keywords of a batch of events, with two model calls per batch."""

    def __init__(
        self,
        analyzer: SentimentAnalyzer,
        explainer: OcclusionExplainer,
        keyword_limit: int = 3,
        clock: Callable[[], str] = now_rfc3339,
    ) -> None:
        self.analyzer = analyzer
        self.explainer = explainer
        self.keyword_limit = keyword_limit
        self._clock = clock

    def enrich(self, documents: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One enriched document per input document, in order, each valid against the schema: the
        tests check every one they read (test_consumer), rather than each being checked here."""
        if not documents:
            return []
        texts = [str(d["text"]) for d in documents]
        sentiments = self.analyzer.analyze(texts)
        explanations = self.explainer.explain(texts, [s.polarity for s in sentiments])
        stamp = self._clock()
        analyzer = self.analyzer.info.to_dict()
        enriched = []
        for document, text, sentiment, words in zip(documents, texts, sentiments, explanations, strict=True):
            result = dict(document) | {
                "schema": ENRICHED_SCHEMA,
                "sentiment": sentiment.to_dict(),
                "explanation": [w.to_dict() for w in words],
                "keywords": extract_keywords(text, self.keyword_limit),
                "analyzer": analyzer,
                "enriched_at": stamp,
            }
            enriched.append(result)
        return enriched


def load_enricher(settings: ModelSettings) -> Enricher:
    """The configured model (default: the one ``python -m nlp_consumer.train`` built) behind an Enricher."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    model = settings.model
    if model is None:
        from nlp_consumer.train import default_model_dir

        model = str(default_model_dir(settings.cache_dir))
    onnx_dir = graph_dir(settings.cache_dir) if settings.onnx else None
    analyzer = SentimentAnalyzer(
        model,
        neutral_band=settings.neutral_band,
        onnx_dir=onnx_dir,
        threads=settings.onnx_threads,
        int8=settings.onnx_int8,
    )
    explainer = OcclusionExplainer(analyzer.polarities, top_k=settings.explain_top_k)
    info = analyzer.info
    logger.info("sentiment_model model=%s version=%s runtime=%s", info.model, info.version, info.runtime)
    return Enricher(analyzer, explainer, settings.keyword_limit)
