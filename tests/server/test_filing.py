"""Filing and expiry on the relay (server/expiry.py) over real websockets: the gateway
requirement on images, filing statements and their bad-input codes, expiry orders after the
grace period (simulated time), confirmations and their codes, the ciphertext deleted once every
copy is accounted for, orders for an offline device sent first when it reconnects, the hard
limit for images never filed, and a device revoked with wipe."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from clients.sdk import attachments as sdk_attachments
from clients.sdk.socket import RelaySocket, SendRefused
from protocol import statements
from protocol.frames import (
    Error,
    ExpireOrder,
    ExpiryConfirm,
    ExpiryReason,
    FiledNotice,
    Filing,
    KeysLow,
    QueueEmpty,
    WipeConfirm,
    WipeOrder,
)
from tests.consent_world import count, sdk, xray_png
from tests.filing_world import (
    confirmation,
    expiry_service,
    filing_statement,
    gateway_peer,
    image_message,
    later,
    next_of,
    upload_image,
)
from tests.helpers import eventually
from tests.identity_world import World
from tests.relay_world import Peer, connect, peer, send_while_offline, thread
from tests.server.test_http_edge import assert_problem

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

ORTHO = "orthopaedics_oncall"


def wipe_confirmation(signer: Peer, device_id: str, order_id: str) -> str:
    return statements.issue_wipe_confirmation(statements.WipeConfirmation(
        v=1, device_id=device_id, order_id=order_id, wiped_at=int(time.time())),
        signer.device.keys.signing)


async def test_filing_statements_orders_confirmations_and_their_codes(world: World) -> None:
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    gw = await gateway_peer(world)
    tid = await thread(world, intern, ortho)
    shared = await upload_image(world, intern, xray_png(160, 120), roles=(ORTHO,))
    a, b, g = await connect(world, intern), await connect(world, ortho), await connect(world, gw)
    try:
        # An image for direct care must name the organisation's gateway.
        with pytest.raises(SendRefused) as err:
            await a.send(image_message(intern, tid, [ortho], shared))
        assert err.value.code == "filing_gateway_missing"
        assert err.value.missing == [gw.device_id]
        sealed = image_message(intern, tid, [ortho, gw], shared)
        await a.send(sealed)
        mid = sealed.header.message_id
        aid = shared.attachment_id

        async def refused(sock: RelaySocket, frame: Filing | ExpiryConfirm) -> Error:
            await sock.send_frame(frame)
            error: Error = await next_of(sock, Error, match=lambda e: e.req_id == frame.req_id)
            return error

        # Not a gateway: the specialist signs a filing statement with its own key.
        e = await refused(b, Filing(req_id="f1", statement=filing_statement(
            ortho, attachment_id=aid, message_id=mid, thread_id=tid)))
        assert e.code == "filing_not_gateway"
        # Signed by another key than the gateway's own.
        e = await refused(g, Filing(req_id="f2", statement=filing_statement(
            ortho, attachment_id=aid, message_id=mid, thread_id=tid, device_id=gw.device_id)))
        assert e.code == "verification_failed"
        # An attachment the gateway never received.
        e = await refused(g, Filing(req_id="f3", statement=filing_statement(
            gw, attachment_id=str(uuid.uuid4()), message_id=mid, thread_id=tid)))
        assert e.code == "filing_unknown_attachment"

        # The gateway downloads the image, then files it.
        http = await sdk(world, gw)
        try:
            await sdk_attachments.download(http, aid)
        finally:
            await http.aclose()
        statement = filing_statement(gw, attachment_id=aid, message_id=mid, thread_id=tid)
        await g.send_frame(Filing(req_id="ok", statement=statement))
        filed = await next_of(g, FiledNotice)
        assert filed.attachment_id == aid
        # Replayed: idempotent success, nothing changes.
        await g.send_frame(Filing(req_id="again", statement=statement))
        assert (await next_of(g, FiledNotice)).expires_at == filed.expires_at
        assert await count(world, "SELECT count(*) FROM filings") == 1
        notice = await next_of(b, FiledNotice)
        assert notice.attachment_id == aid and notice.expires_at == filed.expires_at

        # An expiry confirmation for a copy this device never had.
        e = await refused(b, ExpiryConfirm(req_id="c1", statement=confirmation(
            ortho, attachment_id=aid, order_id=str(uuid.uuid4()))))
        assert e.code == "expiry_unknown_copy"

        assert (await next_of(a, FiledNotice)).attachment_id == aid  # the sender is told too

        async def notice_dropped() -> bool:
            # The relay drops a notice once it is written (server/ws.py, the pump); a socket
            # closed before that has it sent again, rightly, ahead of the order looked for below.
            return await count(world, "SELECT count(*) FROM device_notices WHERE device_id = $1",
                               intern.device_id) == 0

        assert await eventually(notice_dropped)
        # The intern goes offline; the grace period passes (simulated time).
        await a.close()  # closing again in the finally is harmless
        async with expiry_service(world) as svc:
            report = await svc.sweep(now=later(60))
            assert report.orders == 0  # not yet
            report = await svc.sweep(now=later(901))
            assert report.expired_filed == 1 and report.orders == 2  # sender + specialist

        order = await next_of(b, ExpireOrder)
        assert order.attachment_id == aid and order.reason is ExpiryReason.FILED
        # Signed by someone else: verification_failed; then the real confirmation.
        e = await refused(b, ExpiryConfirm(req_id="c2", statement=confirmation(
            intern, attachment_id=aid, order_id=order.order_id)))
        assert e.code == "verification_failed"
        await b.send_frame(ExpiryConfirm(statement=confirmation(
            ortho, attachment_id=aid, order_id=order.order_id)))

        # The offline intern reconnects: its order comes before any notice or delivery.
        a = await connect(world, intern)
        first = await next_of(a, object, match=lambda f: not isinstance(f, KeysLow))
        assert isinstance(first, ExpireOrder) and first.attachment_id == aid
        await a.send_frame(ExpiryConfirm(statement=confirmation(
            intern, attachment_id=aid, order_id=first.order_id)))
        await next_of(a, QueueEmpty)

        async def settled() -> bool:  # confirmations have no answer frame
            return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                               "confirmed_at IS NULL") == 0 and await count(
                world, "SELECT count(*) FROM blobs WHERE blob_id = $1", uuid.UUID(aid)) == 0
        await eventually(settled)
        assert await count(world, "SELECT count(*) FROM device_notices WHERE kind = "
                           "'expire_order'") == 0
        # Filed, and every recipient fetched it (gateway) or confirmed its expiry (the
        # specialist, who never fetched it): the relay's ciphertext is gone.
        assert await count(world, "SELECT count(*) FROM blobs WHERE blob_id = $1",
                           uuid.UUID(aid)) == 0
        # A confirmation sent twice is idempotent.
        await b.send_frame(ExpiryConfirm(req_id="c3", statement=confirmation(
            ortho, attachment_id=aid, order_id=order.order_id)))
    finally:
        for s in (a, b, g):
            if s is not None:
                await s.close()


async def test_an_image_never_filed_expires_at_the_hard_limit_and_filing_is_then_too_late(
        world: World) -> None:
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    gw = await gateway_peer(world)
    tid = await thread(world, intern, ortho)
    shared = await upload_image(world, intern, xray_png(96, 96), roles=(ORTHO,))
    a, g = await connect(world, intern), await connect(world, gw)
    try:
        sealed = image_message(intern, tid, [ortho, gw], shared)
        await a.send(sealed)
        async with expiry_service(world) as svc:
            report = await svc.sweep(now=later(72 * 3600 + 5))
        assert report.expired_unfiled == 1 and report.orders == 2
        # The sender is told the image was not filed: its own order says hard_limit.
        order = await next_of(a, ExpireOrder)
        assert order.reason is ExpiryReason.HARD_LIMIT
        assert await count(world, "SELECT count(*) FROM blobs") == 0
        assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                           "'attachment.not_filed'") == 1
        await g.send_frame(Filing(req_id="late", statement=filing_statement(
            gw, attachment_id=shared.attachment_id, message_id=sealed.header.message_id,
            thread_id=tid)))
        e = await next_of(g, Error, match=lambda f: f.req_id == "late")
        assert e.code == "filing_too_late"
    finally:
        await a.close()
        await g.close()


async def test_a_device_revoked_with_wipe_gets_the_order_first_and_its_deliveries_dropped(
        world: World) -> None:
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    await send_while_offline(world, intern, ortho, await thread(world, intern, ortho),
                             b"queued for the lost phone")
    r = await world.revoke(world.org, 1, devices=(ortho.device_id,), wipe=True)
    assert r.status_code == 200, r.text
    b = await connect(world, ortho)  # its access token is still within its lifetime
    try:
        first = await next_of(b, object, match=lambda f: not isinstance(f, KeysLow))
        assert isinstance(first, WipeOrder)
        # A confirmation not signed by the device itself is not recorded.
        await b.send_frame(WipeConfirm(statement=wipe_confirmation(
            intern, ortho.device_id, first.order_id)))
        closed = await b.closed
        assert closed[0] == 4004
    finally:
        await b.close()
    assert await count(world, "SELECT count(*) FROM deliveries WHERE device_id = $1",
                       uuid.UUID(ortho.device_id)) == 0
    assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                       "'device.wipe_ordered'") == 1
    assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                       "'device.wipe_confirmed'") == 0
    assert await count(world, "SELECT count(*) FROM devices WHERE device_id = $1 AND "
                       "wipe_pending", uuid.UUID(ortho.device_id)) == 1


async def test_expire_orders_of_a_withdrawn_consent_are_confirmed_the_same_way(
        world: World) -> None:
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    gw = await gateway_peer(world)
    tid = await thread(world, intern, ortho)
    shared = await upload_image(world, intern, xray_png(64, 64), roles=(ORTHO,))
    a, b = await connect(world, intern), await connect(world, ortho)
    try:
        await a.send(image_message(intern, tid, [ortho, gw], shared))
        r = await world.call(intern.device, "POST", f"/v1/consents/{shared.consent_id}/revoke")
        assert r.status_code == 200, r.text
        order = await next_of(b, ExpireOrder)
        assert order.reason is ExpiryReason.CONSENT_REVOKED
        await b.send_frame(ExpiryConfirm(req_id="w", statement=confirmation(
            ortho, attachment_id=shared.attachment_id, order_id=order.order_id)))

        async def confirmed() -> int:
            return await count(world, "SELECT count(*) FROM expiry_orders WHERE device_id = $1 "
                               "AND confirmed_at IS NOT NULL", uuid.UUID(ortho.device_id))
        await eventually(confirmed)
        assert await confirmed() == 1
        assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                           "'expiry.confirmed'") == 1
    finally:
        await a.close()
        await b.close()


async def test_confirmations_sent_back_to_back_are_all_recorded(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A device that was off gets several orders on reconnecting and answers them in one burst
    (as the SDK does): every confirmation is recorded, none is lost to a concurrent one, and
    no frame's handling fails."""
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    gw = await gateway_peer(world)
    tid = await thread(world, intern, ortho)
    shares = [await upload_image(world, intern, xray_png(64, 64 + i), roles=(ORTHO,))
              for i in range(3)]
    a = await connect(world, intern)
    try:
        for shared in shares:
            await a.send(image_message(intern, tid, [ortho, gw], shared))
        for shared in shares:
            r = await world.call(intern.device, "POST",
                                 f"/v1/consents/{shared.consent_id}/revoke")
            assert r.status_code == 200, r.text
    finally:
        await a.close()
    b = await connect(world, ortho)
    try:
        orders = [await next_of(b, ExpireOrder) for _ in shares]
        by_attachment = {o.attachment_id: o for o in orders}
        frames = [ExpiryConfirm(statement=confirmation(
            ortho, attachment_id=s.attachment_id,
            order_id=by_attachment[s.attachment_id].order_id)) for s in shares]
        await asyncio.gather(*(b.send_frame(f) for f in frames))

        async def all_confirmed() -> bool:
            return await count(world, "SELECT count(*) FROM expiry_orders WHERE device_id = $1 "
                               "AND confirmed_at IS NULL", uuid.UUID(ortho.device_id)) == 0
        await eventually(all_confirmed, timeout=20)
        assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                           "'expiry.confirmed'") == len(shares)
    finally:
        await b.close()
    assert not [r for r in caplog.records if r.getMessage() == "frame handling failed"]


async def test_a_wiped_phone_coming_back_after_its_token_expired_still_gets_the_order(
        world: World) -> None:
    """A lost phone returns long after its 10-minute access token expired; it cannot log in
    (revoked), but its genuine expired token and its key's challenge signature get it the wipe
    order, and a device NOT marked for wipe gets token_expired as always."""
    import time

    from clients.sdk.socket import RelaySocket, SocketClosed

    ortho = await peer(world, "ortho", roles=(ORTHO,))
    bystander = await peer(world, "bystander", roles=(ORTHO,))
    tokens = world.relay.relay.tokens

    def expired(p: Peer) -> str:
        claims = tokens.verify_access(p.token)
        token, _ = tokens.issue_access(user_id=p.user_id, device_id=p.device_id,
                                       family_id=claims.family_id,
                                       signing_key=p.device.keys.signing.public,
                                       now=time.time() - 7200)
        return token

    r = await world.revoke(world.org, 1, devices=(ortho.device_id,), wipe=True)
    assert r.status_code == 200, r.text
    b = await RelaySocket.connect(world.relay.ws_url + "/v1/ws", access_token=expired(ortho),
                                  device_id=ortho.device_id, sign=ortho.device.keys.sign)
    try:
        first = await next_of(b, object, match=lambda f: not isinstance(f, KeysLow))
        assert isinstance(first, WipeOrder)
        # The device's own confirmation of this order is recorded.
        await b.send_frame(WipeConfirm(statement=wipe_confirmation(
            ortho, ortho.device_id, first.order_id)))
        assert (await b.closed)[0] == 4004
    finally:
        await b.close()
    assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                       "'device.wipe_confirmed' AND subject_id = $1", ortho.device_id) == 1
    # Confirmed: the order is not sent again; the expired token is just expired now.
    with pytest.raises(SocketClosed) as err:
        await RelaySocket.connect(world.relay.ws_url + "/v1/ws", access_token=expired(ortho),
                                  device_id=ortho.device_id, sign=ortho.device.keys.sign)
    assert (err.value.code, err.value.reason) == (4001, "token_expired")
    with pytest.raises(SocketClosed) as err:
        await RelaySocket.connect(world.relay.ws_url + "/v1/ws",
                                  access_token=expired(bystander),
                                  device_id=bystander.device_id,
                                  sign=bystander.device.keys.sign)
    assert (err.value.code, err.value.reason) == (4001, "token_expired")


async def download(world: World, who: Peer, path: str, span: str) -> httpx.Response:
    """``GET path`` as ``who``'s device, with a ``Range: span`` header."""
    assert who.device.access_token is not None
    headers = who.device.proof("GET", path, who.device.access_token)
    return await world.http.get(path, headers={**headers, "Range": span})


async def test_a_device_under_an_expiry_order_gets_410_attachment_expired_and_the_blob_goes(
        world: World) -> None:
    """Once the relay has issued a device's expiry order for an image, that device can no
    longer download it (a fresh GET, the resume of a partial one, a replay after it confirmed):
    410 ``attachment_expired``. The ciphertext goes once every device has confirmed; an image
    under no order still downloads (nothing already accepted is lost)."""
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    gw = await gateway_peer(world)
    tid = await thread(world, intern, ortho)
    shared = await upload_image(world, intern, xray_png(160, 120), roles=(ORTHO,))
    other = await upload_image(world, intern, xray_png(96, 80, seed=4), roles=(ORTHO,))
    aid = shared.attachment_id
    path = f"/v1/attachments/{aid}"
    a, b, g = await connect(world, intern), await connect(world, ortho), await connect(world, gw)
    try:
        sealed = image_message(intern, tid, [ortho, gw], shared)
        await a.send(sealed)
        await a.send(image_message(intern, tid, [ortho, gw], other))
        # The specialist starts a download (the first 100 bytes); the gateway fetches and files.
        r = await download(world, ortho, path, "bytes=0-99")
        assert r.status_code == 206 and len(r.content) == 100
        http = await sdk(world, gw)
        try:
            await sdk_attachments.download(http, aid)
        finally:
            await http.aclose()
        await g.send_frame(Filing(req_id="ok", statement=filing_statement(
            gw, attachment_id=aid, message_id=sealed.header.message_id, thread_id=tid)))
        await next_of(g, FiledNotice)
        async with expiry_service(world) as svc:
            report = await svc.sweep(now=later(901))
        assert report.expired_filed == 1 and report.orders == 2  # sender + specialist
        order = await next_of(b, ExpireOrder, match=lambda o: o.attachment_id == aid)

        # Under the order: no download for the specialist, fresh or resumed, nor the sender.
        problem = assert_problem(await world.call(ortho.device, "GET", path), 410,
                                 "attachment_expired")
        assert problem["type"] == "https://lightbox.invalid/problems/attachment_expired"
        assert_problem(await download(world, ortho, path, "bytes=100-"), 410,
                       "attachment_expired")
        assert_problem(await world.call(intern.device, "GET", path), 410, "attachment_expired")
        # The specialist has not confirmed yet: the ciphertext is still kept.
        assert await count(world, "SELECT count(*) FROM blobs WHERE blob_id = $1",
                           uuid.UUID(aid)) == 1
        # The other image is under no order: it downloads whole, as before.
        r = await world.call(ortho.device, "GET", f"/v1/attachments/{other.attachment_id}")
        assert r.status_code == 200 and r.content
        # Bad input keeps its codes: another device, an unknown id, a malformed id.
        stranger = await peer(world, "stranger", roles=("intern",))
        assert_problem(await world.call(stranger.device, "GET", path), 403,
                       "attachment_forbidden")
        assert_problem(await world.call(ortho.device, "GET", f"/v1/attachments/{uuid.uuid4()}"),
                       403, "attachment_forbidden")
        assert_problem(await world.call(ortho.device, "GET", "/v1/attachments/not-an-id"), 403,
                       "attachment_forbidden")

        await b.send_frame(ExpiryConfirm(statement=confirmation(
            ortho, attachment_id=aid, order_id=order.order_id)))

        async def ciphertext_gone() -> bool:  # confirmations have no answer frame
            return await count(world, "SELECT count(*) FROM blobs WHERE blob_id = $1",
                               uuid.UUID(aid)) == 0
        await eventually(ciphertext_gone)
        # Every device that was sent the image confirmed or fetched it: the ciphertext is gone.
        assert await count(world, "SELECT count(*) FROM blobs WHERE blob_id = $1",
                           uuid.UUID(aid)) == 0
        # A replayed download after the confirmation: still 410 with the same code.
        assert_problem(await world.call(ortho.device, "GET", path), 410, "attachment_expired")
        assert await count(world, "SELECT count(*) FROM audit_log WHERE event = "
                           "'attachment.fetched' AND details->>'device_id' = $1 "
                           "AND subject_id = $2", ortho.device_id, aid) == 0
    finally:
        for s in (a, b, g):
            await s.close()


async def test_copies_counts_a_copy_destroyed_only_if_not_downloaded_after_its_confirmation(
        world: World) -> None:
    """``lightbox-admin copies`` reads the audit trail in order: a device that confirmed its
    order and never downloaded the image is ``never_received``; a download completed after a
    confirmation (what a relay without the 410 let happen) means the copy may exist again, and
    the image is not reported destroyed."""
    intern = await peer(world, "intern", roles=("intern",))
    ortho = await peer(world, "ortho", roles=(ORTHO,))
    gw = await gateway_peer(world)
    tid = await thread(world, intern, ortho)
    shared = await upload_image(world, intern, xray_png(96, 96, seed=6), roles=(ORTHO,))
    aid = shared.attachment_id
    a, b, g = await connect(world, intern), await connect(world, ortho), await connect(world, gw)
    try:
        sealed = image_message(intern, tid, [ortho, gw], shared)
        await a.send(sealed)
        await g.send_frame(Filing(req_id="ok", statement=filing_statement(
            gw, attachment_id=aid, message_id=sealed.header.message_id, thread_id=tid)))
        await next_of(g, FiledNotice)
        async with expiry_service(world) as svc:
            assert (await svc.sweep(now=later(901))).orders == 2
            for sock, who in ((a, intern), (b, ortho)):
                order = await next_of(sock, ExpireOrder, match=lambda o: o.attachment_id == aid)
                await sock.send_frame(ExpiryConfirm(statement=confirmation(
                    who, attachment_id=aid, order_id=order.order_id)))

            async def all_confirmed() -> bool:
                return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                   "confirmed_at IS NULL") == 0
            await eventually(all_confirmed)
            (report,) = await svc.copies(attachment_id=aid)
            status = {c.device_id: c.status for c in report.copies}
            assert status == {intern.device_id: "destroyed", ortho.device_id: "never_received",
                              gw.device_id: "gateway"}
            assert report.all_destroyed
            # A completed download after the confirmation, as the download route records it.
            await svc.fetched(aid, ortho.device_id)
            (report,) = await svc.copies(attachment_id=aid)
            late = next(c for c in report.copies if c.device_id == ortho.device_id)
            assert late.status == "fetched_after_confirmation" and late.confirmed_at is not None
            assert not report.all_destroyed
    finally:
        for s in (a, b, g):
            await s.close()
