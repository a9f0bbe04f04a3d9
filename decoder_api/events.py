"""The decoder's side of the transcript event contract (``contract.events``): its finals become
``transcript.v1`` events here, and ``python -m decoder_api.events tail`` prints a topic's events.

``events_from_finals`` turns an engine's finals into events: empty finals are never produced,
word confidences are clamped into 0..1 and the engine's words become the contract's. ``tail``
reads the broker from ``KAFKA_BOOTSTRAP_SERVERS`` and the other ``KAFKA_*`` variables.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from contract.events import SOURCE_DECODER, InvalidEvent, TranscriptEvent, Word, decode_event, rfc3339_utc
from decoder_api.engines.base import Final
from decoder_api.errors import DecoderError


@dataclass(frozen=True, slots=True)
class EventSource:
    """Who produces the events: the engine and model that decoded, and the producing component."""

    engine: str
    model: str
    language: str
    source: str = SOURCE_DECODER


def events_from_finals(
    finals: Iterable[Final],
    *,
    session_id: str,
    user_id: str,
    origin: EventSource,
    metadata: Mapping[str, Any] | None = None,
    produced_at: str | None = None,
) -> list[TranscriptEvent]:
    """One event per non-empty final, all stamped with the same ``produced_at``."""
    stamp = produced_at or rfc3339_utc()
    return [
        TranscriptEvent(
            session_id=session_id,
            user_id=user_id,
            utterance=final.utterance,
            text=final.text,
            start_ms=final.start_ms,
            end_ms=final.end_ms,
            engine=origin.engine,
            model=origin.model,
            language=origin.language,
            produced_at=stamp,
            words=_clamped(final.words),
            source=origin.source,
            metadata=dict(metadata) if metadata else None,
        )
        for final in finals
        if final.text.strip()
    ]


def _clamped(words: tuple[Word, ...] | None) -> tuple[Word, ...] | None:
    """The contract's words, confidences within 0..1 (an engine's rounding must not make a final
    unpublishable)."""
    if words is None:
        return None
    return tuple(
        Word(w.word, max(w.start_ms, 0), max(w.end_ms, 0), min(max(w.conf, 0.0), 1.0)) for w in words
    )


# --- python -m decoder_api.events tail -------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decoder_api.events", description="Inspect event topics.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tail = commands.add_parser("tail", help="print a topic's events as JSON lines until Ctrl-C")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    tail.add_argument("--session", metavar="ID", help="only this session's events")
    tail.add_argument("--topic", help="topic to read (default: KAFKA_TOPIC or transcripts.v1)")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return tail(args, os.environ if env is None else env, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 0
    except DecoderError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def tail(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Read every partition of the topic (no consumer group, nothing committed) and print events."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

    from decoder_api.config import ConfigError, load_settings
    from decoder_api.publisher import KafkaClientError, kafka_config

    settings = load_settings(env)
    config = kafka_config(settings)
    if config is None:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set")
    topic = args.topic or config.topic
    reported: set[str] = set()

    def on_error(error: Any) -> None:
        if error.str() not in reported:
            reported.add(error.str())
            print(f"warning: {error.str()}", file=err, flush=True)

    consumer_config = config.client_config() | {
        "group.id": f"decoder-tail-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "error_cb": on_error,
        "log_level": 0,
    }
    try:
        consumer = Consumer(consumer_config)
    except KafkaException as exc:
        raise KafkaClientError.wrap(exc, "cannot create a Kafka consumer") from None
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise KafkaClientError.wrap(exc, f"cannot reach Kafka at {config.bootstrap_servers}") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise KafkaClientError(f"topic {topic} does not exist")
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(found.partitions)])
        while True:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                on_error(message.error())
                continue
            _print_message(message, args.session, out, err)
    finally:
        consumer.close()


def _print_message(message: Any, session: str | None, out: TextIO, err: TextIO) -> None:
    key = (message.key() or b"").decode("utf-8", "replace")
    if session is not None and key != session:
        return
    where = f"{message.topic()}/{message.partition()}@{message.offset()}"
    try:
        event = decode_event(message.value() or b"")
    except InvalidEvent as exc:
        print(f"warning: skipped {where}: {exc.message}", file=err, flush=True)
        return
    print(json.dumps(event.to_dict(), ensure_ascii=False), file=out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
