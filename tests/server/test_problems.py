"""HTTP error responses (server/problems.py): an RFC 9457 problem document with our stable
code, the one status table, ``Retry-After`` as RFC 9110 §10.2.3 delay-seconds, and a relay error
carried over without adding anything of its own."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.responses import Response

from protocol.errors import DESCRIPTIONS, CloseCode, ErrorCode
from server.errors import LimitError, RelayError
from server.problems import (
    HTTP_STATUS,
    PROBLEM_BASE,
    error_table_markdown,
    problem_response,
    relay_error_response,
)


def body(r: Response) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bytes(r.body))
    return doc


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_answers_with_its_status_type_and_title(code: ErrorCode) -> None:
    r = problem_response(code)
    assert r.status_code == HTTP_STATUS[code]
    assert r.media_type == "application/problem+json"
    assert body(r) == {"type": PROBLEM_BASE + code.value, "title": DESCRIPTIONS[code],
                       "status": HTTP_STATUS[code], "code": code.value}


def test_a_problem_leaves_out_what_it_was_not_given() -> None:
    r = problem_response(ErrorCode.NOT_FOUND)
    assert set(body(r)) == {"type", "title", "status", "code"}
    assert "retry-after" not in r.headers


def test_detail_request_id_and_extra_are_carried_as_given() -> None:
    r = problem_response(ErrorCode.DEVICE_SET_MISMATCH, "the device set changed",
                         request_id="req-1", extra={"missing": ["d1"]},
                         headers={"x-test": "kept"})
    assert r.status_code == 409
    assert body(r)["detail"] == "the device set changed"
    assert (body(r)["request_id"], body(r)["extra"]) == ("req-1", {"missing": ["d1"]})
    assert r.headers["x-test"] == "kept"


@pytest.mark.parametrize(("retry_after", "header"), [
    (0.0, "0"), (0.2, "1"), (1.0, "1"), (29.01, "30"), (-5.0, "0")])
def test_retry_after_is_whole_seconds_rounded_up_and_never_negative(
        retry_after: float, header: str) -> None:
    r = problem_response(ErrorCode.RATE_LIMITED, retry_after=retry_after)
    assert r.headers["retry-after"] == header
    assert body(r)["retry_after"] == retry_after


def test_a_relay_error_becomes_the_problem_of_its_code() -> None:
    exc = LimitError(ErrorCode.ACCOUNT_LOCKED, "too many failed logins", retry_after=12.5,
                     extra={"scope": "account"})
    r = relay_error_response(exc, request_id="req-2")
    assert r.status_code == 429 and r.headers["retry-after"] == "13"
    assert body(r) == {"type": PROBLEM_BASE + "account_locked",
                       "title": DESCRIPTIONS[ErrorCode.ACCOUNT_LOCKED], "status": 429,
                       "code": "account_locked", "detail": "too many failed logins",
                       "request_id": "req-2", "retry_after": 12.5,
                       "extra": {"scope": "account"}}


def test_a_relay_error_without_extra_sends_no_extra() -> None:
    assert "extra" not in body(relay_error_response(RelayError(ErrorCode.CONFLICT, "taken")))


def test_the_error_table_has_one_row_per_code_and_per_close_code() -> None:
    table = error_table_markdown()
    for code in ErrorCode:
        assert f"| `{code.value}` | {HTTP_STATUS[code]} |" in table
    for close in CloseCode:
        assert f"| {int(close)} | `{close.name.lower()}` |" in table


def test_the_error_table_names_the_close_code_an_error_ends_a_socket_with() -> None:
    rows = {line.split(" | ")[0]: line for line in error_table_markdown().splitlines()}
    assert f"| {int(CloseCode.DEVICE_REVOKED)} (device_revoked) |" in rows["| `device_revoked`"]
    assert f"| {int(CloseCode.USER_SUSPENDED)} (user_suspended) |" in rows[
        "| `licence_expired`"]
    assert "| — |" in rows["| `not_found`"]
