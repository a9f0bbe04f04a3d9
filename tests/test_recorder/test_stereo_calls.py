"""Dual-channel calls through ``python -m recorder`` on the whisper decoder: a stereo file is one
two-channel session, every final names its speaker, a piped run prints only the transcript, the
finals in ``--json`` and on Kafka carry channel and speaker, and the simulator streams stereo
recordings the same way.

Each stereo decode is run once (module fixtures) and checked by several tests.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.events import TranscriptEvent
from devtools.evaluation import word_error_rate
from devtools.processes import DecoderServer
from tests.conftest import RATE_HZ, StereoCall
from tests.kafka import ConsumerFactory, TopicFactory, consume_until
from tests.test_recorder.conftest import json_lines, recorder, write_wav

MAX_WER = 0.12
PATIENT = ("--retry-s", "120")  # a machine shared with other decoders may answer a chunk slowly
DEFAULT_SPEAKERS = ("agent", "customer")
NAMED = ("sarah", "caller")


def first_exchange(call: StereoCall) -> StereoCall:
    """The call's first two turns (the agent's, then the customer's) and 0.8 s after them."""
    frames = (call.spans_ms[1][1] + 800) * RATE_HZ // 1000
    return StereoCall(call.pcm[: frames * 4], call.turns[:2], call.spans_ms[:2])


def check_speakers_and_words(said: list[tuple[str, str]], call: StereoCall, names: tuple[str, ...]) -> None:
    """Each utterance ``(speaker, text)`` in turn order with the turn's speaker; WER per channel."""
    assert said, "no utterance"
    assert {speaker for speaker, _ in said} <= set(names), said
    order = [speaker for speaker, _ in itertools.groupby(speaker for speaker, _ in said)]
    assert order == [names[channel] for channel, _ in call.turns], said
    for channel, name in enumerate(names):
        heard = " ".join(text for speaker, text in said if speaker == name)
        wer = word_error_rate([call.reference(channel)], [heard])
        assert wer <= MAX_WER, (name, wer, heard)


def check_times(finals: list[dict[str, Any]], call: StereoCall, names: tuple[str, ...]) -> None:
    starts = [f["start_ms"] for f in finals]
    assert starts == sorted(starts), starts
    for final in finals:
        assert final["speaker"] == names[final["channel"]], final
        assert final["channel"] == call.speaker_at((final["start_ms"] + final["end_ms"]) // 2), final


@pytest.fixture(scope="module")
def call_wav(tmp_path_factory: pytest.TempPathFactory, stereo_call: StereoCall) -> Path:
    return write_wav(tmp_path_factory.mktemp("stereo") / "call.wav", stereo_call.pcm, channels=2)


@pytest.fixture(scope="module")
def piped(whisper_server: DecoderServer, call_wav: Path) -> subprocess.CompletedProcess[str]:
    """``python -m recorder -f call.wav > out.txt``: standard output is not a terminal."""
    done = recorder("-H", whisper_server.url, "-f", str(call_wav), *PATIENT, timeout_s=600)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def kafka_topic(topic_factory: TopicFactory) -> str:
    return topic_factory("recorder-stereo")


@pytest.fixture(scope="module")
def as_json(
    whisper_server: DecoderServer,
    stereo_call: StereoCall,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    kafka_topic: str,
) -> list[dict[str, Any]]:
    """The call as a 44.1 kHz stereo FLAC (each channel resampled), with speakers named by the
    flag, ``--json`` and the finals published to Kafka."""
    tmp = tmp_path_factory.mktemp("stereo-flac")
    wav = write_wav(tmp / "call.wav", stereo_call.pcm, channels=2)
    flac = tmp / "call.flac"
    subprocess.run(["sox", str(wav), "-r", "44100", str(flac)], check=True)
    env = {"KAFKA_BROKERS": kafka_bootstrap, "KAFKA_TOPIC": kafka_topic}
    args = ("-H", whisper_server.url, "-f", str(flac), "--json", "--speakers", ",".join(NAMED))
    done = recorder(*args, *PATIENT, env=env, timeout_s=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json_lines(done.stdout)


def test_a_piped_stereo_file_gives_only_the_transcript_with_each_speaker(
    piped: subprocess.CompletedProcess[str], stereo_call: StereoCall
) -> None:
    lines = piped.stdout.splitlines()
    said = [tuple(line.split(": ", 1)) for line in lines]
    assert all(len(pair) == 2 and pair[0] in DEFAULT_SPEAKERS and pair[1] for pair in said), lines
    check_speakers_and_words([(s, t) for s, t in said], stereo_call, DEFAULT_SPEAKERS)


def test_a_piped_run_sends_the_session_line_and_the_summary_to_stderr(
    piped: subprocess.CompletedProcess[str],
) -> None:
    assert "session " in piped.stderr
    assert "agent / customer" in piped.stderr
    for label in ("audio", "wall time", "real-time factor", "utterances", "mean partial latency"):
        assert label in piped.stderr
        assert label not in piped.stdout
    assert "Traceback" not in piped.stderr


def test_json_finals_carry_channel_and_speaker(
    as_json: list[dict[str, Any]], stereo_call: StereoCall
) -> None:
    session = as_json[0]
    assert (session["type"], session["channels"], session["speakers"]) == ("session", 2, list(NAMED))
    finals = [e for e in as_json if e["type"] == "final"]
    check_times(finals, stereo_call, NAMED)
    check_speakers_and_words([(f["speaker"], f["text"]) for f in finals], stereo_call, NAMED)
    assert [f["utterance"] for f in finals] == list(range(len(finals)))
    for partial in (e for e in as_json if e["type"] == "partial"):  # whether any comes depends on timing
        assert [p["speaker"] for p in partial["partials"]] == list(NAMED)
    end = as_json[-2]
    assert end["type"] == "end"
    assert end["error"] is None
    assert end["audio_ms"] == pytest.approx(len(stereo_call.pcm) // 4 * 1000 // RATE_HZ, abs=30)


def test_kafka_events_carry_channel_and_speaker(
    as_json: list[dict[str, Any]], kafka_topic: str, consumer_factory: ConsumerFactory
) -> None:
    finals = [e for e in as_json if e["type"] == "final" and e["text"]]
    messages = consume_until(consumer_factory(kafka_topic), lambda got: len(got) >= len(finals))
    events = [TranscriptEvent.from_json(m.value() or b"") for m in messages]
    assert [(e.utterance, e.channel, e.speaker, e.text) for e in events] == [
        (f["utterance"], f["channel"], f["speaker"], f["text"]) for f in finals
    ]
    assert all(e.source == "recorder" for e in events)


def test_a_stereo_stream_over_the_websocket_protocol(
    whisper_server: DecoderServer, stereo_call: StereoCall, tmp_path: Path
) -> None:
    call = first_exchange(stereo_call)
    wav = write_wav(tmp_path / "exchange.wav", call.pcm, channels=2)
    args = ("-H", whisper_server.url, "-f", str(wav), "--json", "--protocol", "ws", *PATIENT)
    done = recorder(*args, timeout_s=600)
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)
    finals = [e for e in events if e["type"] == "final"]
    check_times(finals, call, DEFAULT_SPEAKERS)
    check_speakers_and_words([(f["speaker"], f["text"]) for f in finals], call, DEFAULT_SPEAKERS)


def test_the_simulator_streams_a_stereo_recording_as_a_two_speaker_call(
    whisper_server: DecoderServer, stereo_call: StereoCall, tmp_path: Path
) -> None:
    call = first_exchange(stereo_call)
    write_wav(tmp_path / "call_stereo.wav", call.pcm, channels=2)
    args = ("-H", whisper_server.url, "-S", "--data", str(tmp_path), "--calls", "1", "--fast")
    done = recorder(*args, "--pause-s", "0", "--speakers", ",".join(NAMED), "--json", *PATIENT, timeout_s=600)
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)
    session = next(e for e in events if e["type"] == "session")
    assert (session["channels"], session["speakers"], session["caller"]) == (2, list(NAMED), 1)
    finals = [e for e in events if e["type"] == "final"]
    check_times(finals, call, NAMED)
    check_speakers_and_words([(f["speaker"], f["text"]) for f in finals], call, NAMED)
    assert events[-1]["type"] == "stats"
    assert (events[-1]["completed"], events[-1]["failed"]) == (1, 0)


def test_a_file_of_three_channels_is_one_line_unless_mixed_down(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "three.wav", np.zeros(3 * RATE_HZ, dtype="<i2").tobytes(), channels=3)
    done = recorder("-H", "127.0.0.1:1", "--retry-s", "0", "-f", str(wav))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"error: {wav}: 3 channels; the recorder streams mono or stereo (one speaker per channel) files: "
        "give --mono to mix it down\n"
    )
    mixed = recorder("-H", "127.0.0.1:1", "--retry-s", "0", "-f", str(wav), "--mono")
    assert mixed.stderr == "error: cannot reach the decoder at http://127.0.0.1:1: connection refused\n"
