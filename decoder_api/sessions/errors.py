"""The errors a session raises, each one code of ``decoder_api.errors.ERROR_CODES``."""

from __future__ import annotations

from decoder_api.errors import DecoderError


class SessionNotFound(DecoderError):
    code = "session_not_found"


class SessionExpired(DecoderError):
    code = "session_expired"


class SessionEnded(DecoderError):
    code = "session_ended"


class SessionBusy(DecoderError):
    code = "session_busy"


class ChunkOutOfOrder(DecoderError):
    code = "chunk_out_of_order"


class WrongInstance(DecoderError):
    code = "wrong_instance"


class TooManySessions(DecoderError):
    code = "too_many_sessions"


class CapacityExceeded(DecoderError):
    code = "capacity"


class ShuttingDown(DecoderError):
    code = "shutting_down"
