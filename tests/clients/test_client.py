"""clients/sdk/client.py against a real relay: a text consult to a role arrives once, is
stored in the vault before it is acknowledged, uses up (and deletes) a one-time prekey, and the
sender sees signed delivered/read/acknowledged receipts; a thread whose recipients include a
device the pinned organisation never certified is refused before anything is encrypted; a
device-set change between fetching recipients and sending is retried once; an x-ray sent with
consent arrives intact in the recipient's vault; the relay asking for prekeys gets them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clients.sdk import imaging
from clients.sdk.client import (
    ClientEvent,
    ImageEvent,
    MessageEvent,
    ReceiptEvent,
)
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash, register_consent
from clients.sdk.errors import FlowError
from protocol import api
from protocol.body import RecordData
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.keys import IdentityKey
from protocol.model import Priority, Purpose
from tests.clinician_world import Clinician, enrol_clinician
from tests.consent_world import xray_png
from tests.helpers import eventually, seconds
from tests.identity_world import World

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

ORTHO = "orthopaedics_oncall"


@contextlib.asynccontextmanager
async def started(*people: Clinician) -> AsyncIterator[None]:
    try:
        for p in people:
            await p.client.start(wait_connected=seconds(10))
        yield
    finally:
        for p in people:
            await p.client.close()
            p.vault.lock()


async def next_event(queue: asyncio.Queue[ClientEvent], kind: type[Any],
                     match: Any = lambda e: True) -> Any:
    async with asyncio.timeout(seconds(10)):
        while True:
            event = await queue.get()
            if isinstance(event, kind) and match(event):
                return event


async def test_a_text_consult_to_a_role_arrives_once_with_receipts(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    async with started(intern, ortho):
        a_events, b_events = intern.client.subscribe(), ortho.client.subscribe()
        otks_before = len(ortho.vault.state.one_time_prekeys)
        thread = await intern.client.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        sent = await intern.client.send_text(thread.thread_id, "Displaced radius fracture?",
                                             subject="Wrist, bed 4")

        got = await next_event(b_events, MessageEvent)
        assert got.message.message_id == sent.message_id
        assert got.body.text == "Displaced radius fracture?" and got.body.subject == "Wrist, bed 4"
        assert got.message.priority == "urgent"
        stored = ortho.vault.message(sent.message_id)
        assert stored.body == "Displaced radius fracture?" and not stored.outgoing
        # forward secrecy: the one-time prekey secret it used is gone from the device state
        assert len(ortho.vault.state.one_time_prekeys) == otks_before - 1
        # the sender keeps its own copy
        assert intern.vault.message(sent.message_id).outgoing

        delivered = await next_event(a_events, ReceiptEvent, lambda e: e.kind == "delivered")
        assert delivered.user_id == ortho.user_id and delivered.display_name == "Dr Ortho"

        assert await ortho.client.mark_read(thread.thread_id) == 1
        await ortho.client.acknowledge(sent.message_id)
        # Both, in whichever order they come: the relay takes each receipt frame on its own.
        kinds: set[str] = set()

        def read_and_acknowledged(e: ReceiptEvent) -> bool:
            kinds.add(e.kind)
            return {"read", "acknowledged"} <= kinds
        await next_event(a_events, ReceiptEvent, read_and_acknowledged)
        view = intern.client.thread_messages(thread.thread_id)[0]
        assert {r.kind for r in view.receipts} == {"delivered", "read", "acknowledged"}
        assert ortho.client.thread_messages(thread.thread_id)[0].acknowledged_by_me

        # a reply goes back, and the specialist cannot acknowledge their own message
        reply = await ortho.client.send_text(thread.thread_id, "On my way",
                                             reply_to=sent.message_id)
        back = await next_event(a_events, MessageEvent)
        assert back.body.reply_to == sent.message_id
        with pytest.raises(FlowError):
            await ortho.client.acknowledge(reply.message_id)
        threads = await ortho.client.threads()
        assert [t.thread_id for t in threads] == [thread.thread_id]


async def test_a_device_the_organisation_never_certified_is_refused_before_encrypting(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    async with started(intern, ortho):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        real = intern.client.relay.thread_recipients

        async def with_planted_device(thread_id: str) -> api.ThreadRecipients:
            # A relay that adds its own device: certified by a key that is not the user's.
            answer = await real(thread_id)
            rogue = ortho.user.device(signer=IdentityKey.generate())
            users = [msgspec.structs.replace(u, devices=[*u.devices, api.DeviceBundle(
                device_certificate=rogue.cert, signed_prekey=None)]) for u in answer.users]
            return api.ThreadRecipients(users=users)

        monkeypatch.setattr(intern.client.relay, "thread_recipients", with_planted_device)
        claims: list[object] = []
        monkeypatch.setattr(intern.client.relay, "claim_keys",
                            lambda *a: claims.append(a))  # must never be reached
        with pytest.raises(FlowError) as err:
            await intern.client.send_text(thread.thread_id, "hello")
        assert err.value.code == "certificate_invalid"
        assert claims == []


async def test_a_device_set_change_is_retried_once_with_fresh_recipients(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    registrar = await enrol_clinician(world, tmp_path, "registrar", roles=("registrar",))
    async with started(intern, ortho, registrar):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        real = intern.client.relay.thread_recipients
        calls = 0

        async def stale_first(thread_id: str) -> api.ThreadRecipients:
            nonlocal calls
            calls += 1
            answer = await real(thread_id)
            if calls == 1:  # someone joins between our fetch and our send
                r = await intern.client.relay._device(
                    "POST", f"/v1/threads/{thread_id}/participants",
                    body=api.Participants(users=[registrar.user_id]))
                assert r.status_code == 204, r.text
            return answer

        monkeypatch.setattr(intern.client.relay, "thread_recipients", stale_first)
        events = registrar.client.subscribe()
        sent = await intern.client.send_text(thread.thread_id, "please see")
        assert calls == 2
        got = await next_event(events, MessageEvent)
        assert got.message.message_id == sent.message_id


async def test_an_xray_with_consent_arrives_intact_in_the_vault(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    prepared = imaging.prepare_image(xray_png(900, 800))
    async with started(intern, ortho):
        token, _claims = capture_consent(intern.vault.state, ConsentCapture(
            purposes=[Purpose.DIRECT_CARE], images=[image_hash(prepared.image.data)],
            decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
            recipient_roles=[ORTHO], permanence_statement_shown=True,
            no_effect_on_care_statement_shown=True))
        await register_consent(intern.client.relay, token)
        thread = await intern.client.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        events = ortho.client.subscribe()
        progress: list[tuple[int, int]] = []
        record = RecordData(patient_name="Testpatient^Alpha", patient_id="LBX-TEST-0042",
                            birth_date="1957-03-14", anatomic_region="wrist")
        sent = await intern.client.send_image(
            thread.thread_id, prepared.image, consent_token=token, text="Wrist AP",
            record=record, progress=lambda done, total: progress.append((done, total)))
        assert progress and progress[-1][0] == progress[-1][1]
        msg = await next_event(events, MessageEvent)
        assert msg.body.record == record and msg.body.attachments[0].width == prepared.image.width
        await next_event(events, ImageEvent, lambda e: e.status == "stored")
        (aid,) = sent.attachment_ids
        assert ortho.client.image(aid) == prepared.image.data
        assert intern.client.image(aid) == prepared.image.data  # the sender's copy
        (view,) = ortho.client.thread_messages(thread.thread_id)
        assert view.images[0].state == "stored"


async def test_keys_low_is_answered_with_a_fresh_batch_whose_secrets_are_kept(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern", one_time=2)
    async with started(intern):
        # the relay says "keys low" on connect (2 < low water); the client keeps the new
        # secrets first, then uploads up to target: wait for the relay to hold them
        async def topped_up() -> Any:
            count = await intern.client.relay.prekey_count()
            return count if count.remaining > 2 else None
        count = await eventually(topped_up)
        assert count.remaining >= count.low_water
        assert len(intern.vault.state.one_time_prekeys) == count.remaining


async def test_escalation_notices_become_escalation_events(world: World, tmp_path: Path) -> None:
    import uuid

    from clients.sdk.client import EscalationEvent
    from protocol.frames import EscalationKind, EscalationNotice

    intern = await enrol_clinician(world, tmp_path, "intern")
    events = intern.client.subscribe()
    notice = EscalationNotice(thread_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()),
                              step=2, level=1, user_id=str(uuid.uuid4()), at=1767225600,
                              kind=EscalationKind.RELEASED)
    await intern.client.notices.on_frame(notice)
    event = await asyncio.wait_for(events.get(), seconds(5))
    assert isinstance(event, EscalationEvent)
    assert (event.kind, event.step, event.user_id) == ("released", 2, notice.user_id)


async def test_reseal_request_is_answered_with_the_same_body_for_the_current_participants(
        world: World, tmp_path: Path) -> None:
    """Shift handover: the relay asks the sender's device to seal a consult again; the SDK
    reads it back from its vault and sends the same body to the thread's participants now."""
    import time
    import uuid

    from protocol.frames import ResealRequest

    async with _intern_and_specialist(world, tmp_path) as (intern, ortho):
        events = ortho.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id])
        sent = await intern.client.send_text(thread.thread_id, "Scaphoid tenderness, x-ray?")
        first = await asyncio.wait_for(_next_message(events), seconds(15))
        assert first.body == "Scaphoid tenderness, x-ray?"
        await intern.client.notices.on_frame(ResealRequest(
            thread_id=thread.thread_id, message_id=sent.message_id,
            devices=[ortho.client.device_id], deadline=int(time.time()) + 600))
        again = await asyncio.wait_for(_next_message(events), seconds(15))
        assert again.body == "Scaphoid tenderness, x-ray?"
        assert again.message_id != sent.message_id
        # a request for a message this device never held sends nothing
        await intern.client.notices.on_frame(ResealRequest(
            thread_id=thread.thread_id, message_id=str(uuid.uuid4()),
            devices=[ortho.client.device_id], deadline=int(time.time()) + 600))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_next_message(events), 1.0)


async def _next_message(events: asyncio.Queue[Any]) -> Any:
    while True:
        event = await events.get()
        if isinstance(event, MessageEvent):
            return event.message


async def test_a_filing_receipt_from_a_device_that_is_not_a_gateway_is_not_believed(
        world: World, tmp_path: Path) -> None:
    """Only the organisation's record gateway may tell devices where an image was filed (the
    record reference replaces the image when it expires); a colleague's forged "receipt"
    arrives as an ordinary message without the claim."""
    import time
    import uuid

    from protocol.body import Body, BodyKind, FilingReceipt

    async with _intern_and_specialist(world, tmp_path) as (intern, ortho):
        events = ortho.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id])
        forged = Body(kind=BodyKind.FILING_RECEIPT, filing=FilingReceipt(
            attachment_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()),
            study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
            sop_instance_uid="1.2.3.4.5", filed_at=int(time.time()), record_ref="FAKE-REF"))
        await intern.client.sender.send_body(thread.thread_id, forged, purpose=Purpose.DIRECT_CARE,
                                       priority=Priority.ROUTINE)
        got = await asyncio.wait_for(_next_message(events), seconds(15))
        stored = ortho.vault.message(got.message_id)
        body = ortho.client.body(stored)
        assert body is not None
        assert body.filing is None and body.kind is BodyKind.TEXT


@contextlib.asynccontextmanager
async def _intern_and_specialist(world: World, tmp_path: Path
                                 ) -> AsyncIterator[tuple[Clinician, Clinician]]:
    """Two started SDK clients: an intern and an on-call orthopaedic specialist."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=("orthopaedics_oncall",))
    for c in (intern, ortho):
        await c.client.start(wait_connected=seconds(10))
    try:
        yield intern, ortho
    finally:
        for c in (intern, ortho):
            await c.client.close()
