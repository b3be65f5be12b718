"""The device side of expiry and wipe (clients/sdk/expiry.py) against a real relay: an expire
order shreds the vault copy (a tombstone keeps the record reference) and yields a confirmation
signed by the device; a device revoked with wipe that reconnects receives the organisation-
signed order before anything else and destroys its vault; forged or replayed wipe orders (an
old list after a re-enrolment, another device's order) are refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from clients.sdk.errors import FlowError
from clients.sdk.expiry import shred_and_confirm, verify_wipe_order, wipe
from clients.sdk.socket import RelaySocket
from protocol import certs, statements
from protocol.frames import ExpireOrder, ExpiryReason, KeysLow, WipeOrder
from protocol.keys import OrganisationKey
from tests.clinician_world import enrol_clinician
from tests.helpers import seconds
from tests.identity_world import World, identity_world


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


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
