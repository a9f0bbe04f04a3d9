"""``make demo``'s job, ``python -m devtools.demo``, end to end on a short call of our own: the local
broker and Redis, the decoder, the NLP consumer and the dashboard; the call's finals come back
enriched and its summary arrives (the manifest does not know this call: the summary is what tells
the demo that every final is in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import wave
from pathlib import Path

from devtools.devstack import free_port
from devtools.processes import ROOT

FIRST_TURNS_S = 14.4  # call0.wav's first three turns (the fourth starts at 14.53 s)


def first_seconds(source: Path, seconds: float, target: Path) -> Path:
    with wave.open(str(source), "rb") as src, wave.open(str(target), "wb") as out:
        out.setparams(src.getparams())
        out.writeframes(src.readframes(round(seconds * src.getframerate())))
    return target


def test_the_demo_streams_a_call_and_shows_it_enriched_and_summarised(tmp_path: Path) -> None:
    call = first_seconds(ROOT / "data" / "call0.wav", FIRST_TURNS_S, tmp_path / "short-call.wav")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_"))}
    env |= {"DASHBOARD_PORT": str(free_port()), "COLUMNS": "200"}
    argv = [sys.executable, "-m", "devtools.demo", "--call", str(call), "--workdir", str(tmp_path / "demo")]
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    tally = re.search(r"(\d+) of \? turns enriched \((\d+) positive, (\d+) neutral, (\d+) negative\)", output)
    assert tally is not None, output[-3000:]
    assert int(tally[1]) == 3 == sum(int(n) for n in tally.groups()[1:]), tally[0]
    assert "call summary (calls.summary.v1)" in output and "extractive summary" in output
    assert "I am calling about an order" in output  # the first turn, as transcribed and enriched
