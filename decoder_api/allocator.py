"""The memory allocator of the serving process: the environment ``serve`` starts it with, and
which allocator a running process has actually loaded."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from decoder_api.config import ConfigError

logger = logging.getLogger(__name__)

JEMALLOC_LIBRARIES = (
    Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),  # Debian/Ubuntu package libjemalloc2
    Path("/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"),
    Path("/usr/lib64/libjemalloc.so.2"),  # RHEL/UBI package jemalloc
    Path("/usr/lib/libjemalloc.so.2"),
)
# Freed pages go back to the system within about a second, from jemalloc's own thread.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
ALLOCATORS = ("glibc", "jemalloc", "auto")
# Allocators an operator may preload, by the file name their library starts with.
PRELOADED_ALLOCATORS = {"libjemalloc": "jemalloc", "libtcmalloc": "tcmalloc", "libmimalloc": "mimalloc"}
SELF_MAPS = Path("/proc/self/maps")


def allocator_env(
    choice: str | None, env: Mapping[str, str], libraries: Sequence[Path] = JEMALLOC_LIBRARIES
) -> dict[str, str]:
    """The environment that gives the server process its memory allocator.

    Kaldi allocates and frees small blocks from every decoding thread. glibc's malloc then either
    contends on a few arenas (``MALLOC_ARENA_MAX=2``: half the throughput at 8 streams on 2 cores)
    or keeps free memory in many. jemalloc does neither (see
    ``bench/results/service.md``), so it is the default (``choice`` None): preloaded when the
    library is installed, else glibc with a warning, so a machine without it still serves.
    ``jemalloc`` asked for explicitly and missing is a ``ConfigError``; ``auto`` falls back to
    glibc without a warning; ``glibc`` keeps glibc with two arenas.

    Decodes are reproducible under one allocator, not across them: under jemalloc Vosk's word
    confidences differ from glibc's in the fifth decimal (buffers lie at other addresses, so
    vectorised arithmetic rounds differently; ``MALLOC_PERTURB_`` and the arena count change
    nothing, so it is not an uninitialised read), and once such a difference flipped a word. So
    every instance of a deployment should run the same allocator: each records the one it runs
    (``running_allocator``) in the session registry, and a takeover across allocators is logged
    and counted. An ``LD_PRELOAD`` or ``MALLOC_*`` already in the environment is left alone.
    """
    if choice is not None and choice not in ALLOCATORS:
        raise ConfigError(f"DECODER_ALLOCATOR={choice!r}: expected one of {', '.join(ALLOCATORS)}")
    extra: dict[str, str] = {}
    library = next((path for path in libraries if path.is_file()), None)
    if choice == "jemalloc" and library is None:
        raise ConfigError(
            "DECODER_ALLOCATOR=jemalloc: libjemalloc.so.2 is not installed "
            "(Debian: apt-get install libjemalloc2)"
        )
    if choice is None and library is None and "LD_PRELOAD" not in env:
        logger.warning(
            "allocator_fallback allocator=glibc default=jemalloc reason=libjemalloc.so.2_not_installed "
            "(Debian: apt-get install libjemalloc2; DECODER_ALLOCATOR=glibc chooses glibc)"
        )
    if choice != "glibc" and library is not None and "LD_PRELOAD" not in env:
        extra["LD_PRELOAD"] = str(library)
        extra["MALLOC_CONF"] = env.get("MALLOC_CONF", JEMALLOC_CONF)
    # glibc reads this at process start, so gunicorn's raw_env would be too late for it.
    extra["MALLOC_ARENA_MAX"] = env.get("MALLOC_ARENA_MAX", "2")
    return extra


def running_allocator(maps: Path = SELF_MAPS) -> str:
    """The allocator this process has loaded, read from its memory map rather than from the
    settings that asked for it: ``jemalloc`` (or another preloaded allocator), else ``glibc``;
    ``unknown`` where the map cannot be read."""
    try:
        text = maps.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    names = {Path(line.split(maxsplit=5)[-1]).name for line in text.splitlines() if "/" in line}
    for prefix, allocator in PRELOADED_ALLOCATORS.items():
        if any(name.startswith(prefix) for name in names):
            return allocator
    return "glibc"
