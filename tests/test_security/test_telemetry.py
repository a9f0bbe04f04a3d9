"""No third-party telemetry: ONNX Runtime, imported after any of our packages, neither stores a
device id nor queues usage events for Microsoft, and MLflow's telemetry is off in the decoder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.processes import ROOT

# ONNX Runtime stays quiet by itself where one of these says it runs in CI or its own tests; the
# interpreters here run without them, as a deployment does.
CI_MARKERS = (
    "CI",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
    "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI",
    "ORT_RUNNING_UNIT_TESTS",
)


def fresh_env(home: Path, unset: set[str]) -> dict[str, str]:
    """This environment without ``unset``, with its own ``HOME`` and the repository importable."""
    kept = {k: v for k, v in os.environ.items() if k not in unset}
    return kept | {"HOME": str(home), "PYTHONPATH": str(ROOT)}


def onnxruntime_state(home: Path, package: str, env: dict[str, str] | None = None) -> list[Path]:
    """What ONNX Runtime leaves under ``home`` when a fresh interpreter imports ``package``, then it."""
    child = fresh_env(home, {"ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", *CI_MARKERS}) | (env or {})
    code = f"import {package}, onnxruntime"
    subprocess.run([sys.executable, "-c", code], env=child, check=True, timeout=120)
    return sorted(p for p in home.rglob("*") if p.is_file())


@pytest.mark.parametrize("package", ["decoder_api", "nlp_consumer"])
def test_onnx_runtime_keeps_no_device_id_and_queues_no_events(tmp_path: Path, package: str) -> None:
    assert onnxruntime_state(tmp_path, package) == []


def test_a_deployment_can_turn_the_telemetry_back_on(tmp_path: Path) -> None:
    """The default only applies when the variable is unset: an explicit 0 is ONNX Runtime's own
    behaviour, which is what makes the test above able to fail."""
    left = onnxruntime_state(tmp_path, "nlp_consumer", {"ORT_DISABLE_TELEMETRY": "0"})
    assert any(p.name == "deviceid" for p in left), left


def test_mlflow_telemetry_is_off_in_the_decoder(tmp_path: Path) -> None:
    """``export mlflow`` runs in the decoder's package: MLflow's own switch reads as off there."""
    code = "from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY as off; print(off.get())"
    child = fresh_env(tmp_path, {"MLFLOW_DISABLE_TELEMETRY"})

    def switch(prefix: str) -> str:
        run = subprocess.run([sys.executable, "-c", prefix + code], env=child, capture_output=True, text=True)
        return run.stdout.strip()

    assert (switch(""), switch("import decoder_api; ")) == ("False", "True")
