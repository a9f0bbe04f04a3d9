"""``python -m bench.summary``: the targeted figures of every result, and the README block."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import summary
from tests.test_bench.test_plot import write_result

README = """# Project

## Benchmarks

<!-- bench:summary -->
old table
<!-- /bench:summary -->

## Development
"""


def test_the_summary_keeps_targeted_figures_and_updates_the_readme(tmp_path: Path) -> None:
    write_result(tmp_path, "kafka")
    readme = tmp_path / "README.md"
    readme.write_text(README, encoding="utf-8")

    assert summary.main(["--out", str(tmp_path), "--readme", str(readme)]) == 0

    table = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| kafka (quick) | throughput | 30 events/s | 32 events/s (bare) | 0.94 |" in table
    assert "latency" not in table  # no target: in the benchmark's own file, not in the summary
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text
    assert text.startswith("# Project\n\n## Benchmarks\n\n<!-- bench:summary -->\n| Benchmark |")
    assert text.endswith("<!-- /bench:summary -->\n\n## Development\n")
    assert "| throughput |" in text


@pytest.mark.parametrize(
    "readme_text", ["# no markers\n", "<!-- /bench:summary -->\n<!-- bench:summary -->\n"]
)
def test_a_readme_without_the_block_is_an_error(tmp_path: Path, readme_text: str) -> None:
    write_result(tmp_path, "kafka")
    readme = tmp_path / "README.md"
    readme.write_text(readme_text, encoding="utf-8")
    assert summary.main(["--out", str(tmp_path), "--readme", str(readme)]) == 1
    assert readme.read_text(encoding="utf-8") == readme_text


def test_no_results_is_an_error(tmp_path: Path) -> None:
    assert summary.main(["--out", str(tmp_path)]) == 1
