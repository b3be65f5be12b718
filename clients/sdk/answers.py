"""What the relay answered, mapped in one place: a problem document (RFC 9457) becomes a
:class:`RelayRequestError` with the relay's stable ``code``; a success body is decoded strictly
into its :mod:`protocol.api` struct (unknown fields, wrong types: :class:`RelayResponseError`);
a success with a status the route does not give is a :class:`RelayResponseError` too."""

from __future__ import annotations

from typing import TypeVar

import httpx
import msgspec

from clients.sdk.errors import RelayRequestError, RelayResponseError

__all__ = ["MAX_RESPONSE_BYTES", "decode_answer", "expect_status", "parse_problem"]

T = TypeVar("T")

MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # the largest answer a client reads from the relay


def parse_problem(response: httpx.Response) -> RelayRequestError:
    """A :class:`RelayRequestError` from an error response (problem+json, or anything else)."""
    code, detail, retry_after, extra = f"http_{response.status_code}", None, None, None
    try:
        doc = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict):
        code = str(doc.get("code") or code)
        detail = doc.get("detail") if isinstance(doc.get("detail"), str) else None
        ra = doc.get("retry_after")
        retry_after = float(ra) if isinstance(ra, int | float) else None
        extra = doc.get("extra") if isinstance(doc.get("extra"), dict) else None
    if retry_after is None and response.headers.get("retry-after", "").isdigit():
        retry_after = float(response.headers["retry-after"])
    return RelayRequestError(code, response.status_code, detail, retry_after, extra)


def decode_answer(response: httpx.Response, cls: type[T]) -> T:
    """The body of a successful answer as ``cls``; an error answer raises its problem."""
    if response.status_code >= 400:
        raise parse_problem(response)
    try:
        return msgspec.json.decode(response.content, type=cls)
    except msgspec.DecodeError as exc:
        raise RelayResponseError(
            f"{response.request.method} {response.request.url.path}: answer is not a "
            f"valid {cls.__name__}: {exc}"
        ) from exc


def expect_status(response: httpx.Response, *statuses: int) -> None:
    """Accept an answer with no body of interest if its status is one of ``statuses``."""
    if response.status_code >= 400:
        raise parse_problem(response)
    if response.status_code not in statuses:
        raise RelayResponseError(
            f"{response.request.method} {response.request.url.path}: unexpected status "
            f"{response.status_code}"
        )
