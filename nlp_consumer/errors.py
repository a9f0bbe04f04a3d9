"""The errors a user of the consumer, the dashboard or the training command may see as one line."""

from __future__ import annotations


class NlpError(Exception):
    """Base of every expected failure; entry points print ``error: <message>`` and exit non-zero."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(NlpError):
    code = "invalid_config"


class ModelUnavailable(NlpError):
    """No usable sentiment model (not trained yet, not a sentiment classifier, not loadable)."""

    code = "model_unavailable"


class CorpusError(NlpError):
    """The training sentences could not be fetched or read."""

    code = "corpus_unavailable"


class KafkaClientError(NlpError):
    """A Kafka client failure; ``kafka_code`` is the ``KafkaError`` name when there is one."""

    code = "kafka_error"

    def __init__(self, message: str, kafka_code: str | None = None) -> None:
        super().__init__(message)
        self.kafka_code = kafka_code
