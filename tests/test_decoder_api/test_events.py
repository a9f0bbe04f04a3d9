"""The decoder's side of the event contract: finals become transcript.v1 events.

The contract itself (schemas, the dataclasses' round trip) is tested in tests/test_contract.
"""

from __future__ import annotations

import json

from contract.events import TRANSCRIPT_SCHEMA, Word
from decoder_api.delivery.events import EventSource, events_from_finals
from decoder_api.engines.base import Final
from tests.test_contract.test_events import schema_validator

ORIGIN = EventSource(engine="vosk", model="vosk-model-small-ko-0.22", language="ko")


def test_events_from_finals_skip_empty_finals_and_stamp_rfc3339_utc() -> None:
    finals = [
        Final(0, "안녕하세요", 300, 1200),
        Final(1, "", 1500, 1600),
        Final(2, "  ", 1700, 1800),
        Final(3, "감사합니다", 2400, 3300, (Word("감사합니다", 2400, 3300, 1.0000001),)),
    ]
    events = events_from_finals(finals, session_id="abc", user_id="u", origin=ORIGIN, metadata={"k": "v"})
    assert [e.utterance for e in events] == [0, 3]
    assert [e.event_id for e in events] == ["abc:0", "abc:3"]
    assert events[1].words == (Word("감사합니다", 2400, 3300, 1.0),)  # the contract's, clamped into 0..1
    assert all(e.metadata == {"k": "v"} and e.engine == "vosk" for e in events)
    assert events[0].produced_at == events[1].produced_at
    for e in events:
        schema_validator(TRANSCRIPT_SCHEMA).validate(json.loads(e.to_json()))
