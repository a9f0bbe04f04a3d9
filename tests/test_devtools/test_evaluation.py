"""``python -m devtools.evaluation``: word error rate per file and overall, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devtools.evaluation import MANIFEST_COLUMNS, normalize
from tests.conftest import ROOT
from tests.test_decoder_api.test_cli import REAL_SPEECH, assert_one_line_error


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.evaluation", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )


def test_reports_wer_per_file_and_overall(tmp_path: Path, data_dir: Path) -> None:
    rows = [
        line
        for line in (data_dir / "manifest.tsv").read_text().splitlines()[1:]
        if line.split("\t")[0] in REAL_SPEECH
    ]
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("\t".join(MANIFEST_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    for name in REAL_SPEECH:
        (tmp_path / name).symlink_to(data_dir / name)
    result = run("--json", str(manifest))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [Path(f["file"]).name for f in out["files"]] == list(REAL_SPEECH)
    assert 0 <= out["wer"] <= 0.1
    table = run(str(manifest))
    assert "overall" in table.stdout
    assert "%" in table.stdout


def test_with_no_matching_language_fails_cleanly() -> None:
    assert_one_line_error(run("--engine", "vosk"), "no files in language 'ko'")


def test_normalisation_ignores_case_and_punctuation() -> None:
    assert normalize("Hello,  World!") == "hello world"
    assert normalize("Go forward ten meters.") == normalize("go forward 10 meters")


def test_a_missing_manifest_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run(str(tmp_path / "none.tsv")), "no such manifest")
