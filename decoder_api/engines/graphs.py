"""Static decoding graphs: HCLG composed once, at install time, from a Vosk model's lookahead pair.

Small Vosk models ship their decoding graph as a lookahead pair: ``graph/HCLr.fst`` (HMMs, context
and lexicon, output labels relabelled) and ``graph/Gr.fst`` (the n-gram grammar). Every
recognizer composes the two on the fly and caches the states it visits, so each live call
grows a cache of its own (about 150 MiB after 60 s of speech with the Korean model) and pays
for the composition in CPU. Vosk also loads a static ``graph/HCLG.fst`` when a model has one,
shared read-only by every recognizer in the process. Composed here from the same pair, with
OpenFst's command-line tools (Debian ``libfst-tools`` and ``libfst22-plugins-base``, whose plugins
read the pair's ``olabel_lookahead`` and ``ngram`` FST types), it is the same search space. For
the Korean small model (``bench/results/memory.md``, ``service.md``): about 1 GiB more loaded once
per process, under a tenth of the RSS per live call and a third of the CPU per second of audio;
transcripts agree to a fraction of a percent of words (the lookahead filter prunes a little
differently).

The graph is built into ``<graph_dir>/<model>-<key>/``: ``graph/HCLG.fst``, ``graph/words.txt`` and
``static-graph.json``; the key fingerprints the pair, so a changed model never meets a stale graph.
The engine lays it over the model directory when it loads (``decoder_api.engines.vosk``). A
runtime phrase list needs the lookahead pair: such a session decodes on the pair, loaded on first
use.

The steps:

1. ``fstsymbols``: ``Gr.fst`` without its symbol table (saved as ``words.txt``, which Vosk reads
   for a static graph); OpenFst 1.8 would write the table into the composition in a form it then
   cannot read back.
2. ``fstcompose HCLr.fst Gr.fst | fstrelabel | fstconvert --fst_type=const``: the composition,
   with the disambiguation transition-ids of ``disambig_tid.int`` relabelled to epsilon (Vosk's
   lookahead decoder drops them the same way; left in, the decoder would index a transition
   that does not exist), as a ``ConstFst``, which Kaldi reads fastest.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from decoder_api.errors import GraphBuildError, ModelNotFound

logger = logging.getLogger(__name__)

LOOKAHEAD_FILES = ("HCLr.fst", "Gr.fst")
STATIC_FILES = ("HCLG.fst", "words.txt")
MANIFEST = "static-graph.json"
TOOLS = ("fstsymbols", "fstcompose", "fstrelabel", "fstconvert")
PLUGINS = ("olabel_lookahead-fst.so", "ngram-fst.so")
# Where OpenFst's FST-type plugins live: Debian's libfst22-plugins-base, RPM builds, a local build.
PLUGIN_DIRS = ("/usr/lib/*/fst/*", "/usr/lib/*/fst", "/usr/lib64/fst", "/usr/local/lib/fst")
TOOLS_HINT = "Debian: apt-get install libfst-tools libfst22-plugins-base"


def has_lookahead_pair(model_dir: Path) -> bool:
    return all((model_dir / "graph" / name).is_file() for name in LOOKAHEAD_FILES)


def graph_key(model_dir: Path) -> str:
    """Fingerprint of the pair a static graph is composed from: its files' sizes and the
    disambiguation ids (not their paths, so a graph built in one image stage fits another)."""
    graph = model_dir / "graph"
    parts = [f"{name}:{(graph / name).stat().st_size}" for name in LOOKAHEAD_FILES]
    parts.append((graph / "disambig_tid.int").read_text(encoding="utf-8"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def static_graph_dir(model_dir: Path, model_name: str, graph_dir: Path) -> Path:
    return graph_dir / f"{model_name}-{graph_key(model_dir)}"


def find_static_graph(model_dir: Path, model_name: str, graph_dir: Path) -> Path | None:
    """The built static graph of this model in ``graph_dir``, or None."""
    if not has_lookahead_pair(model_dir):
        return None
    built = static_graph_dir(model_dir, model_name, graph_dir)
    complete = all((built / "graph" / name).is_file() for name in STATIC_FILES)
    return built if complete and (built / MANIFEST).is_file() else None


def choose_graph(model_dir: Path, model_name: str, choice: str, graph_dir: Path) -> Path | None:
    """The static graph the engine should lay over the model, or None for the model as it is.

    ``lookahead``, or a model without the pair (a big model ships its own ``HCLG.fst``): None.
    ``static``: the built graph, or ``ModelNotFound`` saying how to build it. ``auto``: the built
    graph, else None with a warning (the service still runs, on the pair)."""
    if choice == "lookahead" or not has_lookahead_pair(model_dir):
        return None
    found = find_static_graph(model_dir, model_name, graph_dir)
    if found is None and choice == "static":
        raise ModelNotFound(
            f"no static graph of {model_name} in {graph_dir}: build it with "
            f"`python -m decoder_api models compile-graph --engine vosk --model {model_name}`"
        )
    if found is None:
        logger.warning(
            "static_graph_missing model=%s graph_dir=%s decoding=lookahead "
            "(python -m decoder_api models compile-graph builds it)",
            model_name,
            graph_dir,
        )
    return found


def fst_environment() -> dict[str, str]:
    """This environment with OpenFst's plugin directory on ``LD_LIBRARY_PATH``."""
    plugins = next(
        (d for pattern in PLUGIN_DIRS for d in sorted(glob.glob(pattern)) if _has_plugins(Path(d))), None
    )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or plugins is None:
        what = (
            f"{', '.join(missing)} not found"
            if missing
            else f"OpenFst plugins {', '.join(PLUGINS)} not found"
        )
        raise GraphBuildError(f"{what} ({TOOLS_HINT})")
    library_path = os.pathsep.join(p for p in (plugins, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return {**os.environ, "LD_LIBRARY_PATH": library_path}


def _has_plugins(directory: Path) -> bool:
    return all((directory / name).is_file() for name in PLUGINS)


def compile_static_graph(model_dir: Path, model_name: str, graph_dir: Path, force: bool = False) -> Path:
    """Build the static graph of ``model_dir`` into ``graph_dir`` (kept when already built, unless
    ``force``) and return its directory. It takes minutes of one core and about 3 GiB of memory
    for the Korean small model; the result appears atomically, so a half-built graph is never
    found."""
    if not has_lookahead_pair(model_dir):
        raise GraphBuildError(f"model {model_name} has no lookahead pair (graph/HCLr.fst + graph/Gr.fst)")
    target = static_graph_dir(model_dir, model_name, graph_dir)
    if not force and find_static_graph(model_dir, model_name, graph_dir) is not None:
        return target
    env = fst_environment()
    graph_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=graph_dir))
    started = time.monotonic()
    try:
        (staging / "graph").mkdir()
        source = model_dir / "graph"
        grammar, relabel = staging / "Gr.vector.fst", staging / "relabel.txt"
        words = staging / "graph" / "words.txt"
        symbols = ["fstsymbols", f"--save_osymbols={words}", "--clear_isymbols", "--clear_osymbols"]
        _run([[*symbols, str(source / "Gr.fst"), str(grammar)]], env)
        disambig = (source / "disambig_tid.int").read_text(encoding="utf-8").split()
        relabel.write_text("".join(f"{tid} 0\n" for tid in disambig), encoding="ascii")
        hclg = staging / "graph" / "HCLG.fst"
        _run(
            [
                ["fstcompose", str(source / "HCLr.fst"), str(grammar)],
                ["fstrelabel", f"--relabel_ipairs={relabel}"],
                ["fstconvert", "--fst_type=const", "-", str(hclg)],
            ],
            env,
        )
        grammar.unlink()
        relabel.unlink()
        manifest = {
            "model": model_name,
            "key": graph_key(model_dir),
            "source": str(model_dir),
            "hclg_bytes": hclg.stat().st_size,
            "build_s": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "static_graph_built model=%s path=%s seconds=%.0f", model_name, target, time.monotonic() - started
    )
    return target


def read_manifest(built: Path) -> dict[str, Any]:
    return dict(json.loads((built / MANIFEST).read_text(encoding="utf-8")))


def _run(pipeline: list[list[str]], env: dict[str, str]) -> None:
    """Run ``pipeline`` (each command's output into the next one's input); a failed step is a
    ``GraphBuildError`` with the first line of what it said."""
    processes: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        errors = [stack.enter_context(tempfile.TemporaryFile()) for _ in pipeline]
        previous: IO[bytes] | None = None
        try:
            for index, command in enumerate(pipeline):
                last = index == len(pipeline) - 1
                out = None if last else subprocess.PIPE
                process = subprocess.Popen(command, stdin=previous, stdout=out, stderr=errors[index], env=env)
                if previous is not None:
                    previous.close()  # the next process holds it now
                previous = process.stdout
                processes.append(process)
            for command, process, error in zip(pipeline, processes, errors, strict=True):
                if process.wait() != 0:
                    error.seek(0)
                    said = error.read().decode(errors="replace").strip().splitlines()
                    detail = said[0] if said else f"exit status {process.returncode}"
                    raise GraphBuildError(f"{command[0]} failed: {detail}")
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
