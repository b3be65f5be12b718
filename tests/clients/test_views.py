"""clients/desktop/views.py: a reply from the desktop keeps the purpose of the message it
answers (docs/CLINICAL_SAFETY.md): the message named, else the latest incoming clinician
message, else our own latest, else direct care; an external consult's reply carries the
necessity statement it was asked with."""

from __future__ import annotations

import pytest

from clients.desktop.views import reply_plan
from clients.desktop.web import Refused
from clients.sdk.events import MessageView
from clients.sdk.vaultrows import VaultMessage
from protocol.body import Body, BodyKind
from protocol.model import Purpose


def _view(message_id: str, purpose: Purpose | None, *, outgoing: bool = False,
          kind: BodyKind = BodyKind.TEXT, necessity: str | None = None) -> MessageView:
    message = VaultMessage(message_id=message_id, thread_id="t-1", sender_user_id="u-1",
                           sender_device_id="d-1", sent_at=1.0, body="",
                           purpose=None if purpose is None else purpose.value,
                           outgoing=outgoing)
    return MessageView(message=message, body=Body(kind=kind, necessity=necessity), images=(),
                       receipts=(), acknowledged_by_me=False)


def test_a_thread_with_no_messages_is_answered_for_direct_care() -> None:
    assert reply_plan([], None).purpose is Purpose.DIRECT_CARE


def test_the_latest_incoming_clinician_message_sets_the_purpose() -> None:
    views = [_view("m-1", Purpose.TEACHING), _view("m-2", Purpose.DIRECT_CARE, outgoing=True),
             _view("m-3", Purpose.EXTERNAL_CONSULT, kind=BodyKind.FILING_RECEIPT)]
    plan = reply_plan(views, None)
    assert (plan.purpose, plan.consent_id, plan.necessity) == (Purpose.TEACHING, None, None)


def test_our_own_latest_message_sets_it_when_nobody_else_wrote() -> None:
    views = [_view("m-1", Purpose.RESEARCH, outgoing=True)]
    assert reply_plan(views, None).purpose is Purpose.RESEARCH


def test_a_named_message_sets_the_purpose_and_an_unknown_one_is_not_found() -> None:
    views = [_view("m-1", Purpose.TEACHING), _view("m-2", Purpose.DIRECT_CARE)]
    assert reply_plan(views, "m-1").purpose is Purpose.TEACHING
    with pytest.raises(Refused) as refused:
        reply_plan(views, "m-9")
    assert (refused.value.status, refused.value.message) == (404,
                                                             "no such message in this thread")


def test_an_external_consult_reply_carries_the_newest_necessity_statement() -> None:
    views = [_view("m-1", Purpose.EXTERNAL_CONSULT, necessity="Second opinion on a fracture"),
             _view("m-2", Purpose.EXTERNAL_CONSULT, necessity="Fracture clinic asks again"),
             _view("m-3", Purpose.EXTERNAL_CONSULT)]
    plan = reply_plan(views, None)
    assert (plan.purpose, plan.necessity) == (Purpose.EXTERNAL_CONSULT,
                                              "Fracture clinic asks again")
    assert reply_plan(views, "m-1").necessity == "Second opinion on a fracture"
