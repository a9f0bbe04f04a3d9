"""Sentiment enrichment of final transcripts (Kafka consumer) and the live calls dashboard.

``python -m nlp_consumer.train`` builds the sentiment model, ``python -m nlp_consumer`` runs the
consumer (``transcripts.v1`` → ``transcripts.enriched.v1``) and ``python -m nlp_consumer
--dashboard`` serves the dashboard. See ``README.md`` in this package.
"""
