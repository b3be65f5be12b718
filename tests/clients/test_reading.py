"""clients/clinician/reading.py, what ``lightbox inbox`` and ``lightbox watch`` say of each
event and of a body without text: each sentence names the consult, image or message by its
short id, says why (a withdrawn consent, a revoked sender) in words, and never shows a
Python repr. Times are written by clients/sdk/timefmt.py. An escalation step names the consult
by its subject and the person by name, from the vault: tests/clients/test_watch_escalation.py
says it through a real relay and a real ``lightbox watch``."""

from __future__ import annotations

import time
import uuid
from typing import cast

import msgspec
import pytest

from clients.clinician.reading import describe, describe_outbox, kind_line
from clients.sdk.client import LightboxClient
from clients.sdk.events import (
    ClientEvent,
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    OutboxEvent,
    ReceiptEvent,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.timefmt import format_time
from protocol.body import (
    Body,
    BodyKind,
    ConsentFiling,
    FilingReceipt,
    OriginalSearch,
    OriginalStudy,
)

IMAGE = "a1b2c3d4-0000-4000-8000-000000000001"
MESSAGE = "0e2c5a54-0000-4000-8000-000000000002"
THREAD = str(uuid.UUID(int=3))
AT = 1_780_000_000
LATER = int(time.time()) + 86400  # copies still to expire: said as to come
NO_CLIENT = cast(LightboxClient, None)  # describe() reads only the event


@pytest.mark.parametrize(("event", "line"), [
    (ImageEvent(IMAGE, MESSAGE, THREAD, "refused", "not a readable image"),
     "    image a1b2c3d4: refused not a readable image"),
    (ImageEvent(IMAGE, MESSAGE, THREAD, "stored"), "    image a1b2c3d4: stored"),
    (ReceiptEvent(MESSAGE, "f5e60781-0000", str(uuid.UUID(int=5)), "read", AT, "Dr Bone"),
     f"    Dr Bone: read ({MESSAGE[:8]})"),
    (ReceiptEvent(MESSAGE, "f5e60781-0000", str(uuid.UUID(int=5)), "delivered", AT),
     f"    f5e60781: delivered ({MESSAGE[:8]})"),
    (FiledEvent(IMAGE, MESSAGE, THREAD, AT, LATER, "ACC123"),
     f"    image a1b2c3d4 filed in the record as ACC123; copies expire "
     f"{format_time(LATER)}"),
    (ExpiredEvent(IMAGE, THREAD, None, "consent_revoked"),
     "    image a1b2c3d4 deleted from this device (the patient's consent was withdrawn)"),
    (ExpiredEvent(IMAGE, THREAD, None, "hard_limit"),
     "    image a1b2c3d4 deleted from this device (hard_limit)"),
    (WithdrawnEvent(MESSAGE, THREAD, "consent_revoked"),
     f"    message {MESSAGE[:8]} withdrawn before delivery "
     "(the patient's consent was withdrawn)"),
    (WithdrawnEvent(MESSAGE, THREAD, "sender_revoked"),
     f"    message {MESSAGE[:8]} withdrawn before delivery (the sending device was revoked)"),
    (StatusEvent("connected"), "-- connected to the relay"),
    (StatusEvent("disconnected", "x"), "-- relay connection lost: reconnecting (nothing is lost)"),
    (StatusEvent("disconnected", "x", close_code=1001),
     "-- relay connection lost: reconnecting (nothing is lost)"),
    # Another command of this profile took the device's one connection (4003): no loss.
    (StatusEvent("disconnected", "x", close_code=4003),
     "-- another lightbox command of this device is using the relay connection: watching "
     "resumes when it finishes (nothing is missed)"),
    (StatusEvent("error", "rate_limited: slow down"), "-- error: rate_limited: slow down"),
])
def test_each_event_is_one_sentence_naming_what_and_why(event: ClientEvent, line: str) -> None:
    assert describe(NO_CLIENT, event) == line


def test_an_event_the_cli_does_not_show_says_nothing() -> None:
    assert describe(NO_CLIENT, cast(ClientEvent, object())) is None


@pytest.mark.parametrize(("state", "line"), [
    ("sent", f"-- message {MESSAGE} (sent earlier from this device) is now stored by the relay "
             f"in thread {THREAD} (#7)"),
    ("refused", f"-- message {MESSAGE} (sent earlier from this device) was NOT sent: "
                "forbidden: not in the thread; it was removed from the outbox"),
    ("waiting", f"-- message {MESSAGE} is still waiting to be sent: relay unreachable"),
])
def test_an_outbox_event_says_whether_the_message_left_and_why_not(state: str,
                                                                   line: str) -> None:
    detail = {"sent": "", "refused": "forbidden: not in the thread",
              "waiting": "relay unreachable"}[state]
    event = OutboxEvent(MESSAGE, THREAD, state, detail, thread_seq=7)
    assert describe_outbox(event) == line
    assert describe(NO_CLIENT, event) == line


def test_a_filing_receipt_lists_the_original_studies_it_links() -> None:
    receipt = FilingReceipt(
        attachment_id=IMAGE, message_id=MESSAGE, study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1", sop_instance_uid="1.2.3.1.1", filed_at=AT,
        original_studies=[
            OriginalStudy(study_instance_uid="1.9", study_date="2026-06-15",
                          modalities=["CR", "DX"], url="https://viewer.test/1.9"),
            OriginalStudy(study_instance_uid="1.8")])
    assert kind_line(Body(kind=BodyKind.FILING_RECEIPT, filing=receipt)) == (
        "image a1b2c3d4 filed in the record (study 1.2.3)"
        "\n    original study: CR/DX 2026-06-15 https://viewer.test/1.9"
        "\n    original study: ?  1.8")


@pytest.mark.parametrize(("search", "said"), [
    ("none", "original study: none found in PACS for this patient around this date; look in "
             "the PACS by the patient's ID and the date, and tell the record gateway's operator "
             "if the study is there"),
    ("failed", "original study: the record gateway could not search PACS for it (its "
               "operator can see why in its log); look in the PACS by the patient's ID and "
               "the date"),
])
def test_a_film_filed_without_an_original_says_whether_the_search_found_none_or_failed(
        search: OriginalSearch, said: str) -> None:
    receipt = FilingReceipt(
        attachment_id=IMAGE, message_id=MESSAGE, study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1", sop_instance_uid="1.2.3.1.1", filed_at=AT,
        original_search=search)
    assert kind_line(Body(kind=BodyKind.FILING_RECEIPT, filing=receipt)) == (
        f"image a1b2c3d4 filed in the record (study 1.2.3)\n    {said}")
    older = msgspec.structs.replace(receipt, original_search="")  # an older gateway's
    assert kind_line(Body(kind=BodyKind.FILING_RECEIPT, filing=older)) == (
        "image a1b2c3d4 filed in the record (study 1.2.3)")


def test_a_consent_filing_and_a_consent_record_say_what_they_are() -> None:
    filing = ConsentFiling(consent_id=IMAGE, message_id=MESSAGE, decision="refused",
                           study_instance_uid="1.2.4", filed_at=AT)
    assert kind_line(Body(kind=BodyKind.CONSENT_FILED, consent_filing=filing)) == (
        "consent a1b2c3d4 (refused) filed in the record (study 1.2.4)")
    assert kind_line(Body(kind=BodyKind.CONSENT_RECORD)) == (
        "a consent sent to the record gateway for filing")
    assert kind_line(Body(text="hello")) == ""
