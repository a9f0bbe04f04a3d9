"""``python -m tests.test_nlp_consumer.crashing_consumer``: the NLP consumer, SIGKILLed at the worst
moment for a call summary: the summary is delivered (acknowledged by the broker) and the offsets
of its batch are not committed yet."""

from __future__ import annotations

import os
import signal
import sys

from nlp_consumer.__main__ import main
from nlp_consumer.consumer import EnrichmentConsumer, _Output

_deliver = EnrichmentConsumer._deliver


def deliver_or_die(self: EnrichmentConsumer, output: _Output) -> None:
    _deliver(self, output)
    if output.summaries:
        print("crashing_consumer: killed before committing a summary", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


EnrichmentConsumer._deliver = deliver_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
