"""Word error rate of an engine against a reference manifest (``data/manifest.tsv``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

from decoder_api.errors import DecoderError

MANIFEST_COLUMNS = (
    "file",
    "turn",
    "start_s",
    "seconds",
    "language",
    "sentiment",
    "transcript",
    "source",
    "licence",
)

# Whisper's normalisers: for English, case, punctuation, spelled-out numbers, contractions
# and British/American spellings are made uniform on both sides before counting errors;
# other languages get the basic one (case, punctuation, symbols).
_ENGLISH = EnglishTextNormalizer()
_BASIC = BasicTextNormalizer()


class ManifestError(DecoderError):
    code = "invalid_manifest"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One row of the manifest: a whole file (``turn`` None) or one turn of a call."""

    path: Path
    turn: int | None
    start_s: float
    seconds: float
    language: str
    sentiment: str
    transcript: str
    source: str
    licence: str


@dataclass(frozen=True, slots=True)
class FileScore:
    path: Path
    reference: str
    hypothesis: str
    wer: float
    ref_words: int


def load_manifest(path: Path) -> list[ManifestEntry]:
    """Parse a manifest; file paths are relative to the manifest's directory."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ManifestError(f"{path}: missing columns {', '.join(sorted(missing))}")
        return [_entry(row, path.parent, n) for n, row in enumerate(reader, start=2)]


def _entry(row: dict[str, str], base: Path, line: int) -> ManifestEntry:
    try:
        return ManifestEntry(
            path=base / row["file"],
            turn=int(row["turn"]) if row["turn"] else None,
            start_s=float(row["start_s"] or 0),
            seconds=float(row["seconds"]),
            language=row["language"],
            sentiment=row["sentiment"],
            transcript=row["transcript"],
            source=row["source"],
            licence=row["licence"],
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest line {line}: {exc}") from exc


def whole_files(entries: list[ManifestEntry], language: str) -> list[ManifestEntry]:
    """Whole-file rows whose language matches the engine's (``en`` matches ``en-us``)."""
    lang = language.split("-")[0].lower()
    return [e for e in entries if e.turn is None and e.language.split("-")[0].lower() == lang]


def normalize(text: str, language: str = "en") -> str:
    normalizer = _ENGLISH if language.split("-")[0].lower() == "en" else _BASIC
    return " ".join(str(normalizer(text)).split())


def score(path: Path, reference: str, hypothesis: str, language: str = "en") -> FileScore:
    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    return FileScore(path, ref, hyp, word_error_rate([ref], [hyp], language), len(ref.split()))


def word_error_rate(references: list[str], hypotheses: list[str], language: str = "en") -> float:
    """Corpus WER: total edits over total reference words, after normalisation."""
    refs = [normalize(r, language) for r in references]
    hyps = [normalize(h, language) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))
