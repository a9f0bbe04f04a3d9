"""Calls recorded with one speaker per channel: the layout a session declares, and the recognizer
that decodes each channel on its own and merges their finals in order of start time.

Contact-centre telephony records the agent on one channel and the customer on the other.
``StereoRecognizer`` splits interleaved s16le stereo PCM (numpy), feeds each channel to a mono
recognizer of its own (both borrowed from the warm pool) and stamps every final with its
``channel`` and that channel's ``speaker``. A final of one channel is held until the other
channel's horizon (``Recognizer.horizon_ms``: no final still to come there starts earlier) has
passed its start, or the stream is flushed; finals are then numbered in that order, so a session's
utterances come in order of start time. The hold is bounded by the other channel's open utterance,
which the engines end after a pause or at their longest utterance.

Failover: each channel must be replayed from where its last *released* final was decoded (its
restart point); the session keeps the stereo audio from the earlier of the two points
(``replay_start``) in the registry, and ``resume_channels`` + ``replay`` rebuild both channels
from there, each skipping the audio before its own point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from decoder_api.audio import InvalidChannels
from decoder_api.engines.base import BYTES_PER_SAMPLE, Final, InvalidAudio, Recognizer, check_pcm
from decoder_api.errors import DecoderError

MAX_CHANNELS = 2
DEFAULT_SPEAKERS = ("agent", "customer")
MAX_SPEAKER_CHARS = 32


class InvalidSpeakers(DecoderError):
    code = "invalid_speakers"


class IncompleteFrame(InvalidAudio):
    code = "incomplete_frame"


@dataclass(frozen=True, slots=True)
class ChannelLayout:
    """How many channels a session's audio has, and who speaks on each (empty for mono)."""

    channels: int = 1
    speakers: tuple[str, ...] = ()

    @property
    def stereo(self) -> bool:
        return self.channels > 1

    @property
    def frame_bytes(self) -> int:
        return BYTES_PER_SAMPLE * self.channels


MONO = ChannelLayout()


def channel_layout(channels: Any = 1, speakers: Any = None) -> ChannelLayout:
    """The layout a client asked for; ``InvalidChannels``/``InvalidSpeakers`` say what is wrong.

    ``channels`` is 1 or 2; with 2, ``speakers`` names each channel (default agent, customer):
    two distinct, non-empty, printable names of at most 32 characters. Mono takes no speakers.
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise InvalidChannels(f"channels must be 1 or {MAX_CHANNELS}; got {channels!r}")
    if channels == 1:
        if speakers is not None:
            raise InvalidSpeakers("speakers name the channels of a stereo session; send channels: 2 too")
        return MONO
    names = DEFAULT_SPEAKERS if speakers is None else speakers
    if not isinstance(names, list | tuple) or len(names) != channels:
        raise InvalidSpeakers(f"speakers must be a list of {channels} names, one per channel")
    for name in names:
        if not isinstance(name, str) or not name or len(name) > MAX_SPEAKER_CHARS or not name.isprintable():
            raise InvalidSpeakers(
                f"a speaker name is 1-{MAX_SPEAKER_CHARS} printable characters; got {str(name)[:40]!r}"
            )
    if len(set(names)) != len(names):
        raise InvalidSpeakers("the speakers of the channels must have distinct names")
    return ChannelLayout(channels, tuple(names))


def check_frames(pcm: bytes, layout: ChannelLayout) -> None:
    """Reject PCM that is not whole samples (mono) or whole frames (stereo: 4 bytes)."""
    if not layout.stereo:
        check_pcm(pcm)
    elif len(pcm) % layout.frame_bytes:
        raise IncompleteFrame(
            f"stereo PCM must be whole frames of {layout.frame_bytes} bytes (left, right s16le); "
            f"got {len(pcm)} bytes"
        )


def split_channels(pcm: bytes, channels: int) -> list[bytes]:
    """Interleaved s16le frames as one mono s16le buffer per channel."""
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    return [np.ascontiguousarray(frames[:, c]).tobytes() for c in range(channels)]


@dataclass(frozen=True, slots=True)
class _Held:
    """A channel's final waiting for the other channel; ``decoded_at`` is the frame position after
    the chunk that produced it (where that channel would be replayed from once it is released)."""

    final: Final
    decoded_at: int
    order: int


class StereoRecognizer:
    """One recognizer per channel behind the ``Recognizer`` contract; see the module docstring.

    Positions are frames (samples per channel) of the stream; ``replay_start`` and
    ``restart_points`` are what a takeover needs besides the audio.
    """

    def __init__(self, recognizers: Sequence[Recognizer], speakers: tuple[str, ...]) -> None:
        if len(recognizers) != len(speakers) or len(recognizers) < 2:
            raise ValueError("one recognizer and one speaker per channel")
        self._channels = list(recognizers)
        self._speakers = speakers
        self._position = 0
        self._next_utterance = 0
        self._held: list[_Held] = []
        self._counter = 0
        self._restarts = [0] * len(recognizers)
        self._skip = [0] * len(recognizers)
        self._boundaries = [0]  # chunk ends from replay_start on: where a replay may begin

    @property
    def sample_rate_hz(self) -> int:
        return self._channels[0].sample_rate_hz

    @property
    def restart_points(self) -> tuple[int, ...]:
        """Per channel, the frame its replay starts from (after its last released final)."""
        return tuple(self._restarts)

    @property
    def replay_start(self) -> int:
        """The earliest frame a takeover must replay from."""
        return min(self._restarts)

    def accept(self, pcm: bytes) -> list[Final]:
        return self._decode(pcm, replay=False)

    def replay(self, pcm: bytes) -> list[Final]:
        return self._decode(pcm, replay=True)

    def partial(self) -> str:
        return " ".join(p for p in self.partials() if p)

    def partials(self) -> tuple[str, ...]:
        """Each channel's hypothesis of its open utterance, in channel order."""
        return tuple(r.partial() for r in self._channels)

    def horizon_ms(self) -> int:
        held = [h.final.start_ms for h in self._held]
        return min([*held, *(r.horizon_ms() for r in self._channels)])

    def flush(self) -> list[Final]:
        for channel, recognizer in enumerate(self._channels):
            self._hold(channel, recognizer.flush())
        return self._release(everything=True)

    def reset(self) -> None:
        """Drop both open utterances; finals already decoded stay held until they can be released."""
        for recognizer in self._channels:
            recognizer.reset()

    def restart(self) -> None:
        self.resume_channels((0,) * len(self._channels), 0)

    def resume(self, position_samples: int, next_utterance: int) -> None:
        self.resume_channels((position_samples,) * len(self._channels), next_utterance)

    def resume_channels(self, restarts: Sequence[int], next_utterance: int) -> None:
        """Continue a stream decoded elsewhere: channel c is replayed from ``restarts[c]``; the
        stereo audio replayed next starts at the earliest of them."""
        start = min(restarts)
        for recognizer, restart in zip(self._channels, restarts, strict=True):
            recognizer.resume(restart, 0)
        self._restarts = list(restarts)
        self._skip = [r - start for r in restarts]
        self._boundaries = sorted(set(restarts))
        self._position = start
        self._next_utterance = next_utterance
        self._held = []

    def close(self) -> None:
        for recognizer in self._channels:
            recognizer.close()

    def _decode(self, pcm: bytes, replay: bool) -> list[Final]:
        check_frames(pcm, ChannelLayout(len(self._channels), self._speakers))
        parts = split_channels(pcm, len(self._channels))
        frames = len(pcm) // (BYTES_PER_SAMPLE * len(self._channels))
        self._position += frames
        self._boundaries.append(self._position)
        for channel, (recognizer, part) in enumerate(zip(self._channels, parts, strict=True)):
            skip = min(self._skip[channel], frames)
            self._skip[channel] -= skip
            audio = part[skip * BYTES_PER_SAMPLE :]
            if audio:
                self._hold(channel, recognizer.replay(audio) if replay else recognizer.accept(audio))
        return self._release(everything=False)

    def _hold(self, channel: int, finals: list[Final]) -> None:
        for final in finals:
            stamped = dataclasses.replace(final, channel=channel, speaker=self._speakers[channel])
            self._held.append(_Held(stamped, self._position, self._counter))
            self._counter += 1

    def _release(self, everything: bool) -> list[Final]:
        """Held finals that no other channel can precede any more, numbered in start order."""
        self._held.sort(key=lambda h: (h.final.start_ms, h.order))
        horizons = [r.horizon_ms() for r in self._channels] if not everything else []
        released: list[Final] = []
        while self._held:
            first = self._held[0]
            channel = first.final.channel
            assert channel is not None
            others = [h for c, h in enumerate(horizons) if c != channel]
            if not everything and any(first.final.start_ms > horizon for horizon in others):
                break
            self._held.pop(0)
            released.append(dataclasses.replace(first.final, utterance=self._next_utterance))
            self._next_utterance += 1
            if not any(h.final.channel == channel and h.decoded_at == first.decoded_at for h in self._held):
                self._restarts[channel] = max(self._restarts[channel], first.decoded_at)
        if everything:
            self._restarts = [self._position] * len(self._channels)
        else:
            self._advance_idle_channels(horizons)
        self._boundaries = [b for b in self._boundaries if b >= self.replay_start]
        return released

    def _advance_idle_channels(self, horizons: list[int]) -> None:
        """A channel with no final held needs no audio before its horizon: its restart point moves
        to the last chunk end at or before it (so a silent channel does not keep the tail growing)."""
        rate = self.sample_rate_hz
        for channel, horizon_ms in enumerate(horizons):
            if any(h.final.channel == channel for h in self._held):
                continue
            horizon = horizon_ms * rate // 1000
            passed = [b for b in self._boundaries if b <= horizon]
            if passed:
                self._restarts[channel] = max(self._restarts[channel], passed[-1])
