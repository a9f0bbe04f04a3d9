"""Vosk/Kaldi engine: one shared ``Model`` per process, one ``KaldiRecognizer`` per stream.

The recognizer is reused across utterances (a fresh one per utterance costs 5-10x more CPU
while its decoding-graph cache warms up). Vosk's JSON strings are parsed here and never
leave this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import vosk

from decoder_api.engines.base import (
    Final,
    InvalidOptions,
    ModelInfo,
    RecognizerOptions,
    UnsupportedSampleRate,
    Word,
    check_pcm,
    samples_to_ms,
)
from decoder_api.engines.graphs import LOOKAHEAD_FILES, STATIC_FILES, choose_graph, has_lookahead_pair
from decoder_api.engines.settings import VoskSettings
from decoder_api.errors import ModelNotFound

logger = logging.getLogger(__name__)

MIN_RATE_HZ = 8000
MAX_RATE_HZ = 48000
UNKNOWN_WORD = "[unk]"
PRIMER = b"\0\0" * 160  # 10 ms at 16 kHz


@dataclass(frozen=True, slots=True)
class ModelRates:
    """The sample rates a Vosk model accepts, read from its ``conf/mfcc.conf``."""

    native_hz: int
    allow_upsample: bool
    allow_downsample: bool

    def accepts(self, rate_hz: int) -> bool:
        if rate_hz == self.native_hz:
            return True
        if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
            return False
        return self.allow_upsample if rate_hz < self.native_hz else self.allow_downsample


def read_model_rates(model_dir: Path) -> ModelRates:
    """Parse the feature config; Kaldi's defaults apply where a flag is absent."""
    conf = model_dir / "conf" / "mfcc.conf"
    text = conf.read_text(encoding="utf-8") if conf.is_file() else ""
    flags = dict(re.findall(r"^--([\w.-]+)=(\S+)", text, flags=re.MULTILINE))
    return ModelRates(
        native_hz=int(float(flags.get("sample-frequency", "16000"))),
        allow_upsample=flags.get("allow-upsample", "false") == "true",
        allow_downsample=flags.get("allow-downsample", "false") == "true",
    )


class Dither:
    """Reproducible dither: Gaussian noise from a fixed table, indexed by stream sample position."""

    TABLE_SAMPLES = 1 << 16

    def __init__(self, amount: float, seed: int = 0) -> None:
        noise = np.random.default_rng(seed).standard_normal(self.TABLE_SAMPLES) * amount
        self._table = np.round(noise).astype(np.int32)
        self.enabled = amount > 0

    def apply(self, pcm: bytes, position: int) -> bytes:
        """``pcm`` with noise added; ``position`` is the stream index of its first sample."""
        if not self.enabled:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
        index = (np.arange(samples.size) + position) % self.TABLE_SAMPLES
        return np.clip(samples + self._table[index], -32768, 32767).astype("<i2").tobytes()


def with_dither(model_dir: Path, dither: float | None, static_graph: Path | None = None) -> Path:
    """The model dir itself, or a symlinked copy whose ``mfcc.conf`` sets ``--dither`` and whose
    ``graph/`` is the ``static_graph`` built for it (``graphs.py``) instead of the lookahead pair.

    The copy lives in the temp dir, is keyed by model path, value and graph, and is built
    atomically so concurrent processes can share it.
    """
    conf = model_dir / "conf" / "mfcc.conf"
    if (dither is None or not conf.is_file()) and static_graph is None:
        return model_dir
    text = conf.read_text(encoding="utf-8") if conf.is_file() else ""
    if dither is not None and conf.is_file():
        text = (
            re.sub(r"^--dither=.*\n?", "", text, flags=re.MULTILINE).rstrip("\n") + f"\n--dither={dither}\n"
        )
    graph = static_graph.resolve() if static_graph is not None else ""
    key = hashlib.sha256(f"{model_dir.resolve()}\0{text}\0{graph}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"decoder_api-vosk-{key}"
    if not target.is_dir():
        _build_overlay(model_dir, text, target, static_graph)
    return target


def _build_overlay(model_dir: Path, mfcc_conf: str, target: Path, static_graph: Path | None) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    staging.chmod(0o755)
    replaced = {"conf": ("mfcc.conf",)} | ({"graph": LOOKAHEAD_FILES} if static_graph else {})
    try:
        for entry in model_dir.resolve().iterdir():
            if entry.name not in replaced:
                (staging / entry.name).symlink_to(entry)
        for name, left_out in replaced.items():
            (staging / name).mkdir()
            for entry in (model_dir / name).resolve().iterdir():
                if entry.name not in left_out:
                    (staging / name / entry.name).symlink_to(entry)
        if mfcc_conf:
            (staging / "conf" / "mfcc.conf").write_text(mfcc_conf, encoding="utf-8")
        built = [static_graph / "graph" / name for name in STATIC_FILES] if static_graph else []
        for path in built:
            (staging / "graph" / path.name).symlink_to(path.resolve())
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_malloc_trim() -> Any:
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    return getattr(libc, "malloc_trim", None)  # glibc only


_MALLOC_TRIM = _load_malloc_trim()


def release_free_heap() -> None:
    """Hand the heap's free pages back to the OS (``malloc_trim(0)``; a no-op without glibc).

    A freed ``KaldiRecognizer``'s tens of MiB (mostly its lookahead-composition cache) stay
    resident as free heap otherwise: glibc returns memory only from the top of the main arena.
    It takes milliseconds, so it runs only when a recognizer is really freed, not when a
    session hands one back to the pool.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def supports_grammar(model_dir: Path) -> bool:
    """Only models with a separate lookahead graph (HCLr + Gr) accept a runtime phrase list."""
    return has_lookahead_pair(model_dir)


class VoskEngine:
    """A loaded Vosk model shared by every stream in the process."""

    name = "vosk"

    def __init__(self, model: ModelInfo, settings: VoskSettings | None = None) -> None:
        settings = settings or VoskSettings()
        path = Path(model.path)
        if not path.is_dir():
            raise ModelNotFound(f"Vosk model directory {path} does not exist")
        vosk.SetLogLevel(settings.log_level)
        self.model = model
        self.rates = read_model_rates(path)
        self.grammar = supports_grammar(path)
        static = choose_graph(path, model.name, settings.graph, settings.graph_dir)
        # What every session without a phrase list decodes on: "static" (HCLG built for this
        # model, shared by all recognizers) or the model's own graph ("lookahead" pair, or the
        # static graph a big model ships: "model").
        self.graph = "static" if static else "lookahead" if self.grammar else "model"
        self._model = vosk.Model(str(with_dither(path, 0.0, static)))
        self._lookahead: vosk.Model | None = None if static else self._model
        self._lookahead_lock = threading.Lock()
        self._dither = Dither(settings.dither)
        logger.info("vosk_graph model=%s graph=%s", model.name, self.graph)

    def create(self, options: RecognizerOptions) -> VoskRecognizer:
        if not self.rates.accepts(options.sample_rate_hz):
            raise UnsupportedSampleRate(
                f"model {self.model.name} cannot take {options.sample_rate_hz} Hz audio "
                f"(native {self.rates.native_hz} Hz)",
                sample_rate=options.sample_rate_hz,
            )
        if options.beam_size is not None:
            raise InvalidOptions("the vosk engine's beam is set by its model; leave beam_size unset")
        return VoskRecognizer(self._new_kaldi(options), options, self._dither)

    def close(self) -> None:
        self._model = self._lookahead = None

    def in_vocabulary(self, word: str) -> bool:
        return bool(self._model.vosk_model_find_word(word) >= 0)

    def _new_kaldi(self, options: RecognizerOptions) -> vosk.KaldiRecognizer:
        if options.phrases is None:
            kaldi = vosk.KaldiRecognizer(self._model, options.sample_rate_hz)
        else:
            grammar = self._grammar(options.phrases)
            kaldi = vosk.KaldiRecognizer(self._lookahead_model(), options.sample_rate_hz, grammar)
        kaldi.SetWords(True)
        if options.max_alternatives:
            kaldi.SetMaxAlternatives(options.max_alternatives)
        return kaldi

    def _lookahead_model(self) -> vosk.Model:
        """The model on its lookahead pair, which a phrase list needs: the loaded model, or (over a
        static graph) the pair loaded once, on the first phrase list."""
        with self._lookahead_lock:
            if self._lookahead is None:
                logger.info("vosk_lookahead_load model=%s reason=phrase_list", self.model.name)
                self._lookahead = vosk.Model(str(with_dither(Path(self.model.path), 0.0)))
            return self._lookahead

    def _grammar(self, phrases: tuple[str, ...]) -> str:
        if not self.grammar:
            raise InvalidOptions(f"model {self.model.name} does not support a phrase list")
        kept = [p for p in (self._known_words(p) for p in phrases) if p]
        if not kept:
            raise InvalidOptions("none of the phrases uses a word the model knows")
        if self.in_vocabulary(UNKNOWN_WORD):
            kept.append(UNKNOWN_WORD)
        return json.dumps(kept, ensure_ascii=False)

    def _known_words(self, phrase: str) -> str:
        words = phrase.lower().split()
        known = [w for w in words if self.in_vocabulary(w)]
        if len(known) != len(words):
            logger.info("phrase_words_dropped count=%d", len(words) - len(known))
        return " ".join(known)


class VoskRecognizer:
    """One stream on a shared model. Times are stream time (ms since the first sample).

    Every utterance is decoded from a fresh Kaldi feature pipeline and decoder: after each
    final (and on reset/restart) Kaldi is driven into its "finalized" state, which makes it
    rebuild both on the next sample. The state at an utterance's start is therefore that of
    a new recognizer, so the audio since the last final, replayed into any recognizer placed
    at the same stream position (``resume``), decodes to exactly the same results — this is
    what lets another instance take a call over. The warm decoding-graph cache survives.
    """

    def __init__(self, kaldi: vosk.KaldiRecognizer, options: RecognizerOptions, dither: Dither) -> None:
        self._kaldi = kaldi
        self._options = options
        self._dither = dither
        self._next_utterance = 0
        self._samples = 0
        self._kaldi_samples = 0
        self._utterance_start = 0  # stream samples: where the open utterance began (the last boundary)
        self._partial = ""

    @property
    def sample_rate_hz(self) -> int:
        return self._options.sample_rate_hz

    @property
    def audio_ms(self) -> int:
        return samples_to_ms(self._samples, self.sample_rate_hz)

    def accept(self, pcm: bytes) -> list[Final]:
        check_pcm(pcm)
        if not pcm:
            return []
        dithered = self._dither.apply(pcm, self._samples)
        self._advance(len(pcm) // 2)
        if self._kaldi.AcceptWaveform(dithered):
            finals = self._finals(self._kaldi.Result())
            self._new_utterance()
            self._utterance_start = self._samples
            return finals
        if self._options.partials:
            self._partial = str(json.loads(self._kaldi.PartialResult()).get("partial", ""))
        return []

    def partial(self) -> str:
        return self._partial

    def horizon_ms(self) -> int:
        """The last utterance boundary: Kaldi's open segment (silence included) began there."""
        return samples_to_ms(self._utterance_start, self.sample_rate_hz)

    def flush(self) -> list[Final]:
        self._partial = ""
        self._utterance_start = self._samples
        return self._finals(self._kaldi.FinalResult())

    def reset(self) -> None:
        self._kaldi.FinalResult()
        self._utterance_start = self._samples
        self._partial = ""

    def restart(self) -> None:
        """Back to the state of a new recognizer, keeping Kaldi's warm decoding-graph cache."""
        self.resume(0, 0)

    def resume(self, position_samples: int, next_utterance: int) -> None:
        """Continue a stream whose audio up to ``position_samples`` (and utterances before
        ``next_utterance``) was decoded elsewhere; the open utterance is discarded."""
        self._kaldi.FinalResult()
        self._samples = self._utterance_start = position_samples
        self._next_utterance = next_utterance
        self._partial = ""

    def replay(self, pcm: bytes) -> list[Final]:
        return self.accept(pcm)

    def close(self) -> None:
        self._kaldi = None
        release_free_heap()

    def _advance(self, samples: int) -> None:
        self._samples += samples
        self._kaldi_samples += samples

    def _new_utterance(self) -> None:
        """Leave Kaldi's endpoint state for its finalized state (a fresh pipeline next).

        After an endpoint Kaldi would carry its features over; a few milliseconds of silence
        (fed to Kaldi only, not part of the stream) start a new utterance that FinalResult
        then closes.
        """
        self._kaldi.AcceptWaveform(PRIMER)
        self._kaldi_samples += len(PRIMER) // 2
        self._kaldi.FinalResult()

    def _offset_s(self) -> float:
        """Kaldi's clock (since creation) minus the stream clock, in seconds."""
        return (self._kaldi_samples - self._samples) / self.sample_rate_hz

    def _finals(self, raw: str) -> list[Final]:
        result = parse_result(json.loads(raw), self._offset_s())
        if result is None:
            return []
        final = self._final(*result)
        self._next_utterance += 1
        return [final]

    def _final(self, text: str, words: tuple[Word, ...]) -> Final:
        start_ms = words[0].start_ms if words else self.audio_ms
        end_ms = words[-1].end_ms if words else self.audio_ms
        kept = words if self._options.words else None
        return Final(self._next_utterance, text, start_ms, end_ms, kept)


def parse_result(result: dict[str, Any], offset_s: float = 0.0) -> tuple[str, tuple[Word, ...]] | None:
    """Text and words of a Vosk result (best alternative when alternatives were asked for).

    ``offset_s`` is subtracted from Kaldi's times (its clock counts from recognizer creation).
    """
    if "alternatives" in result:
        alternatives = result["alternatives"]
        result = alternatives[0] if alternatives else {}
    text = str(result.get("text", "")).strip()
    if not text:
        return None
    return text, tuple(parse_word(w, offset_s) for w in result.get("result", []))


def parse_word(raw: dict[str, Any], offset_s: float = 0.0) -> Word:
    return Word(
        word=str(raw["word"]),
        start_ms=round((float(raw["start"]) - offset_s) * 1000),
        end_ms=round((float(raw["end"]) - offset_s) * 1000),
        conf=float(raw.get("conf", 1.0)),
    )
