"""The import rules between the components (pyproject.toml ``[tool.importlinter]``), which
``make lint`` checks with import-linter: they hold, and breaking any of them fails the check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.processes import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("contract", "decoder_api", "recorder", "nlp_consumer", "devtools")
FROM_A_COMPONENT = "recorder and nlp_consumer import neither decoder_api nor an engine"
SETTINGS_IMPORT_NO_ENGINE = "decoder settings import no engine (one is imported only when chosen)"
LAYERS = "decoder_api layers: the edge over delivery over sessions over settings and audio over engines"
NO_TOOLING = "no component imports the developer tooling"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        env={**os.environ, "COLUMNS": "200"},  # one line per contract
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def copy_of_the_packages(into: Path) -> Path:
    """The rules and the packages they are about, as the repository has them now."""
    shutil.copy2(ROOT / "pyproject.toml", into / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    return into


def test_the_rules_hold() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "recorder/shortcut.py",
            "from decoder_api.delivery.events import events_from_finals",
            FROM_A_COMPONENT,
        ),
        ("nlp_consumer/shortcut.py", "import decoder_api.config", FROM_A_COMPONENT),
        ("nlp_consumer/shortcut.py", "import faster_whisper", FROM_A_COMPONENT),
        ("recorder/shortcut.py", "import vosk", FROM_A_COMPONENT),
        (
            "contract/shortcut.py",
            "from nlp_consumer.errors import ConfigError",
            "contract imports no component",
        ),
        ("decoder_api/shortcut.py", "import recorder.config", "components share nothing but the contract"),
        ("decoder_api/config.py", "import decoder_api.engines.vosk", SETTINGS_IMPORT_NO_ENGINE),
        ("decoder_api/sessions/store.py", "import decoder_api.http.auth", LAYERS),
        ("decoder_api/engines/pool.py", "import decoder_api.sessions.session", LAYERS),
        ("decoder_api/delivery/outbox.py", "from decoder_api.http import service", LAYERS),
        ("decoder_api/errors.py", "import decoder_api.config", LAYERS),
        ("decoder_api/audio.py", "import decoder_api.config", LAYERS),
        ("decoder_api/http/app.py", "from devtools import devstack", NO_TOOLING),
    ],
)
def test_breaking_a_rule_fails_the_check(module: str, line: str, contract: str, tmp_path: Path) -> None:
    root = copy_of_the_packages(tmp_path)
    path = root / module
    path.write_text(f"{path.read_text() if path.exists() else ''}\n{line}\n", encoding="utf-8")
    done = lint_imports(root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{contract} BROKEN" in done.stdout, done.stdout
