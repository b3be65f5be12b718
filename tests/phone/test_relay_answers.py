"""clients/phone/src/app/relay.ts readAnswer, run under Node (tests/phone/node.py): the body of
a success; a problem document (RFC 9457) under an error status as RelayError with the relay's
code; a problem document under a success status, which the relay never sends, named as such
(tests/clients/test_answers.py holds the Python SDK to the same); and the sentence the phone
shows for each: a refusal the app has no sentence of its own for is told in the relay's words
for its code (the problem's title), never as the bare code."""

from __future__ import annotations

import json

import pytest

from tests.phone.node import run_driver

_SUSPENDED = {"type": "https://lightbox.invalid/problems/user_suspended",
              "title": "The user is suspended.", "status": 403, "code": "user_suspended",
              "detail": "the user may not log in"}


def read_answer(status: int, body: object, content_type: str = "application/json"
                ) -> dict[str, object]:
    return run_driver({"op": "read_answer", "status": status, "content_type": content_type,
                       "text": json.dumps(body)})


def test_a_success_answer_is_its_body() -> None:
    pair = {"access_token": "a", "expires_at": 1, "refresh_token": "r",
            "refresh_expires_at": 2, "user_id": "u", "device_id": "d"}
    assert read_answer(200, pair) == {"value": pair}


def test_a_problem_document_under_an_error_status_is_the_relay_s_refusal() -> None:
    assert read_answer(403, _SUSPENDED, "application/problem+json") == {"error": {
        "code": "user_suspended", "status": 403,
        "message": "user_suspended: the user may not log in",
        "sentence": "Your account is suspended by your organisation: ask IT."}}


@pytest.mark.parametrize("content_type", ["application/problem+json", "application/json"])
def test_a_problem_document_under_a_success_status_is_named_not_taken_for_the_answer(
        content_type: str) -> None:
    assert read_answer(200, _SUSPENDED, content_type) == {"error": {
        "code": "relay_answer_invalid", "status": 200,
        "message": "relay_answer_invalid: the relay answered HTTP 200 (success) with an error "
                   "document: user_suspended (HTTP 403 in the document): the user may not log "
                   "in",
        "sentence": "The relay's answer contradicted itself (a refusal marked as a success), so "
                    "the app did not act on it. Try again; tell IT if it happens again."}}


def test_a_refusal_without_a_sentence_of_the_app_s_own_is_told_in_the_relay_s_words() -> None:
    purpose = {"type": "https://lightbox.invalid/problems/consent_purpose",
               "title": "The consent does not cover the message's purpose.", "status": 403,
               "code": "consent_purpose", "detail": "teaching"}
    answer = read_answer(403, purpose, "application/problem+json")
    assert answer["error"]["sentence"] == (  # type: ignore[index]
        "The relay refused this. The consent does not cover the message's purpose.")
    untitled = read_answer(403, {"code": "consent_purpose"}, "application/problem+json")
    assert untitled["error"]["sentence"] == (  # type: ignore[index]
        "The relay refused this. Try again; tell IT if it happens again.")
