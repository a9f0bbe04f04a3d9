"""Makes an interpreter of this environment behave like one image: the distributions the image
does not install are invisible, as if they were absent.

``images.py`` installs this file as ``sitecustomize`` in a directory on ``PYTHONPATH`` (so ``site``
loads it at start-up, in the process and in every Python process it starts, gunicorn's
included). ``IMAGE_HIDDEN_MODULES`` lists the top-level module names to hide and
``IMAGE_HIDDEN_DISTRIBUTIONS`` the distributions (normalised names), comma-separated. The path
finder is wrapped rather than preceded: a hidden module is not found (``find_spec`` gives None,
``import`` raises ``ModuleNotFoundError``) and a hidden distribution has no metadata, exactly as
when it is not installed, so code probing for optional packages behaves as in the image.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

MODULES_VARIABLE = "IMAGE_HIDDEN_MODULES"
DISTRIBUTIONS_VARIABLE = "IMAGE_HIDDEN_DISTRIBUTIONS"


def canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


class NotInImage(importlib.abc.MetaPathFinder):
    """The path finder, blind to the modules and distributions an image lacks."""

    def __init__(self, modules: frozenset[str], distributions: frozenset[str]) -> None:
        self.modules = modules
        self.distributions = distributions

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.modules:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, path, target)

    def find_distributions(self, *args: Any, **kwargs: Any) -> Iterable[importlib.metadata.Distribution]:
        found = importlib.machinery.PathFinder.find_distributions(*args, **kwargs)
        return (d for d in found if canonical(d.metadata["Name"] or "") not in self.distributions)

    def invalidate_caches(self) -> None:
        importlib.machinery.PathFinder.invalidate_caches()


def names(environ: Mapping[str, str], variable: str) -> frozenset[str]:
    return frozenset(name for name in environ.get(variable, "").split(",") if name)


def install(environ: Mapping[str, str]) -> None:
    guard = NotInImage(names(environ, MODULES_VARIABLE), names(environ, DISTRIBUTIONS_VARIABLE))
    sys.meta_path[:] = [guard if f is importlib.machinery.PathFinder else f for f in sys.meta_path]


install(os.environ)
