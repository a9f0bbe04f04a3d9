"""Occlusion explanations and key-phrase extraction."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from nlp_consumer.enrich import Enricher
from nlp_consumer.explain import OcclusionExplainer, extract_keywords

LEXICON = {"great": 0.8, "awful": -0.9, "not": -0.2}


def lexicon_polarity(texts: Sequence[str]) -> list[float]:
    return [
        max(-1.0, min(1.0, sum(LEXICON.get(w.strip(",.!?").lower(), 0.0) for w in t.split()))) for t in texts
    ]


def test_occlusion_weights_are_the_polarity_each_word_carries() -> None:
    calls: list[int] = []

    def counted(texts: Sequence[str]) -> list[float]:
        calls.append(len(texts))
        return lexicon_polarity(texts)

    explainer = OcclusionExplainer(counted, top_k=3, min_weight=0.05)
    texts = ["The food was great, the service awful.", "Nothing to see here"]
    explanations = explainer.explain(texts, lexicon_polarity(texts))

    # every variant of every text in one call; function words (the, was, to, here) are not occluded
    assert calls == [4 + 2]
    words = [(w.word, round(w.weight, 2), w.index) for w in explanations[0]]
    assert words == [("awful", -0.9, 6), ("great", 0.8, 3)]
    assert explanations[1] == []  # nothing moves a neutral sentence


def test_negators_are_weighed_and_function_words_are_not() -> None:
    seen: list[str] = []

    def recorded(texts: Sequence[str]) -> list[float]:
        seen.extend(texts)
        return lexicon_polarity(texts)

    text = "It was not great at all"
    [words] = OcclusionExplainer(recorded, top_k=5, min_weight=0.05).explain([text], lexicon_polarity([text]))
    assert [(w.word, round(w.weight, 2)) for w in words] == [("great", 0.8), ("not", -0.2)]
    assert seen == ["It was great at all", "It was not at all", "It was not great at"]


def test_occlusion_strips_punctuation_from_words_and_keeps_token_positions() -> None:
    explainer = OcclusionExplainer(lexicon_polarity, top_k=5)
    [words] = explainer.explain(["Oh, that is great!"], lexicon_polarity(["Oh, that is great!"]))
    assert [(w.word, w.index) for w in words] == [("great", 3)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi, I received a coffee machine from your shop yesterday.", ["coffee machine", "shop"]),
        ("Please email me the return label.", ["return label", "email"]),
        ("Yes, the shipping address is still the same as before.", ["shipping address"]),
        ("No, that is everything for today.", []),
        ("", []),
    ],
)
def test_keywords_are_key_phrases_without_stop_words(text: str, expected: list[str]) -> None:
    assert extract_keywords(text) == expected


def test_keywords_are_deterministic_and_limited() -> None:
    text = "The box was crushed and the glass jug was broken into pieces."
    assert extract_keywords(text, limit=2) == extract_keywords(text, limit=2)
    assert len(extract_keywords(text, limit=2)) == 2
    assert extract_keywords(text)[0] == "glass jug"


@pytest.mark.timeout(1800)
def test_real_model_explains_with_the_sentiment_words(enricher: Enricher) -> None:
    text = "This is really frustrating, because I needed it for my daughter's birthday."
    [sentiment] = enricher.analyzer.analyze([text])
    [words] = enricher.explainer.explain([text], [sentiment.polarity])
    assert sentiment.label == "NEGATIVE"
    assert words[0].word == "frustrating" and words[0].weight < 0
