"""The microphone path end to end: ALSA's default capture device reads a file (the ``file`` plugin).

The ``.asoundrc`` in a temporary HOME points ``pcm.!default`` at the ``file`` plugin: playback
goes to ``/dev/null`` through the ``null`` plugin and capture reads ``infile`` (raw s16le mono;
the ``null`` slave takes the rate and format PortAudio asks for). The plugin is not paced, so
"recording" runs faster than real time, and past the end of ``infile`` it repeats its last
buffer, hence the trailing silence and ``--duration``.
"""

from __future__ import annotations

from pathlib import Path

from devtools.processes import DecoderServer
from tests.conftest import SpokenCall, silence
from tests.test_recorder.conftest import final_texts, json_lines, recorder

ASOUNDRC = """\
pcm.!default {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
"""


def alsa_home(tmp_path: Path, pcm: bytes | None) -> dict[str, str]:
    """A HOME whose ``.asoundrc`` makes the default capture device read ``pcm`` (None: no device)."""
    home = tmp_path / "home"
    home.mkdir()
    if pcm is None:
        (home / ".asoundrc").write_text("pcm.!default { type hw; card 7 }\n")
    else:
        infile = tmp_path / "spoken.raw"
        infile.write_bytes(pcm)
        (home / ".asoundrc").write_text(ASOUNDRC.format(infile=infile))
    return {"HOME": str(home)}


def test_microphone_transcript_comes_back(
    vosk_server: DecoderServer, korean_call: SpokenCall, korean_reference: list[str], tmp_path: Path
) -> None:
    env = alsa_home(tmp_path, korean_call.pcm + silence(4000))
    duration_s = korean_call.duration_ms / 1000 + 3
    done = recorder("-H", vosk_server.url, "--json", "--duration", f"{duration_s:.1f}", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no PortAudio/ALSA chatter
    events = json_lines(done.stdout)
    assert events[0]["source"] == "microphone 'default'"
    assert final_texts(events) == korean_reference
    end = events[-2]
    assert end["transcript"] == " ".join(korean_reference)
    # The voice activity detector held back the silence past the 2 s hangover.
    assert korean_call.duration_ms <= end["audio_ms"] < duration_s * 1000


def test_devices_are_listed(tmp_path: Path) -> None:
    done = recorder("--list-devices", "--json", env=alsa_home(tmp_path, silence(100)))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    devices = json_lines(done.stdout)
    assert [d["name"] for d in devices if d["default"]] == ["default"]


def test_device_chosen_by_name_or_index(vosk_server: DecoderServer, tmp_path: Path) -> None:
    env = alsa_home(tmp_path, silence(3000))
    for device in ("defa", "0"):
        done = recorder("-H", vosk_server.url, "--json", "-s", device, "--duration", "1", env=env)
        assert done.returncode == 0, done.stderr
        assert json_lines(done.stdout)[-2]["audio_ms"] == 1000


def test_microphone_errors_are_one_line(tmp_path: Path) -> None:
    env = alsa_home(tmp_path, None)
    for args, message in (
        ((), "no microphone found"),
        (("-s", "usb"), "no microphone found"),
        (("--list-devices",), "no input devices"),
    ):
        done = recorder("-H", "127.0.0.1:1", *args, env=env)
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr
