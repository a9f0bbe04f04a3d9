"""``python -m bench.plot`` and the results writer: one panel per result file, the others skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import plot
from bench.results import figure, render_markdown, result, table, write

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_result(directory: Path, name: str) -> None:
    res = result(
        name,
        f"Benchmark {name}",
        True,
        {"size": 1},
        [
            figure("latency", "ms", 120.0, 20.0, "broker hop"),
            figure(
                "throughput", "events/s", 30.0, 32.0, "bare", better="higher", target="ratio >= 0.8", met=True
            ),
            figure("words lost", "words", 0.0, 0.0, "uninterrupted"),
            figure("not measured", "s", None, 1.0, "bound"),
        ],
        {},
        [table("Runs", ["Run", "Size"], [["first", "1"]])],
    )
    write(res, directory)


def test_every_result_becomes_a_panel(tmp_path: Path) -> None:
    write_result(tmp_path, "first")
    write_result(tmp_path, "second")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"unrelated": true}', encoding="utf-8")

    found = plot.panels(tmp_path)

    assert [title for title, _ in found] == ["Benchmark first (quick)", "Benchmark second (quick)"]
    first = dict(found)["Benchmark first (quick)"]
    assert [f["name"] for f in first] == ["latency", "throughput", "words lost"]  # no value: not drawn
    assert plot.main(["--out", str(tmp_path)]) == 0
    image = tmp_path / "bench.png"
    assert image.read_bytes()[:8] == PNG_MAGIC
    assert image.stat().st_size > 10_000


def test_the_markdown_is_rendered_from_the_json(tmp_path: Path) -> None:
    write_result(tmp_path, "first")
    data = json.loads((tmp_path / "first.json").read_text(encoding="utf-8"))
    markdown = (tmp_path / "first.md").read_text(encoding="utf-8")
    assert markdown == render_markdown(data)
    assert "| throughput | 30 events/s | 32 events/s (bare) | 0.94 | ratio >= 0.8 (met) |" in markdown
    assert "## Runs\n\n| Run | Size |\n|---|---:|\n| first | 1 |" in markdown


def test_missing_results_are_an_error_not_a_crash(tmp_path: Path) -> None:
    assert plot.main(["--out", str(tmp_path)]) == 1
    assert not (tmp_path / "bench.png").exists()


@pytest.mark.parametrize(
    ("value", "baseline", "expected"),
    [(120.0, 20.0, (6.0, 1.0)), (0.0, 0.0, (0.0, 0.0)), (3.0, None, (3.0, 0.0))],
)
def test_bars_are_relative_to_the_baseline(
    value: float, baseline: float | None, expected: tuple[float, float]
) -> None:
    assert plot.relative(figure("x", "", value, baseline, "b")) == pytest.approx(expected)
