"""clients/admin/consent.py ``format_withdrawal``: what the privacy office reads of a consent
(``lightbox-admin consent show``): who captured it, its status, who withdrew it and why, the
messages withdrawn before delivery, and for each copy of its images whether its device has
confirmed destroying it, with how many are still to confirm. The CLI's bad input
(malformed id, no reason, no --yes, unknown consent) is in tests/clients/test_consent_withdraw.py.
"""

from __future__ import annotations

import msgspec

from clients.admin.consent import format_withdrawal
from clients.sdk.timefmt import format_time
from protocol import api

AT = 1_780_000_000
CONSENT = "6f1c2a44-5a8e-4f0b-9d53-1c2e3f4a5b6c"


def _copy(n: int, *, ordered: int | None, confirmed: int | None) -> api.ConsentCopy:
    return api.ConsentCopy(
        attachment_id=f"a{n}", device_id=f"d{n}", device_kind="desktop", user_id=f"u{n}",
        login=f"dr.{n}", display_name=f"Dr {n}",
        reason="consent_revoked" if ordered else None, ordered_at=ordered,
        confirmed_at=confirmed)


def _withdrawal(*, revoked_at: int | None, copies: list[api.ConsentCopy],
                withdrawn: list[str] | None = None) -> api.ConsentWithdrawal:
    return api.ConsentWithdrawal(
        consent=api.ConsentInfo(consent_id=CONSENT, token="t", issuer_user_id="u0",
                                org_id="st-elsewhere", registered_at=AT,
                                status="revoked" if revoked_at else "active",
                                revoked_at=revoked_at),
        issuer_login="ivy.intern", issuer_name="Dr Ivy Intern", decision="agreed",
        purposes=["direct_care", "teaching"], revoked_by="it.admin" if revoked_at else None,
        reason="the patient asked" if revoked_at else None, messages=3,
        withdrawn_message_ids=withdrawn or [], copies=copies)


def test_an_active_consent_says_who_captured_it_and_for_what() -> None:
    lines = format_withdrawal(_withdrawal(revoked_at=None, copies=[_copy(1, ordered=None,
                                                                          confirmed=None)]))
    assert lines == [
        f"consent {CONSENT}",
        f"  captured by Dr Ivy Intern (ivy.intern), registered {format_time(AT)}: agreed for "
        "direct_care, teaching",
        "  status: active",
        "  messages sent under it: 3; withdrawn before delivery: 0",
        "  copies of its images: 1",
        "    image a1 on Dr 1 (dr.1)'s desktop d1: no expiry order",
    ]


def test_a_withdrawal_counts_the_copies_not_yet_confirmed_destroyed() -> None:
    w = _withdrawal(revoked_at=AT + 60, withdrawn=["m9"], copies=[
        _copy(1, ordered=AT + 60, confirmed=AT + 90), _copy(2, ordered=AT + 60, confirmed=None)])
    lines = format_withdrawal(w)
    assert lines[2:5] == [f"  status: WITHDRAWN {format_time(AT + 60)} by it.admin",
                          "  reason: the patient asked",
                          "  messages sent under it: 3; withdrawn before delivery: 1"]
    assert "    withdrawn message m9" in lines
    assert (f"    image a1 on Dr 1 (dr.1)'s desktop d1: ordered to expire "
            f"{format_time(AT + 60)} (consent_revoked), confirmed destroyed "
            f"{format_time(AT + 90)}") in lines
    assert lines[-2].endswith("(consent_revoked), NOT YET CONFIRMED")
    assert lines[-1] == ("  1 copy not yet confirmed destroyed (each device confirms when it "
                         "next connects)")


def test_a_withdrawal_whose_copies_are_all_destroyed_says_so() -> None:
    w = _withdrawal(revoked_at=AT, copies=[_copy(1, ordered=AT, confirmed=AT + 5)])
    assert format_withdrawal(w)[-1] == "  every copy confirmed destroyed"
    nothing_sent = msgspec.structs.replace(w, copies=[], reason=None, revoked_by=None)
    lines = format_withdrawal(nothing_sent)
    assert "  reason: (none given)" in lines and lines[2].endswith(" by ?")
    assert lines[-1] == "  every copy confirmed destroyed"


def test_a_record_gateway_keeps_no_copy_and_is_not_counted_as_one_to_confirm() -> None:
    """A walk through the guide by hand read "2 copies not yet confirmed destroyed" above one
    NOT YET CONFIRMED line: the other was the record gateway's, which keeps nothing."""
    gateway = msgspec.structs.replace(_copy(2, ordered=None, confirmed=None),
                                      device_kind="gateway", login="record.gateway",
                                      display_name="Record gateway")
    w = _withdrawal(revoked_at=AT, copies=[_copy(1, ordered=AT, confirmed=None), gateway])
    lines = format_withdrawal(w)
    assert ("    image a2 on Record gateway (record.gateway)'s gateway d2: a record gateway: "
            "it files the image and keeps no copy") in lines
    assert lines[-1] == ("  1 copy not yet confirmed destroyed (each device confirms when it "
                         "next connects)")
    confirmed = msgspec.structs.replace(w, copies=[_copy(1, ordered=AT, confirmed=AT + 5),
                                                   gateway])
    assert format_withdrawal(confirmed)[-1] == "  every copy confirmed destroyed"
