"""clients/sdk/answers.py: problem documents become RelayRequestError with the relay's code;
success bodies decode strictly; an unexpected status is a RelayResponseError."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from clients.sdk.answers import decode_answer, expect_status, parse_problem
from clients.sdk.errors import RelayRequestError, RelayResponseError
from protocol import api

_REQUEST = httpx.Request("GET", "https://relay.invalid/v1/keys/count")


def _answer(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, content=msgspec.json.encode(body), request=_REQUEST)


def test_parse_problem_reads_code_detail_and_retry_after() -> None:
    response = httpx.Response(429, headers={"content-type": "application/problem+json"},
                              json={"type": "x", "title": "t", "status": 429,
                                    "code": "account_locked", "detail": "wait",
                                    "retry_after": 30})
    err = parse_problem(response)
    assert (err.code, err.status, err.detail, err.retry_after) == ("account_locked", 429,
                                                                   "wait", 30.0)
    assert "retry after 30" in str(err)


def test_parse_problem_survives_a_non_json_answer() -> None:
    err = parse_problem(httpx.Response(502, text="<html>bad gateway</html>",
                                       headers={"retry-after": "5"}))
    assert (err.code, err.retry_after) == ("http_502", 5.0)


def test_parse_problem_ignores_fields_of_the_wrong_type() -> None:
    err = parse_problem(httpx.Response(400, json={"code": "bad_request", "detail": 7,
                                                  "retry_after": "soon", "extra": [1]}))
    assert (err.code, err.detail, err.retry_after, err.extra) == ("bad_request", None, None,
                                                                  {})


def test_decode_answer_returns_the_struct() -> None:
    count = {"remaining": 3, "low_water": 10, "target": 100}
    assert decode_answer(_answer(200, count), api.PrekeyCount) == api.PrekeyCount(**count)


def test_decode_answer_refuses_an_unknown_field() -> None:
    with pytest.raises(RelayResponseError, match="not a valid PrekeyCount"):
        decode_answer(_answer(200, {"remaining": 3, "low_water": 10, "target": 100,
                                     "extra": 1}), api.PrekeyCount)


def test_decode_answer_raises_the_problem_of_an_error_answer() -> None:
    with pytest.raises(RelayRequestError) as err:
        decode_answer(_answer(401, {"code": "token_expired"}), api.PrekeyCount)
    assert (err.value.code, err.value.status) == ("token_expired", 401)


_SSO_LOGIN = httpx.Request("POST", "https://relay.invalid/v1/auth/sso/login")
_SUSPENDED = {"type": "https://lightbox.invalid/problems/user_suspended",
              "title": "The user is suspended.", "status": 403, "code": "user_suspended",
              "detail": "the user may not log in"}


@pytest.mark.parametrize("content_type", ["application/problem+json", "application/json"])
def test_a_problem_document_under_a_success_status_is_named_not_decoded(
        content_type: str) -> None:
    answer = httpx.Response(200, content=msgspec.json.encode(_SUSPENDED),
                            headers={"content-type": content_type}, request=_SSO_LOGIN)
    with pytest.raises(RelayResponseError) as err:
        decode_answer(answer, api.TokenPair)
    assert str(err.value) == (
        "POST /v1/auth/sso/login: the relay answered HTTP 200 (success) with an error "
        "document instead of a TokenPair: user_suspended (HTTP 403 in the document): the "
        "user may not log in")


def test_expect_status_names_a_problem_document_under_a_listed_status() -> None:
    answer = httpx.Response(200, content=msgspec.json.encode(_SUSPENDED),
                            headers={"content-type": "application/problem+json"},
                            request=_SSO_LOGIN)
    with pytest.raises(RelayResponseError, match=r"answered HTTP 200 \(success\) with an "
                                                 r"error document: user_suspended"):
        expect_status(answer, 200, 204)


def test_expect_status_accepts_a_listed_status_only() -> None:
    expect_status(httpx.Response(204, request=_REQUEST), 200, 204)
    with pytest.raises(RelayResponseError, match="unexpected status 202"):
        expect_status(httpx.Response(202, request=_REQUEST), 200, 204)
    with pytest.raises(RelayRequestError) as err:
        expect_status(_answer(409, {"code": "conflict"}), 204)
    assert err.value.code == "conflict"
