"""API keys and per-session tokens. Secrets are compared as hashes in constant time, never logged."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from flask import Request

from decoder_api.errors import DecoderError
from decoder_api.sessions.session import hash_secret

SESSION_TOKEN_HEADER = "X-Session-Token"


class Unauthorized(DecoderError):
    code = "unauthorized"


class Forbidden(DecoderError):
    code = "forbidden"


def read_keys(keys: Iterable[str], keys_file: Path | None) -> list[str]:
    """Keys from settings plus a mounted file (one per line, ``#`` comments allowed)."""
    found = [k.strip() for k in keys if k.strip()]
    if keys_file is not None:
        lines = keys_file.read_text(encoding="utf-8").splitlines()
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return found


class ApiKeys:
    """The configured API keys (as hashes); disabled when none are configured."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._hashes = tuple(hash_secret(k) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def verify(self, presented: str | None) -> str | None:
        """The key's hash when valid; None when keys are disabled; 401 otherwise."""
        if not self.enabled:
            return None
        if presented is None:
            raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`")
        digest = hash_secret(presented)
        matches = [hmac.compare_digest(digest, known) for known in self._hashes]
        if not any(matches):
            raise Unauthorized("the API key is not valid")
        return digest


def bearer(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def session_token(request: Request, keys: ApiKeys) -> str | None:
    """The session token from its header, ``?token=``, or (without API keys) the bearer."""
    token = request.headers.get(SESSION_TOKEN_HEADER) or request.args.get("token")
    if token is None and not keys.enabled:
        token = bearer(request)
    return token


class SessionCredentials(Protocol):
    """What authorisation needs of a session, local or in the registry."""

    @property
    def token_hash(self) -> str: ...

    @property
    def owner_key_hash(self) -> str | None: ...


def authorize_session(session: SessionCredentials, token: str | None, key_hash: str | None) -> None:
    """A session is driven by its own token, or by the API key that opened it."""
    if token is not None and hmac.compare_digest(session.token_hash, hash_secret(token)):
        return
    owner = session.owner_key_hash
    if key_hash is not None and owner is not None and hmac.compare_digest(key_hash, owner):
        return
    if token is None and key_hash is None:
        raise Unauthorized(f"this session needs its token: send `{SESSION_TOKEN_HEADER}: <token>`")
    raise Forbidden("the token does not belong to this session")
