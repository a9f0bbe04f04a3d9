"""``python -m recorder`` against a running decoder: files, stdin, WebSocket, API keys, restarts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devtools.processes import DecoderServer, free_port, start_decoder
from tests.conftest import SpokenCall
from tests.test_recorder.conftest import ROOT, final_texts, json_lines, recorder, write_wav


def test_file_mode_reproduces_the_servers_transcript(
    vosk_server: DecoderServer, korean_wav: Path, korean_reference: list[str]
) -> None:
    done = recorder("-H", vosk_server.url, "-f", str(korean_wav), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    events = json_lines(done.stdout)
    assert final_texts(events) == korean_reference
    kinds = [e["type"] for e in events]
    assert kinds[0] == "session"
    assert kinds[-2:] == ["end", "summary"]
    assert "partial" in kinds
    session, end, summary = events[0], events[-2], events[-1]
    assert session["engine"] == "vosk"
    assert session["language"] == "ko"
    assert end["transcript"] == " ".join(korean_reference)
    assert end["error"] is None
    assert summary["utterances"] == len(korean_reference)
    assert summary["audio_s"] == pytest.approx(end["audio_ms"] / 1000)
    assert summary["rtf"] < 1  # --fast is the default for files
    assert summary["mean_latency_ms"] > 0
    finals = [e for e in events if e["type"] == "final"]
    assert [f["utterance"] for f in finals] == list(range(len(finals)))
    assert all(f["session_id"] == session["session_id"] and f["end_ms"] > f["start_ms"] for f in finals)


def test_piped_output_is_the_transcript_and_the_rest_goes_to_stderr(
    vosk_server: DecoderServer, korean_wav: Path, korean_reference: list[str]
) -> None:
    """``python -m recorder -f call.wav > call.txt``: a mono file's finals, a line each, nothing else."""
    done = recorder("-H", vosk_server.url.removeprefix("http://"), "-f", str(korean_wav))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == korean_reference
    assert "session " in done.stderr
    for label in ("audio", "wall time", "real-time factor", "utterances", "mean partial latency"):
        assert label in done.stderr


def test_word_timings_on_request(vosk_server: DecoderServer, korean_wav: Path) -> None:
    done = recorder("-H", vosk_server.url, "-f", str(korean_wav), "--json", "--words")
    finals = [e for e in json_lines(done.stdout) if e["type"] == "final"]
    assert finals
    assert all(f["words"] and f["words"][0]["start_ms"] >= f["start_ms"] for f in finals)


def test_realtime_pacing(vosk_server: DecoderServer, korean_call: SpokenCall, tmp_path: Path) -> None:
    short = write_wav(tmp_path / "short.wav", korean_call.pcm[: 16000 * 2 * 2])
    done = recorder("-H", vosk_server.url, "-f", str(short), "--json", "--realtime")
    summary = json_lines(done.stdout)[-1]
    assert summary["audio_s"] == 2.0
    assert 1.9 <= summary["wall_s"] < 6


def test_any_format_rate_and_channels(
    vosk_server: DecoderServer, korean_call: SpokenCall, korean_reference: list[str], tmp_path: Path
) -> None:
    """A 44.1 kHz stereo FLAC of one speaker, mixed down (``--mono``) and resampled; the words survive."""
    wav = write_wav(tmp_path / "16k.wav", korean_call.pcm)
    flac = tmp_path / "call.flac"
    subprocess.run(["sox", str(wav), "-r", "44100", "-c", "2", str(flac)], check=True)
    done = recorder("-H", vosk_server.url, "-f", str(flac), "--json", "--mono")
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)
    assert (events[0]["channels"], events[0]["speakers"]) == (1, [])
    assert events[-2]["audio_ms"] == pytest.approx(korean_call.duration_ms, abs=30)
    assert len(final_texts(events)) == len(korean_reference)


def test_raw_pcm_from_stdin(
    vosk_server: DecoderServer, korean_call: SpokenCall, korean_reference: list[str]
) -> None:
    done = recorder("-H", vosk_server.url, "-f", "-", "--json", stdin=korean_call.pcm)
    assert done.returncode == 0, done.stderr
    assert final_texts(json_lines(done.stdout)) == korean_reference


def test_websocket_protocol_gives_the_same_transcript(
    vosk_server: DecoderServer, korean_wav: Path, korean_reference: list[str]
) -> None:
    done = recorder("-H", vosk_server.url, "-f", str(korean_wav), "--json", "--protocol", "ws")
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)
    assert final_texts(events) == korean_reference
    assert events[0]["session_id"].startswith("ws-")


def test_host_from_the_environment(vosk_server: DecoderServer, korean_wav: Path) -> None:
    done = recorder("-f", str(korean_wav), "--json", env={"HOST": vosk_server.url, "DO_SIMULATE": "False"})
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    server = start_decoder(tmp_path_factory.mktemp("keyed"), engine="vosk", model="ko", api_keys="key-1")
    yield server
    server.stop()


def test_api_key_from_flag_or_environment(keyed_server: DecoderServer, korean_wav: Path) -> None:
    refused = recorder("-H", keyed_server.url, "-f", str(korean_wav))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "401" in refused.stderr
    assert "API key" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert recorder("-H", keyed_server.url, "-f", str(korean_wav), "--api-key", "key-1").returncode == 0
    from_env = recorder("-H", keyed_server.url, "-f", str(korean_wav), env={"DECODER_API_KEY": "key-1"})
    assert from_env.returncode == 0, from_env.stderr
    ws = recorder("-H", keyed_server.url, "-f", str(korean_wav), "--protocol", "ws", "--api-key", "key-1")
    assert ws.returncode == 0, ws.stderr


def test_sigterm_ends_the_call_cleanly(vosk_server: DecoderServer, korean_wav: Path) -> None:
    """SIGTERM mid-call: the session is ended (finals flushed), the summary printed, exit 0."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recorder",
            "-H",
            vosk_server.url,
            "-f",
            str(korean_wav),
            "--realtime",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert b'"session"' in first
    time.sleep(2.5)
    process.terminate()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    events = json_lines((first + out).decode())
    assert events[-2]["type"] == "end"
    assert events[-2]["error"] is None
    assert 1000 <= events[-2]["audio_ms"] < 6000
    assert final_texts(events)  # the open utterance was flushed at the end
    assert requests.get(
        f"{vosk_server.url}/v1/sessions/{events[0]['session_id']}", timeout=5
    ).status_code in (
        401,
        404,
    )


def test_a_restarted_decoder_that_lost_the_session_is_reported(
    tmp_path: Path, korean_call: SpokenCall
) -> None:
    """The recorder retries through the restart, then reports the loss in one line (exit 1)."""
    long_call = write_wav(tmp_path / "long.wav", korean_call.pcm * 2)
    port = free_port()
    env = {"DECODER_ENGINE": "vosk", "DECODER_MODEL": "ko"}
    server = DecoderServer(port, env, tmp_path / "decoder.log").start()
    process = subprocess.Popen(
        [sys.executable, "-m", "recorder", "-H", server.url, "-f", str(long_call), "--realtime", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert b'"session"' in process.stdout.readline()
        time.sleep(1)
        server.stop()
        server = DecoderServer(port, env, tmp_path / "decoder.log").start()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        server.stop()
    stderr = err.decode()
    assert process.returncode == 1
    assert stderr.count("\n") == 1
    assert "lost session" in stderr
    assert "session_not_found" in stderr
    end = next(e for e in json_lines(out.decode()) if e["type"] == "end")
    assert "lost session" in end["error"]
