"""CallBoard: bounded call state, expiry, and coalesced changes for the dashboard."""

from __future__ import annotations

from typing import Any

from nlp_consumer.dashboard.state import CallBoard


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def enriched(
    session_id: str, utterance: int, label: str = "NEUTRAL", text: str = "hello there"
) -> dict[str, Any]:
    polarity = {"POSITIVE": 0.8, "NEUTRAL": 0.0, "NEGATIVE": -0.7}[label]
    return {
        "event_id": f"{session_id}:{utterance}",
        "session_id": session_id,
        "user_id": "agent-7",
        "utterance": utterance,
        "text": text,
        "start_ms": utterance * 1000,
        "end_ms": utterance * 1000 + 900,
        "sentiment": {"label": label, "score": 0.9, "polarity": polarity},
        "explanation": [{"word": "hello", "weight": 0.1, "index": 0}],
        "keywords": [f"topic {utterance}"],
    }


def test_turns_update_the_call_and_duplicates_are_ignored() -> None:
    board = CallBoard(expire_s=60, clock=FakeClock())
    assert board.add(enriched("a", 0))
    assert board.add(enriched("a", 1, "NEGATIVE", "this is awful"))
    assert not board.add(enriched("a", 1, "NEGATIVE", "this is awful"))  # a redelivery
    detail = board.detail("a")
    assert detail is not None
    assert [t["utterance"] for t in detail["transcript"]] == [0, 1]
    assert detail["latest"]["label"] == "NEGATIVE" and detail["keywords"] == ["topic 1", "topic 0"]


def test_changes_since_coalesce_bursts_and_report_removals() -> None:
    clock = FakeClock()
    board = CallBoard(expire_s=30, clock=clock)
    board.add(enriched("a", 0))
    seen = board.version
    for utterance in range(1, 20):
        board.add(enriched("b", utterance))
    version, changed, removed = board.changes_since(seen) or (0, [], [])
    assert [c["id"] for c in changed] == ["b"] and changed[0]["turns"] == 19 and removed == []
    clock.now += 31
    assert sorted(board.expire()) == ["a", "b"]
    _, changed, removed = board.changes_since(version) or (0, [], [])
    assert changed == [] and sorted(removed) == ["a", "b"] and len(board) == 0


def test_state_is_bounded() -> None:
    clock = FakeClock()
    board = CallBoard(expire_s=60, max_calls=3, max_turns=5, clock=clock)
    for n in range(5):
        clock.now += 1
        board.add(enriched(f"call-{n}", 0))
    for utterance in range(1, 12):
        board.add(enriched("call-4", utterance))
    _, calls = board.snapshot()
    assert [c["id"] for c in calls] == ["call-4", "call-3", "call-2"]  # most recent first, oldest dropped
    detail = board.detail("call-4")
    assert detail is not None and [t["utterance"] for t in detail["transcript"]] == [7, 8, 9, 10, 11]
