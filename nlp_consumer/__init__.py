"""Sentiment enrichment of final transcripts (Kafka consumer) and the live calls dashboard.

``python -m nlp_consumer.train`` builds the sentiment model, ``python -m nlp_consumer`` runs the
consumer (``transcripts.v1`` → ``transcripts.enriched.v1``) and ``python -m nlp_consumer
--dashboard`` serves the dashboard. See ``README.md`` in this package.
"""

import os

# The sentiment model runs on ONNX Runtime, which otherwise sends usage telemetry to Microsoft (and
# stores a device id) as soon as it is imported; ORT_DISABLE_TELEMETRY=0 turns it back on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
