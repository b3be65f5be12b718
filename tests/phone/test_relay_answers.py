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


def sentence(op: str, **command: object) -> str:
    said: str = run_driver({"op": op, **command})["sentence"]
    return said


def refusal(code: str, title: str = "") -> str:
    """A refusal as a sealed message's (over the websocket: a terse detail, no title)."""
    return sentence("refusal_sentence", code=code, detail="consent revoked", title=title)


def resumed(code: str, *, kept: bool, said: str = "") -> str:
    return sentence("resumed_sentence", ok=False, code=code, kept=kept,
                    refusal=said or refusal(code))


CUT_OFF = "The photo upload that was cut off when the app closed"


def test_a_withdrawn_consent_is_told_in_words_and_forbids_sending_the_photo_again() -> None:
    # A sealed photo refused over the websocket carries no title: the app's own words.
    assert refusal("consent_revoked") == (
        "The patient withdrew consent, so the relay refused the photo: it was not sent. Do "
        "not send it again unless the patient gives consent again and it is recorded.")
    for kept in (False, True):
        assert resumed("consent_revoked", kept=kept) == (
            f"{CUT_OFF} was stopped: the patient withdrew consent. The photo was not sent, and "
            "it is gone from this phone. Do not take or send it again unless the patient gives "
            "consent again and it is recorded.")


@pytest.mark.parametrize("code", ["upload_not_found", "attachment_expired"])
def test_an_upload_the_relay_no_longer_holds_says_take_it_again(code: str) -> None:
    assert resumed(code, kept=False) == (
        f"{CUT_OFF} could not be finished: the relay no longer holds the part already sent. "
        "The photo was not sent, and it is gone from this phone: take it again if it is still "
        "needed.")


def test_a_resumed_upload_that_is_kept_says_it_is_sent_by_itself_later() -> None:
    assert resumed("relay_unavailable", kept=True) == (
        f"{CUT_OFF} is not finished yet: the relay cannot be reached. Check the network; "
        "nothing is lost. The app keeps the photo and sends it by itself the next time it "
        "connects to the relay, at the latest when you next unlock the app.")
    assert resumed("internal_error", kept=True, said=refusal(
        "internal_error", "The relay failed unexpectedly.")) == (
        f"{CUT_OFF} is not finished yet: the relay refused this. The relay failed "
        "unexpectedly. The app keeps the photo and sends it by itself the next time it "
        "connects to the relay, at the latest when you next unlock the app.")


def test_a_resumed_upload_refused_for_good_says_so_and_that_the_photo_is_gone() -> None:
    assert resumed("role_unknown", kept=False) == (
        f"{CUT_OFF} could not be finished: there is no such on-call role. The photo was not "
        "sent, and it is gone from this phone.")
    expired = resumed("consent_expired", kept=False)
    assert expired.startswith(f"{CUT_OFF} could not be finished: the patient's consent has "
                              "expired"), expired


def test_a_finished_resumed_upload_says_photo_sent() -> None:
    assert sentence("resumed_sentence", ok=True) == f"{CUT_OFF} is finished: photo sent."


@pytest.mark.parametrize("status", [0, 401, 408, 429, 500, 503])
def test_a_failure_the_sdk_keeps_a_send_for_is_not_final(status: int) -> None:
    answer = run_driver({"op": "final_refusal_sentence", "code": "internal_error",
                         "status": status})
    assert answer["passes"] is True


@pytest.mark.parametrize("code", ["user_suspended", "licence_expired"])
def test_a_send_refused_for_an_account_state_it_must_change_is_kept_for_it(code: str) -> None:
    """IT may resume a suspended account or renew an expired licence: what waits on the phone
    is kept, not dropped as a refusal for good (tests/phone/test_phone_suspended.py and
    test_phone_licence_expired.py drive it in the browser)."""
    answer = run_driver({"op": "final_refusal_sentence", "code": code, "status": 403})
    assert answer["passes"] is True


def test_an_expired_licence_at_unlock_says_who_renews_it() -> None:
    """Unlocking signs in, which the relay refuses 403 ``licence_expired`` until the licence
    is renewed: said in words, never the relay's title alone."""
    assert refusal("licence_expired", "The user's professional licence has expired.") == (
        "Your licence, as registered with your hospital, has expired: ask IT or medical "
        "staffing to renew it.")


def test_a_refusal_for_good_never_says_try_again() -> None:
    def final(code: str, title: str = "") -> str:
        answer = run_driver({"op": "final_refusal_sentence", "code": code, "status": 422,
                             "title": title})
        assert answer["passes"] is False
        said: str = answer["sentence"]
        return said

    assert final("validation_failed") == (
        "The relay refused it, and would refuse it again as it is. Tell IT if this happens "
        "again.")
    assert final("role_unknown") == "There is no such on-call role."
    assert final("consent_purpose", "The consent does not cover the message's purpose.") == (
        "The relay refused this. The consent does not cover the message's purpose.")
    assert resumed("validation_failed", kept=False, said=final("validation_failed")) == (
        f"{CUT_OFF} could not be finished: the relay refused it, and would refuse it again as "
        "it is. Tell IT if this happens again. The photo was not sent, and it is gone from this "
        "phone.")
