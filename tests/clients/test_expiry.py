"""The device side of expiry and wipe (clients/sdk/expiry.py) against a real relay: an expire
order shreds the vault copy (a tombstone keeps the record reference) and yields a confirmation
signed by the device; a device revoked with wipe that reconnects receives the organisation-
signed order before anything else and destroys its vault; forged or replayed wipe orders (an
old list after a re-enrolment, another device's order) are refused."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clients.sdk import attachments as sdk_attachments
from clients.sdk import imaging
from clients.sdk.client import (
    ClientEvent,
    ExpiredEvent,
    ImageEvent,
    LightboxClient,
    MessageEvent,
    StatusEvent,
)
from clients.sdk.errors import FlowError
from clients.sdk.expiry import shred_and_confirm, verify_wipe_order, wipe
from clients.sdk.socket import RelaySocket
from clients.sdk.vault import ImageShredded
from protocol import certs, statements
from protocol.body import HandoverOf, IdentifierKind, RecordData
from protocol.frames import ExpireOrder, ExpiryReason, FiledNotice, Filing, KeysLow, WipeOrder
from protocol.keys import OrganisationKey
from tests.clinician_world import Clinician, enrol_clinician
from tests.consent_world import count, sdk, xray_png
from tests.filing_world import (
    direct_care_consent,
    expiry_service,
    filing_statement,
    gateway_peer,
    later,
    next_of,
    record,
)
from tests.helpers import eventually, seconds
from tests.identity_world import PASSWORD, World
from tests.relay_world import connect


async def test_an_expire_order_shreds_the_copy_and_is_confirmed_by_the_device(
        world: World, tmp_path: Path) -> None:
    c = await enrol_clinician(world, tmp_path, "ortho")
    aid = str(uuid.uuid4())
    c.vault.put_image(aid, b"\xff\xd8 jpeg bytes", media_type="image/jpeg",
                      thread_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()))
    order = ExpireOrder(order_id=str(uuid.uuid4()), attachment_id=aid,
                        thread_id=str(uuid.uuid4()), reason=ExpiryReason.FILED,
                        record_ref="2.25.42", issued_at=int(time.time()))
    frame = shred_and_confirm(c.vault, c.vault.state, order)
    body = statements.verify_expiry_confirmation(
        frame.statement, c.vault.state.device_keys().signing.public,
        device_id=c.vault.state.device_id)
    assert body.order_id == order.order_id and body.attachment_id == aid
    tomb = c.vault.tombstone(aid)
    assert tomb is not None and tomb.record_reference == "2.25.42"
    # Twice (the order is resent until confirmed): the same answer, no error.
    assert shred_and_confirm(c.vault, c.vault.state, order).statement


async def test_a_revoked_device_gets_its_wipe_order_first_and_destroys_its_vault(
        world: World, tmp_path: Path) -> None:
    c = await enrol_clinician(world, tmp_path, "lost-phone")
    await c.client.ensure_login()
    tokens = c.client.relay.tokens
    assert tokens is not None
    state = c.vault.state
    r = await world.revoke(world.org, 1, devices=(state.device_id,), wipe=True)
    assert r.status_code == 200, r.text
    sock = await RelaySocket.connect(world.relay.ws_url + "/v1/ws",
                                     access_token=tokens.access_token,
                                     device_id=state.device_id, sign=state.device_keys().sign)
    try:
        frame = await sock.next_event(seconds(10))
        while isinstance(frame, KeysLow):
            frame = await sock.next_event(seconds(10))
        assert isinstance(frame, WipeOrder)
        assert (await sock.closed)[0] == 4004
    finally:
        await sock.close()
    await c.client.relay.aclose()

    # Replays and forgeries are refused before anything is deleted.
    other = await enrol_clinician(world, tmp_path, "new-phone")
    with pytest.raises(FlowError) as err:  # another device's order
        verify_wipe_order(frame, other.vault.state)
    assert err.value.code == "verification_failed"
    rogue = OrganisationKey.generate()
    forged_list = certs.issue_revocation_list(msgspec.structs.replace(_list(frame), number=2),
                                              rogue)
    with pytest.raises(FlowError) as err:
        verify_wipe_order(msgspec.structs.replace(frame, revocation=forged_list), state)
    assert err.value.code == "verification_failed"
    # The same device id enrolled again later (a newer certificate): the old order is a replay.
    device = _device(state)
    newer = certs.issue_device_certificate(msgspec.structs.replace(
        device, issued_at=int(time.time()) + 120, not_after=device.not_after + 120),
        c.user.identity)
    with pytest.raises(FlowError) as err:
        verify_wipe_order(frame, msgspec.structs.replace(state, device_certificate=newer))
    assert err.value.code == "replayed"

    entry = wipe(frame, state, c.vault.directory, vault=c.vault)
    assert entry.id == state.device_id and entry.wipe
    assert not c.vault.directory.exists()


def _list(order: WipeOrder) -> certs.RevocationList:
    from protocol.canonical import peek_compact

    return peek_compact(order.revocation, certs.RevocationList,
                        max_length=certs.MAX_REVOCATION_LIST_LENGTH)


def _device(state: object) -> certs.DeviceCertificate:
    from protocol.canonical import peek_compact

    return peek_compact(state.device_certificate,  # type: ignore[attr-defined]
                        certs.DeviceCertificate, max_length=certs.MAX_CERTIFICATE_LENGTH)


# --- an order for a copy the device has not fetched (yet) ------------------------------------

ORTHO = "orthopaedics_oncall"


async def _share_and_expire(world: World, intern: Clinician, ortho: Clinician,
                            before_expiry: Callable[[], Awaitable[None]] | None = None,
                            also: tuple[Clinician, ...] = (),
                            patient: RecordData | None = None,
                            burned_in: tuple[IdentifierKind, ...] = (),
                            other_devices: int = 0) -> tuple[str, str]:
    """The intern sends an x-ray to the specialist (and ``also`` to others) and the record
    gateway; the gateway fetches and files it; the grace period passes (simulated time) and
    the relay orders every copy destroyed (also on ``other_devices`` more devices of them).
    Returns (attachment id, message id)."""
    gw = await gateway_peer(world)
    prepared = imaging.prepare_image(xray_png(320, 240))
    token = await direct_care_consent(intern, prepared.image.data, roles=[ORTHO])
    thread = await intern.client.create_thread(users=[ortho.user_id,
                                                      *(c.user_id for c in also)])
    sent = await intern.client.send_image(thread.thread_id, prepared.image, consent_token=token,
                                          text="Wrist AP", record=patient,
                                          burned_in=burned_in)
    (aid,) = sent.attachment_ids
    http = await sdk(world, gw)
    try:
        await sdk_attachments.download(http, aid)
    finally:
        await http.aclose()
    g = await connect(world, gw)
    try:
        await g.send_frame(Filing(req_id="file", statement=filing_statement(
            gw, attachment_id=aid, message_id=sent.message_id, thread_id=thread.thread_id)))
        await next_of(g, FiledNotice)
    finally:
        await g.close()
    if before_expiry is not None:
        await before_expiry()
    async with expiry_service(world) as svc:
        report = await svc.sweep(now=later(901))
    assert report.orders == 2 + len(also) + other_devices  # the intern's, each recipient's
    return aid, sent.message_id


async def _confirmed(world: World, device_id: str, aid: str) -> None:
    await eventually(lambda: count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                   "device_id = $1 AND attachment_id = $2 AND confirmed_at IS "
                                   "NOT NULL", uuid.UUID(device_id), uuid.UUID(aid)),
                     timeout=20)


async def _never_held(world: World, c: Clinician, aid: str, message_id: str) -> None:
    """The device holds no copy, a tombstone refuses one, and the relay never handed it over."""
    await c.client.threads()  # the threads whose images fetch_missing_images looks at
    await c.client.fetch_missing_images()  # waits for any download in flight, then tries
    assert aid not in [i.attachment_id for i in c.vault.images()]
    assert c.vault.tombstone(aid) is not None
    with pytest.raises(ImageShredded):
        c.vault.get_image(aid)
    assert c.client.image_status(aid).state == "shredded"
    view = c.client.view(c.vault.message(message_id))
    assert view.body.attachments == []  # the descriptor (with the image key) is gone
    assert [i.attachment_id for i in view.images] == [aid]  # shown as deleted, not forgotten
    assert await count(world, "SELECT count(*) FROM attachment_access WHERE device_id = $1 "
                       "AND attachment_id = $2 AND fetched_at IS NOT NULL",
                       uuid.UUID(c.client.device_id), uuid.UUID(aid)) == 0


async def test_an_order_for_an_image_not_fetched_yet_tombstones_it_so_it_is_never_fetched(
        world: World, tmp_path: Path) -> None:
    """The message arrived, its image was not fetched (yet) when the order came: the order
    leaves a tombstone and a later fetch (``fetch_missing_images``) never downloads it."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    colleague = await enrol_clinician(world, tmp_path, "colleague", roles=(ORTHO,))
    ortho.client.fetch_images = False
    events = ortho.client.subscribe()
    await intern.client.start(wait_connected=seconds(10))
    await ortho.client.start(wait_connected=seconds(10))
    try:
        async def delivered() -> None:
            await _next(events, MessageEvent)
        aid, message_id = await _share_and_expire(world, intern, ortho, delivered,
                                                  also=(colleague,))
        expired = await _next(events, ExpiredEvent)
        assert expired.attachment_id == aid
        await _confirmed(world, ortho.client.device_id, aid)
        ortho.client.fetch_images = True
        await _never_held(world, ortho, aid, message_id)
    finally:
        await ortho.client.close()
        await intern.client.close()


async def test_a_device_offline_until_after_the_order_never_downloads_the_image(
        world: World, tmp_path: Path) -> None:
    """Offline from before the send until after the order: on reconnecting the order comes
    before the delivery; the image is never downloaded or stored, and the order confirmed.
    (A colleague's device, offline too, has not confirmed: the relay still keeps the
    ciphertext for it, so only the order protects this device's copy.)"""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    colleague = await enrol_clinician(world, tmp_path, "colleague", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    try:
        aid, message_id = await _share_and_expire(world, intern, ortho, also=(colleague,))
        events = ortho.client.subscribe()
        await ortho.client.start(wait_connected=seconds(10))
        await ortho.client.wait_synced(seconds(15))
        assert (await _next(events, ExpiredEvent)).attachment_id == aid
        await _confirmed(world, ortho.client.device_id, aid)
        await _never_held(world, ortho, aid, message_id)
        assert not any(isinstance(e, ImageEvent) and e.status == "stored"
                       for e in _drain(events))
    finally:
        await ortho.client.close()
        await intern.client.close()


async def _next(queue: asyncio.Queue[ClientEvent], kind: type[Any]) -> Any:
    async with asyncio.timeout(seconds(20)):
        while True:
            event = await queue.get()
            if isinstance(event, kind):
                return event


def _drain(queue: asyncio.Queue[ClientEvent]) -> list[ClientEvent]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_two_orders_for_one_image_while_offline_are_both_applied_and_confirmed(
        world: World, tmp_path: Path) -> None:
    """The specialist's desktop received the x-ray and went off; meanwhile it was filed, its
    copies expired and its consent was withdrawn. The next start (a new client on the same
    vault) gets both orders (reasons ``filed`` and ``consent_revoked``) and confirms both, so
    the audit can say every copy is gone."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    try:
        async def ortho_receives_then_goes_off() -> None:
            events = ortho.client.subscribe()
            await ortho.client.start(wait_connected=seconds(10))
            await ortho.client.wait_synced(seconds(15))
            async with asyncio.timeout(seconds(20)):
                while not ortho.vault.images():
                    await _next(events, ImageEvent)
            await ortho.client.close()

        aid, _message_id = await _share_and_expire(world, intern, ortho,
                                                   before_expiry=ortho_receives_then_goes_off)
        (consent,) = (await intern.client.relay.my_consents()).consents
        await intern.client.relay.revoke_consent(consent.consent_id, "the patient asked")
        device = uuid.UUID(ortho.client.device_id)
        assert await count(world, "SELECT count(*) FROM expiry_orders WHERE device_id = $1 "
                           "AND attachment_id = $2", device, uuid.UUID(aid)) == 2
        restarted = LightboxClient(ortho.vault, ortho.vault, password=PASSWORD,
                                   backoff_base=0.05, backoff_max=0.5)
        await restarted.start(wait_connected=seconds(10))
        try:
            await restarted.wait_synced(seconds(15))
            async def none_unconfirmed() -> bool:
                return not await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                       "device_id = $1 AND attachment_id = $2 AND "
                                       "confirmed_at IS NULL", device, uuid.UUID(aid))
            await eventually(none_unconfirmed, timeout=20)
            assert aid not in [i.attachment_id for i in ortho.vault.images()]
            assert restarted.consent_withdrawn_at(consent.consent_id) is not None
        finally:
            await restarted.close()
    finally:
        await intern.client.close()


async def test_a_withdrawal_orders_no_copy_already_destroyed_nor_the_gateway(
        world: World, tmp_path: Path) -> None:
    """Filed, expired and confirmed by the specialist's device, then the consent withdrawn:
    the relay orders no device that already confirmed destroying the image, nor the record
    gateway (it keeps nothing), so the audit has no copy left "not confirmed"."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    await intern.client.start(wait_connected=seconds(10))
    await ortho.client.start(wait_connected=seconds(10))
    try:
        aid, _message_id = await _share_and_expire(world, intern, ortho)
        await _confirmed(world, ortho.client.device_id, aid)
        await _confirmed(world, intern.client.device_id, aid)
        (consent,) = (await intern.client.relay.my_consents()).consents
        await intern.client.relay.revoke_consent(consent.consent_id, "the patient asked")
        assert await count(world, "SELECT count(*) FROM expiry_orders WHERE attachment_id = $1 "
                           "AND reason = 'consent_revoked'", uuid.UUID(aid)) == 0
        assert await count(world, "SELECT count(*) FROM expiry_orders o JOIN devices d "
                           "USING (device_id) WHERE o.attachment_id = $1 AND d.kind = 'gateway'",
                           uuid.UUID(aid)) == 0
    finally:
        await ortho.client.close()
        await intern.client.close()


@contextlib.asynccontextmanager
async def expired_before_handover(world: World, tmp_path: Path,
                                  burned_in: tuple[IdentifierKind, ...] = ()) -> AsyncIterator[
        tuple[Clinician, Clinician, asyncio.Queue[ClientEvent], asyncio.Queue[ClientEvent], str,
              MessageEvent]]:
    """The intern's x-ray with patient data, sent to two specialists (the night one started),
    filed, and its copies expired (the intern's confirmed): the intern's and the night
    specialist's started clients and their events, the attachment id and the night
    specialist's MessageEvent of the original. ``burned_in``: the kinds of identifier the
    intern's device found in the image."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    night = await enrol_clinician(world, tmp_path, "night", roles=(ORTHO,))
    said = intern.client.subscribe()
    arrived = night.client.subscribe()
    await intern.client.start(wait_connected=seconds(10))
    await night.client.start(wait_connected=seconds(10))
    try:
        aid, message_id = await _share_and_expire(world, intern, ortho, also=(night,),
                                                  patient=record(), burned_in=burned_in)
        await _confirmed(world, intern.client.device_id, aid)
        original = await _next(arrived, MessageEvent)
        assert original.message.message_id == message_id
        yield intern, night, said, arrived, aid, original
    finally:
        await intern.client.close()
        await night.client.close()


@pytest.mark.parametrize("burned_in", [(), (IdentifierKind.NAME,)], ids=["plain", "flagged"])
async def test_a_consult_whose_image_expired_is_handed_over_with_its_text_and_patient_data(
        world: World, tmp_path: Path, burned_in: tuple[IdentifierKind, ...]) -> None:
    """A shift handover after the consult's image was filed and every copy expired: the
    sender's device seals the consult again with what it still holds, the text and the
    patient data (docs/PROTOCOL.md §14 "record"), so the incoming clinician gets it and sees
    whom it is about; the image stays in the record. It used to stop the reseal ("record data
    goes with an image") while the relay told everyone the consult was handed over."""
    from protocol.frames import ResealRequest

    async with expired_before_handover(world, tmp_path, burned_in) as (
            intern, night, said, arrived, _, original):
        message_id = original.message.message_id
        await intern.client.notices.on_frame(ResealRequest(
            thread_id=original.message.thread_id, message_id=message_id,
            devices=[night.client.device_id], deadline=int(time.time()) + 600))
        copy = await _next(arrived, MessageEvent)
        body = night.client.body(night.vault.message(copy.message.message_id))
        assert body is not None and isinstance(body.handover_of, HandoverOf)
        assert body.handover_of.message_id == message_id
        assert body.text == "Wrist AP" and body.attachments == []
        # the flags of an image that went go with it (an image flagged as showing the
        # patient's name once stopped the reseal: its flag named an image no longer there)
        assert body.burned_in_identifiers == []
        assert body.record == record()
        assert not [e for e in _drain(said) if isinstance(e, StatusEvent)
                    and e.state == "error"], "the handover failed"
