"""Engine settings, apart from the engines: ``decoder_api.config`` builds them from the environment
without importing an engine (an engine module is imported only when it is chosen, see
``decoder_api.engines.load_engine``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OFFICIAL_LIST_URL = "https://alphacephei.com/vosk/models/model-list.json"
# Which decoding graph a Vosk model with a lookahead pair (HCLr + Gr) decodes with; see engines/graphs.py.
GRAPHS = ("auto", "static", "lookahead")


def default_graph_dir() -> Path:
    return Path.home() / ".cache" / "decoder_api" / "graphs"


@dataclass(frozen=True, slots=True)
class VoskSettings:
    """Engine-wide options.

    ``log_level`` is Kaldi's own verbosity (-1 keeps only errors). ``dither`` is the
    standard deviation, in 16-bit sample units, of the noise added to the audio before
    feature extraction (Kaldi's default is 1.0; without it digital silence never looks like
    silence and utterances do not end). Kaldi draws its own dither from a process-global
    random state, so the same audio would decode differently from run to run; we switch
    Kaldi's off and add the same amount from a fixed table indexed by stream position,
    which makes every decode reproducible.

    ``graph`` chooses the decoding graph of a model that ships a lookahead pair (HCLr + Gr):
    ``auto`` (default) the static graph built for it in ``graph_dir`` when there is one (``python
    -m decoder_api models compile-graph``), else the pair; ``static`` the built graph or an error;
    ``lookahead`` the pair. See ``decoder_api/engines/graphs.py``.
    """

    log_level: int = -1
    dither: float = 1.0
    graph: str = "auto"
    graph_dir: Path = field(default_factory=default_graph_dir)

    def __post_init__(self) -> None:
        if self.graph not in GRAPHS:
            raise ValueError(f"graph={self.graph!r}: expected one of {', '.join(GRAPHS)}")


@dataclass(frozen=True)
class WhisperSettings:
    """Service-wide settings of the Whisper engine; times are milliseconds of audio, never wall clock.

    ``cpu_threads`` 0 keeps CTranslate2's default; ``num_workers`` is how many decodes (from different
    streams) may run in parallel. ``max_utterance_ms`` is capped by Whisper's 30 s window.
    ``background_partials`` decodes partials on a worker thread instead of inside ``accept``.
    """

    cpu_threads: int = 0
    num_workers: int = 1
    compute_type: str = "int8"
    beam_size: int = 5  # finals only; partials are always greedy
    partial_interval_ms: int = 1000
    endpoint_silence_ms: int = 600
    max_utterance_ms: int = 15000
    min_speech_ms: int = 250
    vad_threshold: float = 0.5
    language: str = "en"
    background_partials: bool = True

    def __post_init__(self) -> None:
        checks = {
            "cpu_threads must be >= 0": self.cpu_threads >= 0,
            "num_workers must be >= 1": self.num_workers >= 1,
            "beam_size must be >= 1": self.beam_size >= 1,
            "partial_interval_ms must be > 0": self.partial_interval_ms > 0,
            "endpoint_silence_ms must be > 0": self.endpoint_silence_ms > 0,
            "max_utterance_ms must be in (0, 30000]": 0 < self.max_utterance_ms <= 30000,
            "min_speech_ms must be >= 0": self.min_speech_ms >= 0,
            "vad_threshold must be in (0, 1)": 0.0 < self.vad_threshold < 1.0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid WhisperSettings: " + "; ".join(failed))
