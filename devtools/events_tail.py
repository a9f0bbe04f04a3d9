"""``python -m devtools.events_tail``: print a topic's events as JSON lines until Ctrl-C.

The broker and its security settings come from the standard ``KAFKA_*`` variables
(``contract.kafka``); no consumer group is joined and nothing is committed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from contract.env import InvalidSetting
from contract.events import InvalidEvent, decode_event
from contract.kafka import TRANSCRIPTS_TOPIC, load_kafka_client, transcripts_topic

CLOSE_TIMEOUT_S = 5.0  # Ctrl-C waits this long at most for the consumer to close


class TailError(Exception):
    """A failure worth one line to the user (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.events_tail", description="Inspect event topics."
    )
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    parser.add_argument("--session", metavar="ID", help="only this session's events")
    parser.add_argument("--topic", help=f"topic to read (default: KAFKA_TOPIC or {TRANSCRIPTS_TOPIC})")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return tail(args, os.environ if env is None else env, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 0
    except (TailError, InvalidSetting) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _kafka_failure(exc: KafkaException, context: str) -> TailError:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return TailError(f"{context}: {error.str() if error is not None else exc}")


def tail(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Read every partition of the topic and print its events; runs until interrupted."""
    client = load_kafka_client(env)
    if client is None:
        raise TailError("KAFKA_BOOTSTRAP_SERVERS is not set")
    topic = args.topic or transcripts_topic(env) or TRANSCRIPTS_TOPIC
    reported: set[str] = set()

    def on_error(error: Any) -> None:
        if error.str() not in reported:
            reported.add(error.str())
            print(f"warning: {error.str()}", file=err, flush=True)

    consumer_config: dict[str, Any] = client.client_config("events-tail") | {
        "group.id": f"events-tail-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "error_cb": on_error,
        "log_level": 0,
    }
    try:
        consumer = Consumer(consumer_config)
    except KafkaException as exc:
        raise _kafka_failure(exc, "cannot create a Kafka consumer") from None
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise _kafka_failure(exc, f"cannot reach Kafka at {client.bootstrap_servers}") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise TailError(f"topic {topic} does not exist")
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
        # a broker slow to answer the group's last requests must not keep Ctrl-C waiting: nothing
        # was committed, so the exit loses nothing
        closing = threading.Thread(target=consumer.close, name="close", daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT_S)


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
