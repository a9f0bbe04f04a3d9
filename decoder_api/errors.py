"""The DecoderError hierarchy: every expected failure carries a code, a message and a status."""

from __future__ import annotations

from typing import Any, ClassVar


class DecoderError(Exception):
    """Base of every error a user may see; the HTTP layer turns it into JSON, the CLI into one line."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class ModelNotFound(DecoderError):
    code = "model_not_found"
    status = 404


class ModelDownloadError(DecoderError):
    code = "model_download_failed"
    status = 502


class UnsupportedAudio(DecoderError):
    code = "unsupported_audio"
    status = 415


class EmptyAudio(DecoderError):
    code = "empty_audio"
    status = 400
