"""Domain errors of the relay. Storage and service code raise these; they never speak HTTP.

The web layer (server/problems.py) maps each :class:`~protocol.errors.ErrorCode` to an HTTP
status in one table, and the websocket layer to an ``error`` frame or a close code.

Exception tree::

    RelayError(code, detail, extra, retry_after)
    ├── NotFound            the resource does not exist (or is not visible to the caller)
    ├── Conflict            the request conflicts with current state
    ├── Unauthorized        no valid credentials
    ├── Forbidden           credentials valid, action not allowed
    ├── InvalidInput        the request is well-formed JSON but semantically invalid
    └── LimitError          a size, rate or count limit (carries retry_after when relevant)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol.errors import ErrorCode

__all__ = [
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "LimitError",
    "NotFound",
    "RelayError",
    "Unauthorized",
]


class RelayError(Exception):
    """A failure with a stable code and a detail safe to show to the caller.

    ``detail`` must never contain secrets or PHI; ``extra`` holds structured, non-sensitive
    fields for the client (e.g. lists of device ids).
    """

    default_code = ErrorCode.BAD_REQUEST

    def __init__(
        self,
        code: ErrorCode | None = None,
        detail: str | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = code or self.default_code
        self.detail = detail
        self.extra = dict(extra or {})
        self.retry_after = retry_after
        super().__init__(f"{self.code.value}: {detail}" if detail else self.code.value)


class NotFound(RelayError):
    default_code = ErrorCode.NOT_FOUND


class Conflict(RelayError):
    default_code = ErrorCode.CONFLICT


class Unauthorized(RelayError):
    default_code = ErrorCode.UNAUTHENTICATED


class Forbidden(RelayError):
    default_code = ErrorCode.FORBIDDEN


class InvalidInput(RelayError):
    default_code = ErrorCode.VALIDATION_FAILED


class LimitError(RelayError):
    default_code = ErrorCode.RATE_LIMITED
