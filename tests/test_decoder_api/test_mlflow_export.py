"""``python -m decoder_api export mlflow``: the pyfunc model loads and predicts from its directory
alone (MLflow's own loader, without this repository on the path), and ``mlflow models serve``
answers the same transcript as the decoder's v2 endpoint."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from decoder_api.cli import main
from devtools.evaluation import ManifestEntry, word_error_rate
from devtools.processes import DecoderServer, ServiceProcess, free_port, http_ready

CLIP = "librivox-0870.wav"
MAX_WER = 0.10
MODEL = "whisper-tiny.en"

PREDICT = """
import json, sys
import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
audio = open(sys.argv[2], "rb").read()
plain = model.predict(pd.DataFrame({"audio": [audio]}))
timed = model.predict(pd.DataFrame({"audio": [audio]}), params={"words": True, "beam_size": 1})
import decoder_api
print(json.dumps({
    "text": plain["text"][0],
    "utterances": json.loads(timed["utterances"][0]),
    "decoder_api": decoder_api.__file__,
}))
"""


@pytest.fixture(scope="module")
def clip(manifest: list[ManifestEntry]) -> ManifestEntry:
    return next(e for e in manifest if e.path.name == CLIP and e.turn is None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whisper model exported once for the module."""
    target = tmp_path_factory.mktemp("mlflow") / "speech"
    result = subprocess.run(
        [sys.executable, "-m", "decoder_api", "export", "mlflow", "--engine", "whisper", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return target


@pytest.fixture(scope="module")
def served(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow models serve`` on the exported directory, once for the module (ready on /ping)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["-P", "-m", "mlflow", "models", "serve", "-m", str(exported), "--env-manager", "local"]
    process = ServiceProcess(
        "mlflow-serve",
        [*argv, "-h", "127.0.0.1", "-p", str(port)],
        # MLflow starts the server as `uvicorn` from PATH: the environment's scripts must be on it,
        # as they are for a user who activated it.
        {"PYTHONPATH": "", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        tmp_path_factory.mktemp("mlflow-logs") / "serve.log",
        ready=http_ready(f"{url}/ping"),
    ).start(timeout_s=180)
    yield url
    process.stop()


def test_the_model_directory_holds_the_weights_code_and_signature(exported: Path) -> None:
    mlmodel = yaml.safe_load((exported / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["config"]["engine"] == "whisper" and flavor["config"]["model"] == MODEL
    weights = exported / flavor["artifacts"]["model"]["path"]
    assert (weights / "model.bin").is_file() and not (weights / "model.bin").is_symlink()
    assert {p.name for p in (exported / "code").iterdir()} == {"decoder_api", "contract"}
    signature = mlmodel["signature"]
    assert json.loads(signature["inputs"]) == [{"type": "binary", "name": "audio", "required": True}]
    assert {p["name"] for p in json.loads(signature["params"])} == {"words", "beam_size"}


def test_predict_loads_from_the_directory_alone_and_transcribes(
    exported: Path, clip: ManifestEntry, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-c", PREDICT, str(exported), str(clip.path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(out["decoder_api"]).is_relative_to(exported)  # the shipped code, not this checkout
    assert word_error_rate([clip.transcript], [out["text"]]) <= MAX_WER, out["text"]
    words = [w for u in out["utterances"] for w in u["words"]]
    assert words and words[0]["start_ms"] < words[-1]["end_ms"]


def test_mlflow_serve_predict_and_the_v2_endpoint_agree(
    served: str, exported: Path, clip: ManifestEntry, whisper_server: DecoderServer
) -> None:
    audio_b64 = base64.b64encode(clip.path.read_bytes()).decode()
    body = {"dataframe_split": {"columns": ["audio"], "data": [[audio_b64]]}}
    answer = requests.post(f"{served}/invocations", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    [prediction] = answer.json()["predictions"]
    tensor: dict[str, Any] = {"name": "audio", "datatype": "BYTES", "shape": [1], "data": [audio_b64]}
    tensor["parameters"] = {"content_type": "base64"}
    v2 = requests.post(
        f"{whisper_server.url}/v2/models/{MODEL}/infer", json={"inputs": [tensor]}, timeout=300
    )
    assert v2.status_code == 200, v2.text
    v2_text = next(o for o in v2.json()["outputs"] if o["name"] == "text")["data"][0]
    assert prediction["text"] == v2_text
    assert word_error_rate([clip.transcript], [prediction["text"]]) <= MAX_WER

    bad = {"dataframe_split": {"columns": ["audio"], "data": [[base64.b64encode(b"no audio").decode()]]}}
    refused = requests.post(f"{served}/invocations", json=bad, timeout=60)
    assert refused.status_code == 400 and "unsupported_audio" in refused.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model"], "model 'no-such-model' not found"),
        (["--engine", "vosk", "--model", "tiny.en"], "is a whisper model, not vosk"),
    ],
)
def test_a_bad_model_is_one_readable_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "mlflow", *argv, str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_a_bad_target_is_one_readable_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    (tmp_path / "plain-file").write_text("")
    for target, message in (
        (tmp_path / "taken", "is not empty"),
        (tmp_path / "plain-file", "is not a directory"),
        (tmp_path / "missing" / "out", "does not exist"),
    ):
        assert main(["export", "mlflow", str(target)]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (tmp_path / "taken" / "file").read_text() == "keep me"
