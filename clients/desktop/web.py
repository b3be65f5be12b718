"""The desktop's HTTP edge: a refusal with its status and sentence, bounded JSON bodies, and the
checks of ids and URLs the page sends.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

__all__ = [
    "MAX_JSON",
    "Refused",
    "checked_uuid",
    "http_url",
    "password_message",
    "read_json",
]


MAX_JSON = 64 * 1024


class Refused(Exception):
    """A request answered with ``{"error": message, **extra}`` and ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


async def read_json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0] != "application/json":
        raise Refused(415, "send JSON")
    raw = await request.body()
    if len(raw) > MAX_JSON:
        raise Refused(413, "too large")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise Refused(400, "malformed JSON") from exc
    if not isinstance(data, dict):
        raise Refused(400, "malformed JSON")
    return data


def checked_uuid(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise Refused(404, "not found") from exc


def password_message(exc: Exception) -> str:
    text = str(exc)
    if "password" in text.lower() or "passphrase" in text.lower():
        return "wrong password"
    return text


def http_url(url: str) -> str:
    """``url`` when it is http(s), else "": the page turns it into a link, so anything else
    (``javascript:``, ``data:``) is dropped here whatever the sender checked."""
    return url if urlsplit(url).scheme.lower() in {"http", "https"} else ""
