"""Word error rate of an engine against a reference manifest (``data/manifest.tsv``).

``python -m devtools.evaluation [MANIFEST] [--engine E] [--model M] [--json]`` decodes each
whole file of the engine's language as the service would stream it and prints WER per file and
overall.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

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


DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "data" / "manifest.tsv"


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file or line."""


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


# --- python -m devtools.evaluation ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.evaluation", description="Word error rate.")
    parser.add_argument("manifest", nargs="?", type=Path, default=DEFAULT_MANIFEST, help="TSV manifest")
    parser.add_argument("--engine", choices=("vosk", "whisper"), help="recognizer engine (default: whisper)")
    parser.add_argument("--model", help="model name or alias (default: the engine's default)")
    parser.add_argument("--model-dir", type=Path, help="directory of downloaded models (DECODER_MODEL_DIR)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    return parser


def evaluate(
    manifest: Path, engine_name: str | None, model: str | None, model_dir: Path | None
) -> dict[str, object]:
    """Decode each whole file of the engine's language in the manifest and score it."""
    from decoder_api.cli import read_input, transcribe
    from decoder_api.config import load_settings
    from decoder_api.engines import load_engine, native_rate_hz

    settings = load_settings(
        dict(os.environ), {"engine": engine_name, "model": model, "model_dir": model_dir}
    )
    engine = load_engine(settings)
    language = engine.model.language
    entries = whole_files(load_manifest(manifest), language)
    if not entries:
        raise ManifestError(f"{manifest}: no files in language '{language}' to evaluate")
    scores = []
    for entry in entries:
        audio = read_input(entry.path, native_rate_hz(engine), 16000)
        transcript = transcribe(engine, audio, settings.chunk_ms, words=False, label=entry.path.name)
        scores.append(score(entry.path, entry.transcript, transcript.text, entry.language))
    overall = word_error_rate([s.reference for s in scores], [s.hypothesis for s in scores], language)
    files = [
        {"file": str(s.path), "wer": s.wer, "words": s.ref_words, "hypothesis": s.hypothesis} for s in scores
    ]
    return {"engine": engine.name, "model": engine.model.name, "wer": overall, "files": files}


def print_table(result: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    files = result["files"]
    assert isinstance(files, list)
    table = Table(title=f"WER — {result['engine']} / {result['model']}")
    for column in ("file", "words", "WER"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for row in files:
        table.add_row(Path(row["file"]).name, str(row["words"]), f"{row['wer']:.1%}")
    words = sum(int(row["words"]) for row in files)
    table.add_row("[bold]overall[/bold]", str(words), f"[bold]{result['wer']:.1%}[/bold]")
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    from decoder_api.errors import DecoderError

    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args.manifest, args.engine, args.model, args.model_dir)
    except (ManifestError, DecoderError) as exc:
        message = exc.message if isinstance(exc, DecoderError) else str(exc)
        print(f"error: {message.strip().splitlines()[0]}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
