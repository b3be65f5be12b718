"""Filing and expiry storage (server/store/filings.py), read directly after a real image was
sent through the relay: the lifecycle row made once from the first message, who holds a copy,
which gateways an organisation has, what a gateway received, when the relay's ciphertext may
go, and due timers claimed once."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from protocol.model import DeviceKind
from server.store import filings
from tests.consent_world import xray_png
from tests.filing_world import GATEWAY_ROLE, gateway_peer, image_message, upload_image
from tests.identity_world import World, identity_world
from tests.relay_world import connect, peer, thread

ORTHO = "orthopaedics_oncall"
HARD_LIMIT = 72 * 3600
LATER = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    # No sweep during the test: the lifecycle rows are this test's to make.
    async with identity_world(db_dsn, tmp_path, attachment_chunk_bytes=64 * 1024,
                              expiry_sweep_interval=3600) as w:
        yield w


async def test_an_images_lifecycle_holders_gateways_and_release(world: World) -> None:
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    outsider = await peer(world, "outsider", roles=(ORTHO,))
    gw = await gateway_peer(world)
    tid = await thread(world, intern, ortho)
    shared = await upload_image(world, intern, xray_png(64, 48), roles=(ORTHO,))
    a = await connect(world, intern)
    try:
        sealed = image_message(intern, tid, [ortho, gw], shared)
        await a.send(sealed)
    finally:
        await a.close()
    aid, mid = shared.attachment_id, sealed.header.message_id
    conn = await asyncpg.connect(world.dsn)
    try:
        made = await filings.materialise(conn, hard_limit=HARD_LIMIT, attachment_ids=[aid])
        assert [(m.attachment_id, m.message_id, m.thread_id, m.state) for m in made] == [
            (aid, mid, tid, "unfiled")]
        assert made[0].due_at is not None
        assert made[0].due_at - made[0].shared_at == dt.timedelta(seconds=HARD_LIMIT)
        assert await filings.materialise(conn, hard_limit=HARD_LIMIT) == []  # once
        assert await filings.thread_attachments(conn, tid) == [aid]

        holders = await filings.holders(conn, aid)
        assert [(h.device_id, h.sender) for h in holders] == [
            (intern.device_id, True), *sorted([(ortho.device_id, False), (gw.device_id, False)])]
        assert {h.kind for h in holders if h.device_id == gw.device_id} == {
            DeviceKind.GATEWAY.value}
        assert await filings.org_gateways(conn, world.org.org_id, GATEWAY_ROLE) == {gw.device_id}
        assert await filings.org_gateways(conn, world.org.org_id, ORTHO) == set()

        delivered = {"attachment_id": aid, "message_id": mid, "thread_id": tid}
        assert await filings.was_delivered(conn, **delivered, device_id=gw.device_id)
        assert not await filings.was_delivered(conn, **delivered, device_id=outsider.device_id)
        assert not await filings.was_delivered(conn, **{**delivered, "message_id": str(
            uuid.uuid4())}, device_id=gw.device_id)
        assert not await filings.was_delivered(conn, **{**delivered, "thread_id": "nope"},
                                               device_id=gw.device_id)
        assert await filings.received_in_thread(conn, gw.device_id, tid)
        assert not await filings.received_in_thread(conn, outsider.device_id, tid)

        # The ciphertext goes once the image is filed and every recipient fetched it.
        assert await filings.mark_fetched(conn, aid, ortho.device_id, LATER)
        assert not await filings.mark_fetched(conn, aid, ortho.device_id, LATER)  # first only
        await filings.set_state(conn, aid, state="filed", due_at=LATER, filed_at=LATER)
        assert not await filings.releasable(conn, aid)  # the gateway has not fetched it
        assert await filings.mark_fetched(conn, aid, gw.device_id, LATER)
        await filings.set_state(conn, aid, state="unfiled", due_at=LATER)
        assert not await filings.releasable(conn, aid)  # all fetched, but not filed
        await filings.set_state(conn, aid, state="filed", due_at=LATER, filed_at=LATER)
        assert await filings.releasable(conn, aid)
        assert await filings.mark_ciphertext_deleted(conn, aid, LATER)
        assert not await filings.mark_ciphertext_deleted(conn, aid, LATER)
        assert not await filings.releasable(conn, aid)

        # A due timer is claimed by one transaction; another skips it.
        other = await asyncpg.connect(world.dsn)
        try:
            async with conn.transaction():
                assert [r.attachment_id for r in await filings.claim_due(conn, now=LATER)] == [aid]
                async with other.transaction():
                    assert await filings.claim_due(other, now=LATER) == []
            assert await filings.claim_due(conn, now=LATER - dt.timedelta(hours=2)) == []
        finally:
            await other.close()
    finally:
        await conn.close()


def test_who_never_received_an_image_is_everyone_named_who_did_not_and_a_role_only_if_nobody_did(
        ) -> None:
    """``never_received`` (docs/PROTOCOL.md §15 "Never received"): the thread's named members
    who saw it on no device, whoever else did; people reached through a role only (certificate
    holders, an on-call ladder's backups whose copies were held) only when nobody it was sent to
    saw it; never the sender's other devices or a record gateway."""
    at = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)

    def h(user: str, *, fetched: bool = False, sender: bool = False, kind: str = "device"
          ) -> filings.Holder:
        return filings.Holder(f"{user}-{kind}-{fetched}", user, kind, True, sender,
                              at if fetched else None)

    intern = [h("intern", sender=True), h("intern")]  # the sending device, and their desktop
    gateway = [h("gateway", kind="gateway")]
    # Two named specialists: one saw it on their phone (not on their desktop), one did not.
    named = [h("ortho"), h("ortho", fetched=True), h("radiology")]
    assert filings.never_received([*intern, *gateway, *named], {"ortho", "radiology"}) == [
        "radiology"]
    # An on-call ladder: the primary saw it; the backups' held copies are not "never received".
    ladder = [h("primary", fetched=True), h("backup1"), h("backup2")]
    assert filings.never_received([*intern, *gateway, *ladder], set()) == []
    # Nobody saw it: everyone it was sent to, role-reached or named.
    unseen = [h("primary"), h("backup1"), h("radiology")]
    assert filings.never_received([*intern, *gateway, *unseen], {"radiology"}) == [
        "backup1", "primary", "radiology"]
    # A named member who did not see it is told of even when a role holder did.
    assert filings.never_received([*intern, h("primary", fetched=True), h("radiology")],
                                  {"radiology"}) == ["radiology"]
