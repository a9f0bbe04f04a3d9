"""What the user sees: a live terminal view, the bare transcript when piped, or JSON lines (``--json``).

In a terminal the open utterance's partial updates in place (one line per simulated caller; a
stereo call has one line per speaker, ``speaker: text``, with its partial or its last final)
while finals scroll above it; file mode adds a progress bar. Every run ends with a summary:
audio seconds, wall time, real-time factor (wall / audio), utterances and the mean partial
latency (the round trip of one chunk to its partial). When standard output is not a terminal it
carries only the transcript, one line per final (``speaker: text`` in a stereo call), and the
session lines, the summary and the statistics go to standard error. ``--json`` prints one JSON
object per line instead: ``session``, ``partial`` (when it changes), ``final``, ``end``,
``summary`` and, for the simulator, ``stats``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from recorder.events import (
    CallEvent,
    CallInfo,
    CallStarted,
    CallSummary,
    ChannelPartial,
    ChunkDecoded,
    Final,
    FinalReceived,
    SimulatorStats,
    final_to_json,
    speaker_line,
)

SPEAKER_STYLES = ("bold blue", "bold magenta")


class Display(Protocol):
    def __call__(self, event: CallEvent) -> None: ...

    def summary(self, summaries: list[CallSummary], wall_s: float) -> None: ...

    def stats(self, stats: SimulatorStats, final: bool = False) -> None: ...

    def running(self) -> Any:
        """A context manager around the run (the live view exists only inside it)."""
        ...


def clock(ms: int) -> str:
    """``m:ss.s``."""
    minutes, rest = divmod(max(ms, 0), 60_000)
    return f"{minutes}:{rest / 1000:04.1f}"


def totals(summaries: list[CallSummary], wall_s: float) -> dict[str, Any]:
    audio_s = sum(s.audio_ms for s in summaries) / 1000
    chunks = sum(s.chunks for s in summaries)
    return {
        "audio_s": round(audio_s, 3),
        "wall_s": round(wall_s, 3),
        "rtf": round(wall_s / audio_s, 4) if audio_s else None,
        "utterances": sum(s.utterances for s in summaries),
        "mean_latency_ms": round(sum(s.latency_sum_ms for s in summaries) / chunks, 1) if chunks else None,
    }


class JsonLinesDisplay:
    """One JSON object per line on ``out``, flushed at once (safe from many threads)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._partials: dict[int, tuple[str, tuple[ChannelPartial, ...]]] = {}

    @contextmanager
    def running(self) -> Iterator[None]:
        yield

    def __call__(self, event: CallEvent) -> None:
        body = self._body(event)
        if body is not None:
            self._write(body)

    def summary(self, summaries: list[CallSummary], wall_s: float) -> None:
        self._write({"type": "summary", **totals(summaries, wall_s)})

    def stats(self, stats: SimulatorStats, final: bool = False) -> None:
        body = {"type": "stats", "final": final, **stats_body(stats)}
        self._write(body)

    def _body(self, event: CallEvent) -> dict[str, Any] | None:
        if isinstance(event, CallStarted):
            session = event.session
            return (
                {"type": "session"}
                | call_body(event.call)
                | {
                    "session_id": session.session_id,
                    "engine": session.engine,
                    "model": session.model,
                    "language": session.language,
                    "sample_rate": session.sample_rate_hz,
                    "channels": session.channels,
                    "speakers": list(session.speakers),
                }
            )
        if isinstance(event, ChunkDecoded):
            return self._partial_body(event)
        if isinstance(event, FinalReceived):
            self._partials.pop(event.call.call_id, None)
            latency = None if event.latency_ms is None else round(event.latency_ms, 1)
            return {"type": "final", "call": event.call.call_id, "session_id": event.session.session_id} | (
                final_to_json(event.final) | {"latency_ms": latency}
            )
        return self._end_body(event.summary)

    def _partial_body(self, event: ChunkDecoded) -> dict[str, Any] | None:
        """A partial when it changed; a stereo call's adds each channel's (``partials``)."""
        shown = (event.partial, event.partials)
        if not any(p.text for p in event.partials) and not event.partial:
            return None
        if self._partials.get(event.call.call_id) == shown:
            return None
        self._partials[event.call.call_id] = shown
        body: dict[str, Any] = {
            "type": "partial",
            "call": event.call.call_id,
            "text": event.partial,
            "audio_ms": event.sent_ms,
        }
        if event.partials:
            body["partials"] = [
                {"channel": p.channel, "speaker": p.speaker, "text": p.text} for p in event.partials
            ]
        return body

    def _end_body(self, summary: CallSummary) -> dict[str, Any]:
        self._partials.pop(summary.call.call_id, None)
        latency = summary.mean_latency_ms
        return (
            {"type": "end"}
            | call_body(summary.call)
            | {
                "session_id": summary.session_id,
                "transcript": summary.transcript,
                "utterances": summary.utterances,
                "audio_ms": summary.audio_ms,
                "wall_s": round(summary.wall_s, 3),
                "mean_latency_ms": None if latency is None else round(latency, 1),
                "error": summary.error,
            }
        )

    def _write(self, body: dict[str, Any]) -> None:
        line = json.dumps(body, ensure_ascii=False)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def call_body(call: CallInfo) -> dict[str, Any]:
    body: dict[str, Any] = {"call": call.call_id, "source": call.source, "user_id": call.user_id}
    if call.caller:
        body["caller"] = call.caller
    return body


def stats_body(stats: SimulatorStats) -> dict[str, Any]:
    latency = stats.mean_latency_ms
    return {
        "elapsed_s": round(stats.elapsed_s, 1),
        "active": stats.active,
        "max_active": stats.max_active,
        "started": stats.started,
        "completed": stats.completed,
        "failed": stats.failed,
        "finals": stats.finals,
        "mean_latency_ms": None if latency is None else round(latency, 1),
    }


@dataclass
class LiveCall:
    """What the live view shows of one open call: the mono partial, or one line per speaker of a
    stereo call (``lines``: channel → text and whether it is a partial)."""

    call: CallInfo
    partial: str = ""
    speakers: dict[int, str] = field(default_factory=dict)
    lines: dict[int, tuple[str, bool]] = field(default_factory=dict)

    @property
    def stereo(self) -> bool:
        return bool(self.speakers)

    def update(self, event: ChunkDecoded) -> None:
        self.partial = event.partial
        for p in event.partials:
            self.speakers[p.channel] = p.speaker
            if p.text:  # an emptied partial stays until its final (which may be held) replaces it
                self.lines[p.channel] = (p.text, True)

    def final(self, final: Final) -> None:
        self.partial = ""
        if final.channel is not None:
            self.speakers[final.channel] = final.speaker or str(final.channel)
            self.lines[final.channel] = (final.text, False)


class TerminalDisplay:
    """Rich output: live partials and a progress bar in a terminal, plain lines otherwise.

    With ``transcript`` (standard output when it is not a terminal), the finals go there as bare
    lines and only there; ``console`` (then standard error) gets everything else.
    """

    def __init__(
        self, console: Console, show_progress: bool = False, transcript: TextIO | None = None
    ) -> None:
        self._console = console
        self._transcript = transcript
        self._lock = threading.RLock()
        self._calls: dict[int, LiveCall] = {}
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[position]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._show_progress = show_progress
        self._tasks: dict[int, TaskID] = {}
        self._live: Live | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        if not self._console.is_terminal:
            yield
            return
        self._live = Live(
            console=self._console, get_renderable=self._renderable, refresh_per_second=8, transient=True
        )
        with self._live:
            yield
        self._live = None

    def __call__(self, event: CallEvent) -> None:
        with self._lock:
            if isinstance(event, CallStarted):
                self._started(event)
            elif isinstance(event, ChunkDecoded):
                self._chunk(event)
            elif isinstance(event, FinalReceived):
                self._final(event.call, event.final)
            else:
                self._ended(event.summary)

    def summary(self, summaries: list[CallSummary], wall_s: float) -> None:
        values = totals(summaries, wall_s)
        table = Table(show_header=False, box=None, padding=(0, 2))
        rtf = "-" if values["rtf"] is None else f"{values['rtf']:.3f}"
        latency = "-" if values["mean_latency_ms"] is None else f"{values['mean_latency_ms']:.0f} ms"
        table.add_row("audio", f"{values['audio_s']:.1f} s")
        table.add_row("wall time", f"{values['wall_s']:.1f} s")
        table.add_row("real-time factor", rtf)
        table.add_row("utterances", str(values["utterances"]))
        table.add_row("mean partial latency", latency)
        self._print(table)

    def stats(self, stats: SimulatorStats, final: bool = False) -> None:
        body = stats_body(stats)
        latency = "-" if body["mean_latency_ms"] is None else f"{body['mean_latency_ms']:.0f} ms"
        label = "total" if final else f"{body['elapsed_s']:.0f} s"
        self._print(
            Text(
                f"[{label}] active {body['active']} (max {body['max_active']}) · calls {body['started']} "
                f"· done {body['completed']} · failed {body['failed']} · finals {body['finals']} "
                f"· latency {latency}",
                style="bold",
            )
        )

    def _started(self, event: CallStarted) -> None:
        session, call = event.session, event.call
        self._calls[call.call_id] = LiveCall(call, speakers=dict(enumerate(session.speakers)))
        model = " ".join(x for x in (session.engine, session.model) if x)
        speakers = f" · {' / '.join(session.speakers)}" if session.speakers else ""
        self._print(
            Text.assemble(
                self._prefix(call),
                (
                    f"session {session.session_id}{f' ({model})' if model else ''} · {call.source}{speakers}",
                    "dim",
                ),
            )
        )
        if self._show_progress and call.total_ms:
            self._tasks[call.call_id] = self._progress.add_task(
                "streaming", total=call.total_ms, position=self._position(0, call.total_ms)
            )

    def _chunk(self, event: ChunkDecoded) -> None:
        live = self._calls.setdefault(event.call.call_id, LiveCall(event.call))
        live.update(event)
        task = self._tasks.get(event.call.call_id)
        if task is not None and event.call.total_ms:
            position = self._position(event.sent_ms, event.call.total_ms)
            self._progress.update(task, completed=event.sent_ms, position=position)

    def _final(self, call: CallInfo, final: Final) -> None:
        self._calls.setdefault(call.call_id, LiveCall(call)).final(final)
        if self._transcript is not None:
            if final.text:
                self._transcript.write(f"{self._prefix(call).plain}{speaker_line(final)}\n")
                self._transcript.flush()
            return
        line = Text.assemble(self._prefix(call), (clock(final.start_ms), "dim"), " ")
        if final.speaker is not None:
            line.append(f"{final.speaker}: ", style=speaker_style(final.channel))
        self._print(line + Text(final.text))

    def _ended(self, summary: CallSummary) -> None:
        self._calls.pop(summary.call.call_id, None)
        task = self._tasks.pop(summary.call.call_id, None)
        if task is not None:
            self._progress.remove_task(task)
        if summary.call.caller:
            outcome = (
                Text(f"failed: {summary.error}", style="red")
                if summary.error
                else Text(f"ended · {summary.utterances} utterances · {summary.audio_ms / 1000:.1f} s", "dim")
            )
            self._print(Text.assemble(self._prefix(summary.call), outcome))

    def _renderable(self) -> RenderableType:
        with self._lock:
            lines: list[RenderableType] = []
            for live in self._calls.values():
                lines += self._live_lines(live)
            if self._tasks:
                lines.append(self._progress)
            return Group(*lines)

    def _live_lines(self, live: LiveCall) -> list[RenderableType]:
        """A mono call's open partial; a stereo call's two labelled lines, partial or last final."""
        prefix = self._prefix(live.call)
        if not live.stereo:
            if not live.partial:
                return []
            return [Text.assemble(prefix, ("… ", "dim"), (live.partial, "italic yellow"))]
        width = max(len(name) for name in live.speakers.values())
        lines: list[RenderableType] = []
        for channel in sorted(live.speakers):
            text, is_partial = live.lines.get(channel, ("", False))
            label = (f"{live.speakers[channel] + ':':<{width + 1}} ", speaker_style(channel))
            shown = (text, "italic yellow") if is_partial else (text, "dim")
            lines.append(Text.assemble(prefix, label, shown))
        return lines

    def _print(self, renderable: RenderableType) -> None:
        console = self._live.console if self._live is not None else self._console
        with self._lock:
            console.print(renderable, soft_wrap=True)

    @staticmethod
    def _prefix(call: CallInfo) -> Text:
        return Text(f"caller {call.caller} │ ", style="cyan") if call.caller else Text("")

    @staticmethod
    def _position(done_ms: int, total_ms: int) -> str:
        return f"{done_ms / 1000:.1f}/{total_ms / 1000:.1f} s"


def speaker_style(channel: int | None) -> str:
    return SPEAKER_STYLES[channel % len(SPEAKER_STYLES)] if channel is not None else ""
