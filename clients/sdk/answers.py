"""What the relay answered, mapped in one place: a problem document (RFC 9457) becomes a
:class:`RelayRequestError` with the relay's stable ``code``; a success body is decoded strictly
into its :mod:`protocol.api` struct (unknown fields, wrong types: :class:`RelayResponseError`);
a success with a status the route does not give is a :class:`RelayResponseError` too, and so is
a problem document under a success status: the relay never sends one (server/problems.py pairs
every code with an error status), so whatever did is named with the code it carries, rather
than reported as a body that fails to decode."""

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


def _problem_under_success(response: httpx.Response, instead: str) -> None:
    """Raise :class:`RelayResponseError` if a success answer's body is a problem document
    (RFC 9457 §3: its media type, or an object with ``type``, ``status`` and our ``code``)."""
    if not response.content:
        return
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        doc = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return
    if not isinstance(doc, dict):
        return
    shaped = isinstance(doc.get("type"), str) and isinstance(doc.get("code"), str) \
        and isinstance(doc.get("status"), int)
    if media != "application/problem+json" and not shaped:
        return
    problem = parse_problem(response)
    said = f"{problem.code} (HTTP {doc['status']} in the document)" \
        if isinstance(doc.get("status"), int) else problem.code
    if problem.detail:
        said += f": {problem.detail}"
    raise RelayResponseError(
        f"{response.request.method} {response.request.url.path}: the relay answered HTTP "
        f"{response.status_code} (success) with an error document{instead}: {said}")


def decode_answer(response: httpx.Response, cls: type[T]) -> T:
    """The body of a successful answer as ``cls``; an error answer raises its problem."""
    if response.status_code >= 400:
        raise parse_problem(response)
    _problem_under_success(response, f" instead of a {cls.__name__}")
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
    _problem_under_success(response, "")
    if response.status_code not in statuses:
        raise RelayResponseError(
            f"{response.request.method} {response.request.url.path}: unexpected status "
            f"{response.status_code}"
        )
