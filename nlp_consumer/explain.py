"""Why a sentence got its sentiment, and what it is about.

Explanations (``OcclusionExplainer``): a word's weight is how much the polarity falls when that
word alone is dropped from the sentence, ``polarity(text) − polarity(text without word)``, so
positive weights pushed towards POSITIVE and negative ones towards NEGATIVE. In the spirit of
anchor explanations only the few words that move the decision most are kept (``top_k``, at least
``min_weight``). All variants of all sentences of a batch go through the model in one call.
Grammatical function words (articles, pronouns, prepositions, auxiliaries: ``FUNCTION_WORDS``)
are not occluded: they never carry the sentiment of a sentence, and skipping them takes about
half the model work out of an explanation. Negators, intensifiers and politeness words ("not",
"never", "very", "please", "thanks") are not function words here and are always weighed.

Keywords (``extract_keywords``): a small RAKE (rapid automatic keyword extraction) without any
language data download. Candidate phrases are the runs of words between stop words and
punctuation (at most ``MAX_PHRASE_WORDS`` words); a phrase scores the sum over its words of
degree ÷ frequency (longer content phrases score higher), ties go to the earlier phrase. The stop
list holds English function words plus the fillers and generic verbs of conversation ("calling",
"really", "thank"), so what remains is mostly nouns and noun phrases. Deterministic.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_PHRASE_WORDS = 3
_WORD_EDGE = re.compile(r"^[^\w']+|[^\w']+$")
_PHRASE_BREAK = re.compile(r"[^\w\s']+")
_TOKEN = re.compile(r"[\w']+")

STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
    during each even ever every few for from further had hadn't has hasn't have haven't having he he'd he'll
    he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it
    it's its itself just let's me more most mustn't my myself no nor not now of off on once only or other
    ought our ours ourselves out over own same shan't she she'd she'll she's should shouldn't so some such
    than that that's the their theirs them themselves then there there's these they they'd they'll they're
    they've this those through to too under until up upon us very was wasn't we we'd we'll we're we've were
    weren't what what's when when's where where's which while who who's whom why why's will with won't would
    wouldn't you you'd you'll you're you've your yours yourself yourselves
    yes yeah yep no nope ok okay oh ah uh um hmm hello hi hey bye goodbye please thanks thank thanking sure
    well right alright actually basically really just still already again maybe perhaps quite pretty rather
    much many lot lots something anything nothing everything someone anyone everyone thing things way
    get gets got getting go goes going gone went come comes came make makes made take takes took give gave
    say says said tell told ask asked call calling called want wanted wants need needed needs like liked
    know knew think thought see saw look looking try tried trying keep keeps kept let put would could should
    might must may shall will can one two also today tomorrow yesterday now soon later always never usually
    supposed placed sent send sending received receive waited wait bring brought plus arrive arrived shown
    show changed change use used pick picked done nobody somebody anybody
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


FUNCTION_WORDS = frozenset(
    """
    a an the of to in on at for by with from into onto about as than and or so if then that this these
    those there here it its it's i i'm i've i'd i'll me my mine myself you you're you've your yours we
    we're we've our ours us he he's him his she she's her hers they they're they've them their theirs
    is am are was were be been being do does did have has had having will would shall should can could
    may might must which who whom whose what when where how
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


@dataclass(frozen=True, slots=True)
class WordWeight:
    word: str
    weight: float  # polarity change the word causes, -2 … +2
    index: int  # position among the whitespace-separated tokens of the text

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "weight": round(self.weight, 4), "index": self.index}


class OcclusionExplainer:
    """Word weights by leave-one-word-out, for whole batches at once."""

    def __init__(
        self,
        polarities: Callable[[Sequence[str]], list[float]],
        top_k: int = 5,
        min_weight: float = 0.1,
        max_words: int = 40,
    ) -> None:
        self._polarities = polarities
        self.top_k = top_k
        self.min_weight = min_weight
        self.max_words = max_words

    def explain(self, texts: Sequence[str], polarities: Sequence[float]) -> list[list[WordWeight]]:
        """For each text (with its polarity already computed), its most influential words."""
        variants: list[str] = []
        owners: list[tuple[int, int, str]] = []  # (text, token index, word)
        for t, text in enumerate(texts):
            tokens = text.split()
            for i, token in enumerate(tokens[: self.max_words]):
                word = _WORD_EDGE.sub("", token)
                if word and word.lower() not in FUNCTION_WORDS:
                    variants.append(" ".join(tokens[:i] + tokens[i + 1 :]))
                    owners.append((t, i, word))
        weights: list[list[WordWeight]] = [[] for _ in texts]
        for (t, i, word), without in zip(owners, self._polarities(variants) if variants else [], strict=True):
            weights[t].append(WordWeight(word, polarities[t] - without, i))
        return [self._strongest(w) for w in weights]

    def _strongest(self, weights: list[WordWeight]) -> list[WordWeight]:
        ranked = sorted(weights, key=lambda w: (-abs(w.weight), w.index))
        return [w for w in ranked[: self.top_k] if abs(w.weight) >= self.min_weight]


def extract_keywords(text: str, limit: int = 3) -> list[str]:
    """Up to ``limit`` key phrases of ``text``, best first (lower case)."""
    phrases: list[tuple[str, ...]] = []
    for fragment in _PHRASE_BREAK.split(text.lower()):
        run: list[str] = []
        for word in [*_TOKEN.findall(fragment), ""]:
            if word and _is_content(word):
                run.append(word.strip("'"))
                continue
            phrases.extend(tuple(run[i : i + MAX_PHRASE_WORDS]) for i in range(0, len(run), MAX_PHRASE_WORDS))
            run = []
    frequency: Counter[str] = Counter()
    degree: Counter[str] = Counter()
    for phrase in phrases:
        for word in phrase:
            frequency[word] += 1
            degree[word] += len(phrase)
    scored: dict[str, tuple[float, int]] = {}
    for position, phrase in enumerate(phrases):
        key = " ".join(phrase)
        if key not in scored:
            scored[key] = (sum(degree[w] / frequency[w] for w in phrase), position)
    ranked = sorted(scored.items(), key=lambda item: (-item[1][0], item[1][1]))
    return [phrase for phrase, _ in ranked[:limit]]


def _is_content(word: str) -> bool:
    bare = word.strip("'")
    return len(bare) > 1 and bare not in STOP_WORDS and not bare.isdigit() and not bare.endswith("ly")
