"""The RecorderError hierarchy: every expected failure is one readable line for the user."""

from __future__ import annotations

from typing import ClassVar


class RecorderError(Exception):
    """Base of every error a user may see; the CLI prints ``message`` and exits with ``exit_code``."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RecorderError):
    """A bad option or environment value."""

    exit_code = 2


class SourceError(RecorderError):
    """An audio file, stdin or decoding problem."""


class MicrophoneError(SourceError):
    """No input device, a busy device, or a device that cannot record."""


class ServerError(RecorderError):
    """The decoder answered with an error (``code`` is its JSON ``error`` field)."""

    def __init__(self, message: str, status: int = 0, code: str = "", retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s


class Unreachable(RecorderError):
    """No answer from the decoder (refused, reset, timed out, unknown host)."""


class SessionLost(RecorderError):
    """The decoder no longer knows the session: audio since the last final is lost."""


class AmbiguousChunk(RecorderError):
    """A chunk's request failed without an answer and the server cannot drop a resent duplicate."""


class KafkaDeliveryError(RecorderError):
    """Transcripts that Kafka did not acknowledge."""
