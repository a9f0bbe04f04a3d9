"""``python -m tests.test_nlp_consumer.crashing_consumer``: the NLP consumer, SIGKILLed at the worst
moment for a call summary: the summary and the batch's offsets are in the open transaction, the
summary is on the broker (flushed), and the transaction is not committed yet."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from confluent_kafka import TopicPartition

from nlp_consumer.__main__ import main
from nlp_consumer.consumer import EnrichmentConsumer, _Output

_commit = EnrichmentConsumer._commit


def die_before_committing(producer: Any) -> None:
    producer.flush(30)
    print("crashing_consumer: killed before committing a summary", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def commit_or_die(self: EnrichmentConsumer, offsets: list[TopicPartition], output: _Output) -> None:
    if output.summaries:
        self._commit_transaction = die_before_committing  # type: ignore[method-assign]
    _commit(self, offsets, output)


EnrichmentConsumer._commit = commit_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
