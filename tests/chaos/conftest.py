"""The pipeline the faults are injected into, shared by a module's tests.

Each test leaves the pipeline recovered (that is part of what it asserts), so the next fault
hits a service that has already survived the previous ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Pipeline, Scale, Script, call_scripts, start_pipeline
from tests.conftest import SpokenCall
from tests.reference import ReferenceEngine


@pytest.fixture(scope="session")
def scale() -> Scale:
    return Scale.from_env()


@pytest.fixture(scope="session")
def scripts(reference_engine: ReferenceEngine, korean_call: SpokenCall) -> list[Script]:
    """The calls and their reference finals, decoded on the allocator the decoders run on."""
    return call_scripts(reference_engine, korean_call)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Iterator[Pipeline]:
    started = start_pipeline(tmp_path_factory.mktemp("chaos"), trained_model)
    yield started
    started.close()
