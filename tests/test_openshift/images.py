"""Each image's contents, without building it: the files its Containerfile stage copies from the
build context, the distributions its locked Pipfile categories install, and an interpreter of
this environment that sees nothing else.

``assemble`` copies exactly what the stage's ``COPY`` instructions copy (minus what the ignore
file keeps out of the build context) into a directory that stands for the image's ``/app``.
``Image.run`` runs Python there as the image does (``python -m package`` from ``/app``, the
stage's ``ENV``): the repository is not on ``sys.path``, and ``image_guard`` hides every
distribution the image does not install, modules and metadata (the venv holds every
component's packages and the development tools).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.test_openshift.containerfile import (
    COMPONENTS,
    IGNOREFILE,
    context_copies,
    default_command,
    stage_env,
    stages,
)
from tests.test_openshift.kustomize import REPO

GUARD_SOURCE = Path(__file__).with_name("image_guard.py")
HIDDEN_MODULES = "IMAGE_HIDDEN_MODULES"  # image_guard.MODULES_VARIABLE
HIDDEN_DISTRIBUTIONS = "IMAGE_HIDDEN_DISTRIBUTIONS"  # image_guard.DISTRIBUTIONS_VARIABLE
# Pipfile category -> its section of Pipfile.lock.
LOCK_SECTIONS = {"packages": "default"}
# What the python:3.11-slim base image brings besides the standard library.
BASE_IMAGE_DISTRIBUTIONS = frozenset({"pip", "setuptools", "wheel"})
IMPORT_EVERY_MODULE = """\
import importlib, pkgutil, sys
for package in sys.argv[1:]:
    root = importlib.import_module(package)
    for module in pkgutil.walk_packages(root.__path__, package + "."):
        if not module.name.endswith(".__main__"):  # entry points: run, not imported
            importlib.import_module(module.name)
"""


def canonical(distribution: str) -> str:
    """A distribution name as PEP 503 normalises it (``Flask_Sock`` -> ``flask-sock``)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def locked_distributions(categories: str) -> frozenset[str]:
    """Every distribution ``pipenv requirements --categories CATEGORIES`` installs."""
    lock = json.loads((REPO / "Pipfile.lock").read_text(encoding="utf-8"))
    sections = [LOCK_SECTIONS.get(category, category) for category in categories.split()]
    return frozenset(canonical(name) for section in sections for name in lock[section])


@functools.cache
def module_distributions() -> Mapping[str, frozenset[str]]:
    """Top-level module name -> the distributions of this environment that provide it."""
    return {
        name: frozenset(canonical(d) for d in dists)
        for name, dists in importlib.metadata.packages_distributions().items()
    }


@functools.cache
def environment_distributions() -> frozenset[str]:
    """Every distribution installed in this environment."""
    return frozenset(canonical(d.metadata["Name"] or "") for d in importlib.metadata.distributions())


def hidden_modules(installed: frozenset[str]) -> frozenset[str]:
    """Top-level modules of this environment that no distribution of the image provides."""
    present = installed | BASE_IMAGE_DISTRIBUTIONS
    return frozenset(name for name, dists in module_distributions().items() if not dists & present)


def hidden_distributions(installed: frozenset[str]) -> frozenset[str]:
    """Distributions of this environment that the image does not install."""
    return environment_distributions() - installed - BASE_IMAGE_DISTRIBUTIONS


def ignored(relative: str) -> bool:
    """Whether the ignore file keeps a path out of the build context (its exclusion patterns)."""
    patterns = [
        line.strip()
        for line in IGNOREFILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "!")) and line.strip() != "*"
    ]
    parts = relative.split("/")
    return any(fnmatch.fnmatch(part, pattern.removeprefix("**/")) for pattern in patterns for part in parts)


def assemble(component: str, app: Path) -> Path:
    """Copy what the component's stage copies from the build context into ``app`` (its /app)."""
    for copy in context_copies(stages()[component]):
        for source in copy.sources:
            origin = REPO / source
            target = app / copy.destination
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True, ignore=_ignored_names)
                continue
            if copy.destination.endswith("/"):
                target = target / origin.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    return app


def _ignored_names(directory: str, names: list[str]) -> set[str]:
    relative = Path(directory).resolve().relative_to(REPO).as_posix()
    return {name for name in names if ignored(f"{relative}/{name}")}


def python_packages(app: Path) -> list[str]:
    """The importable packages the image holds (directories with an ``__init__.py``)."""
    return sorted(p.parent.name for p in app.glob("*/__init__.py"))


def imported_modules(files: Iterable[Path]) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in ``files`` -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(str(path))
    return found


@dataclass(frozen=True)
class Image:
    """One component's image: ``app`` holds its files, ``installed`` its locked distributions."""

    component: str
    app: Path
    guard: Path  # the directory holding image_guard as sitecustomize (outside the image)
    installed: frozenset[str]

    @property
    def packages(self) -> list[str]:
        return python_packages(self.app)

    @property
    def command(self) -> list[str]:
        """The image's default command, run by this environment's interpreter."""
        python, *rest = default_command(self.component)
        assert python == "python"
        return [sys.executable, *rest]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment without Python's own variables, the stage's ``ENV`` (its
        ``HOME`` is the image's /app), the guard, then ``extra``."""
        image = stage_env(self.component) | {"HOME": str(self.app)}
        outside = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        guard = {
            "PYTHONPATH": str(self.guard),
            HIDDEN_MODULES: ",".join(sorted(self.hidden)),
            HIDDEN_DISTRIBUTIONS: ",".join(sorted(hidden_distributions(self.installed))),
        }
        return outside | image | guard | dict(extra or {})

    @property
    def hidden(self) -> frozenset[str]:
        """The top-level modules of this environment the image does not have."""
        return hidden_modules(self.installed)

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` in the image's /app, as its user would run it there."""
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.app,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(
        self, args: list[str], log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``args`` (e.g. ``command``) in the background, in a process group of its own."""
        with log.open("ab") as out:
            return subprocess.Popen(
                args,
                cwd=self.app,
                env=self.env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def build_image(component: str, workdir: Path) -> Image:
    """The component's image contents under ``workdir``."""
    app = assemble(component, workdir / "app")
    guard = workdir / "site"
    guard.mkdir()
    shutil.copy2(GUARD_SOURCE, guard / "sitecustomize.py")
    return Image(component, app, guard, locked_distributions(COMPONENTS[component]))
