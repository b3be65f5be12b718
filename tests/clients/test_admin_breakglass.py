"""clients/admin/breakglass.py ``format_case``: a break-glass case as the privacy office reads
it (``lightbox-admin breakglass show|close``): who declared what emergency when, what was sent,
whether the consent was sought afterwards (or why none was possible), and the review. The
commands against a real relay, and their bad input, are in
tests/clients/test_breakglass_journey.py."""

from __future__ import annotations

import msgspec

from clients.admin.breakglass import format_case
from clients.sdk.timefmt import format_time
from protocol import api

AT = 1_780_000_000
OPEN = api.BreakGlassCase(
    case_id="case-1", message_id="msg-1", thread_id="thr-1", org_id="st-elsewhere",
    sender_user_id="u-1", sender_login="ivy.intern", sender_name="Dr Ivy Intern",
    sender_device_id="d-1", category="patient_unconscious", recipients=2, attachments=1,
    declared_at=AT, follow_up=None, follow_up_consent=None, follow_up_detail=None,
    followed_up_at=None, status="open", outcome=None, note=None, closed_by=None,
    closed_at=None)


def test_an_open_case_awaits_its_follow_up_and_review() -> None:
    assert format_case(OPEN).splitlines() == [
        "case case-1",
        f"  declared   {format_time(AT)} by Dr Ivy Intern (ivy.intern), patient unconscious",
        "  message    msg-1 in thread thr-1: 2 recipient(s), 1 image(s)",
        "  follow-up  awaiting the consent or why none was possible",
        "  review     open",
    ]


def test_a_consent_sought_afterwards_is_named_with_its_decision_and_time() -> None:
    followed = msgspec.structs.replace(OPEN, follow_up="consent", follow_up_detail="agreed",
                                       followed_up_at=AT + 3600)
    assert format_case(followed).splitlines()[3] == (
        f"  follow-up  consent sought afterwards (agreed), {format_time(AT + 3600)}")
    none_possible = msgspec.structs.replace(OPEN, follow_up="no_consent",
                                            follow_up_detail="patient_died",
                                            followed_up_at=AT + 60)
    assert format_case(none_possible).splitlines()[3] == (
        f"  follow-up  no consent possible (patient_died), {format_time(AT + 60)}")


def test_a_closed_case_names_its_reviewer_outcome_and_note() -> None:
    closed = msgspec.structs.replace(OPEN, status="closed", outcome="appropriate",
                                     closed_by="privacy.officer", closed_at=AT + 86400,
                                     note="reviewed with the ward")
    assert format_case(closed).splitlines()[4] == (
        f"  review     closed {format_time(AT + 86400)} by privacy.officer: appropriate "
        "(reviewed with the ward)")
    without_note = msgspec.structs.replace(closed, note=None)
    assert format_case(without_note).splitlines()[4].endswith(": appropriate")
