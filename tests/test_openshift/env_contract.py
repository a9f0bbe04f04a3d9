"""Every environment variable the manifests set on our own containers, in ONE place.

``test_env_contract.py`` holds both sides to it: each rendered overlay sets exactly these names
on each container (from ConfigMaps, Secrets or literals), and the code reads each of them. The
decoder's names are checked strictly against ``decoder_api.config`` (``Settings`` fields behind
``DECODER_``, plus its unprefixed ``REDIS_URL`` names) and the contract's ``KAFKA_*`` variables
(``contract.kafka``, in every image); the other packages' names are checked against their
image's source (package and contract) as soon as the package runs as its container runs it (it has a
``__main__.py``: ``recorder`` now, ``nlp_consumer`` when it lands), so the check tightens by
itself. Renaming a variable means changing it here, in the manifests and in the code, or a test
fails.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerEnv:
    """The variables one container gets, and the Python package that reads them."""

    package: str
    reads: frozenset[str]
    # Only expanded by Kubernetes into the container's command (``$(NAME)``), not read by code.
    command_only: frozenset[str] = frozenset()
    # Command-line words the package must accept (``python -m package WORD ...``).
    command_words: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return self.reads | self.command_only


KAFKA_CLIENT = frozenset(
    {
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD_FILE",
        "KAFKA_SSL_CA_LOCATION",
    }
)

CONTAINERS: dict[str, ContainerEnv] = {
    "decoder": ContainerEnv(
        package="decoder_api",
        reads=frozenset(
            {
                "DECODER_HOST",
                "DECODER_PORT",
                "DECODER_ENGINE",
                "DECODER_MODEL",
                "DECODER_THREADS",
                "DECODER_MAX_SESSIONS",
                "DECODER_GRACEFUL_TIMEOUT_S",
                "DECODER_POOL_WARM",
                "DECODER_POOL_MAX_IDLE",
                "DECODER_API_KEYS_FILE",
                "KAFKA_TOPIC",
                "REDIS_URL",
                *KAFKA_CLIENT,
            }
        ),
        command_words=("serve",),
    ),
    "nlp-consumer": ContainerEnv(
        package="nlp_consumer",
        reads=frozenset(
            {
                "NLP_GROUP_ID",
                "NLP_INPUT_TOPIC",
                "NLP_OUTPUT_TOPIC",
                "NLP_DLQ_TOPIC",
                "NLP_SUMMARY_TOPIC",
                "NLP_METRICS_PORT",
                "SENTIMENT_MODEL",
                *KAFKA_CLIENT,
            }
        ),
    ),
    "dashboard": ContainerEnv(
        package="nlp_consumer",
        # No group id: each dashboard instance makes its own, so every instance sees every call.
        reads=frozenset(
            {"DASHBOARD_HOST", "DASHBOARD_PORT", "DASHBOARD_TOPIC", "DASHBOARD_SUMMARY_TOPIC", *KAFKA_CLIENT}
        ),
        command_words=("--dashboard",),
    ),
    "simulator": ContainerEnv(
        package="recorder",
        # No KAFKA_BOOTSTRAP_SERVERS (or KAFKA_BROKERS) nor KAFKA_TOPIC: with those the recorder
        # publishes its own copy of every final; in the cluster the decoder publishes them.
        reads=frozenset({"HOST", "DO_SIMULATE", "DECODER_API_KEY"}),
        command_only=frozenset({"SIMULATOR_CALLERS"}),
        command_words=("-S", "--json", "--callers"),
    ),
}

# Topic each variable names, as the services' own defaults have it.
TOPICS = {
    "KAFKA_TOPIC": "transcripts.v1",
    "NLP_INPUT_TOPIC": "transcripts.v1",
    "NLP_OUTPUT_TOPIC": "transcripts.enriched.v1",
    "DASHBOARD_TOPIC": "transcripts.enriched.v1",
    "NLP_DLQ_TOPIC": "transcripts.dlq.v1",
    "NLP_SUMMARY_TOPIC": "calls.summary.v1",
    "DASHBOARD_SUMMARY_TOPIC": "calls.summary.v1",
}
# Every topic the Strimzi overlays create: the above plus the decoder's partial results.
ALL_TOPICS = frozenset({*TOPICS.values(), "transcripts.partial.v1"})
