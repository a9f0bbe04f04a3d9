"""What a stereo call looks like: two labelled lines in a terminal, ``speaker: text`` lines when
piped, ``partials`` in JSON lines; a mono call as before."""

from __future__ import annotations

import io
import json

from rich.console import Console

from recorder.display import JsonLinesDisplay, TerminalDisplay
from recorder.events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallStarted,
    CallSummary,
    ChannelPartial,
    ChunkDecoded,
    Final,
    FinalReceived,
    SessionInfo,
)

CALL = CallInfo(1, "call.wav", "recorder")
STEREO = SessionInfo("s-1", 16000, "whisper", "tiny.en", "en", 2, ("agent", "customer"))
MONO = SessionInfo("s-2", 16000, "whisper", "tiny.en", "en")


def partials(agent: str, customer: str) -> tuple[ChannelPartial, ...]:
    return ChannelPartial(0, "agent", agent), ChannelPartial(1, "customer", customer)


STEREO_EVENTS: list[CallEvent] = [
    CallStarted(CALL, STEREO),
    ChunkDecoded(CALL, "thank you", 200, 5.0, partials("thank you", "")),
    ChunkDecoded(CALL, "thank you", 400, 5.0, partials("thank you", "")),
    ChunkDecoded(CALL, "hello", 600, 5.0, partials("", "hello")),
    FinalReceived(CALL, STEREO, Final(0, "Thank you for calling.", 100, 500, channel=0, speaker="agent")),
]


def rendered(display: TerminalDisplay) -> list[str]:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    with console.capture() as capture:
        console.print(display._renderable())
    return capture.get().splitlines()


def test_a_terminal_shows_a_stereo_call_as_one_labelled_line_per_speaker() -> None:
    out = io.StringIO()
    display = TerminalDisplay(Console(file=out, width=100, color_system=None))
    for event in STEREO_EVENTS:
        display(event)
    # the agent's last final, the customer's open partial
    assert rendered(display) == ["agent:    Thank you for calling.", "customer: hello"]
    assert "0:00.1 agent: Thank you for calling." in out.getvalue()
    assert "agent / customer" in out.getvalue()


def test_a_piped_run_writes_only_speaker_lines_to_the_transcript() -> None:
    transcript, status = io.StringIO(), io.StringIO()
    display = TerminalDisplay(Console(file=status, width=100, color_system=None), transcript=transcript)
    empty = FinalReceived(CALL, STEREO, Final(1, "", 600, 700, channel=1, speaker="customer"))
    ended = CallEnded(CallSummary(CALL, "s-1", "Thank you for calling.", 1, 1000, 0.5))
    for event in [*STEREO_EVENTS, empty, ended]:
        display(event)
    display.summary([ended.summary], 0.5)
    assert transcript.getvalue() == "agent: Thank you for calling.\n"
    assert "session s-1" in status.getvalue()
    assert "real-time factor" in status.getvalue()
    assert "Thank you" not in status.getvalue()


def test_a_mono_call_is_shown_as_before() -> None:
    transcript = io.StringIO()
    display = TerminalDisplay(
        Console(file=io.StringIO(), width=100, color_system=None), transcript=transcript
    )
    display(CallStarted(CALL, MONO))
    display(ChunkDecoded(CALL, "hello", 200, 5.0))
    assert rendered(display) == ["… hello"]
    display(FinalReceived(CALL, MONO, Final(0, "Hello there.", 0, 900)))
    assert rendered(display) == []
    assert transcript.getvalue() == "Hello there.\n"


def test_json_lines_add_each_channel_s_partial_and_the_final_s_speaker() -> None:
    out = io.StringIO()
    display = JsonLinesDisplay(out)
    for event in STEREO_EVENTS:
        display(event)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["type"] for line in lines] == ["session", "partial", "partial", "final"]  # unchanged: once
    assert (lines[0]["channels"], lines[0]["speakers"]) == (2, ["agent", "customer"])
    assert lines[2]["partials"] == [
        {"channel": 0, "speaker": "agent", "text": ""},
        {"channel": 1, "speaker": "customer", "text": "hello"},
    ]
    assert (lines[3]["channel"], lines[3]["speaker"], lines[3]["text"]) == (
        0,
        "agent",
        "Thank you for calling.",
    )
