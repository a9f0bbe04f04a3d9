"""The enriched event contract stays a superset of transcript.v1."""

from __future__ import annotations

from contract.events import load_schema
from nlp_consumer.events import enriched_schema


def test_enriched_schema_keeps_every_transcript_field() -> None:
    transcript, enriched = load_schema("transcript.v1"), enriched_schema()
    assert set(transcript["required"]) <= set(enriched["required"])
    for name, definition in transcript["properties"].items():
        if name != "schema":
            assert enriched["properties"][name] == definition, name
    assert enriched["properties"]["schema"] == {"const": "transcript.enriched.v1"}
