"""Consent on the relay against a real relay and Postgres: registration (and its refusals),
enforcement of every send with the precise code and nothing stored on refusal, forwarding,
withdrawal with withdrawn notices and durable expiry orders, and who may see or revoke."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from clients.sdk import attachments as sdk_attachments
from clients.sdk.socket import RelaySocket, SendRefused
from protocol.attachments import AttachmentDescriptor, encrypt_attachment
from protocol.consent import (
    ConsentBasis,
    ConsentDecision,
    issue_consent_token,
    peek_consent_token_unverified,
)
from protocol.frames import Deliver, ExpireOrder, QueueEmpty, Withdrawn
from protocol.model import Purpose
from tests.consent_world import (
    assert_blind,
    consent,
    count,
    image_body,
    image_needles,
    patient_needles,
    sdk,
    seal_with,
    xray_png,
)
from tests.helpers import eventually, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, peer, thread

ORTHO = "orthopaedics_oncall"
OTHER_ORG = "other-org"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=("st-elsewhere", OTHER_ORG)) as w:
        yield w


@pytest.fixture
async def people(world: World) -> dict[str, Peer]:
    found = {
        "alice": await peer(world, "alice", roles=("intern",)),
        "bob": await peer(world, "bob", roles=(ORTHO,)),
        "carol": await peer(world, "carol", roles=("radiology",)),
        "officer": await peer(world, "officer", roles=("privacy_officer",)),
    }
    dave = world.orgs[OTHER_ORG].user("dave", roles=(ORTHO,))
    await world.provision(dave)
    found["dave"] = await peer(world, "dave", user=dave)
    return found


async def register(world: World, p: Peer, token: str) -> tuple[int, dict[str, object]]:
    r = await world.call(p.device, "POST", "/v1/consents", json={"token": token})
    return r.status_code, r.json()


async def upload(world: World, p: Peer, image: bytes) -> AttachmentDescriptor:
    enc = encrypt_attachment(image)
    relay = await sdk(world, p)
    try:
        aid = await sdk_attachments.upload(relay, enc.ciphertext)
    finally:
        await relay.aclose()
    return enc.descriptor(aid, "image/png")


async def next_of(sock: RelaySocket, kind: type, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    while True:
        frame = await sock.next_event(seconds(timeout))
        if isinstance(frame, kind):
            return frame


async def stored(world: World) -> tuple[int, int]:
    return (await count(world, "SELECT count(*) FROM messages"),
            await count(world, "SELECT count(*) FROM attachment_access"))


async def refused(world: World, sock: RelaySocket, sealed: object) -> str:
    """Send, expect a refusal, and check nothing was stored; returns the code."""
    before = await stored(world)
    with pytest.raises(SendRefused) as err:
        await sock.send(sealed)  # type: ignore[arg-type]
    assert await stored(world) == before, "a refused message left rows behind"
    return err.value.code


# --- registration --------------------------------------------------------------------------


async def test_registration_verifies_against_the_issuers_certificate_and_is_audited(
        world: World, people: dict[str, Peer]) -> None:
    alice = people["alice"]
    token, cid = consent(world, alice, [b"img"], roles=(ORTHO,))
    status, info = await register(world, alice, token)
    assert status == 201 and info["consent_id"] == cid and info["status"] == "active"
    again = await world.call(alice.device, "POST", "/v1/consents", json={"token": token})
    assert again.status_code == 200  # idempotent
    r = await world.call(alice.device, "GET", f"/v1/consents/{cid}")
    assert r.json()["token"] == token
    conn = await world.db()
    try:
        row = await conn.fetchrow("SELECT event, details FROM audit_log WHERE subject_id = $1",
                                  cid)
    finally:
        await conn.close()
    assert row["event"] == "consent.registered"
    assert json.loads(row["details"])["decision"] == "agreed"


async def test_registration_refuses_bad_signatures_other_orgs_expiry_and_garbage(
        world: World, people: dict[str, Peer]) -> None:
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    token, _ = consent(world, alice, [b"img"], roles=(ORTHO,))
    head, payload, sig = token.split(".")
    forged_sig = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    assert (await register(world, alice, forged_sig))[1]["code"] == "consent_invalid"
    # Signed by bob's identity key but claiming alice as issuer: the kid / signature fail.
    bob_state_token, _ = consent(world, bob, [b"img"], roles=(ORTHO,))
    _, bob_payload, bob_sig = bob_state_token.split(".")
    assert (await register(world, alice, f"{head}.{bob_payload}.{bob_sig}"))[1]["code"] == \
        "consent_invalid"
    # From another organisation: dave's token claims alice's organisation.
    dave_token, _ = consent(world, dave, [b"img"], roles=(ORTHO,))

    claims = peek_consent_token_unverified(dave_token)
    lying = issue_consent_token(msgspec.structs.replace(claims, org="st-elsewhere"),
                                dave.device.user.identity.seed)
    assert (await register(world, dave, lying))[1]["code"] == "consent_invalid"
    # Expired before registration.
    old, _ = consent(world, alice, [b"img"], roles=(ORTHO,), now=1_700_000_000, valid_for=60)
    status, body = await register(world, alice, old)
    assert (status, body["code"]) == (403, "consent_expired")
    for junk in ("a.b.c", "x" * 20_000):
        r = await world.call(alice.device, "POST", "/v1/consents", json={"token": junk})
        assert r.json()["code"] in {"consent_invalid", "validation_failed"}
    assert await count(world, "SELECT count(*) FROM consents") == 0


async def test_a_suspended_clinicians_consent_is_refused_at_registration_and_send(
        world: World, people: dict[str, Peer]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    image = b"x-ray of the left wrist"
    t1, c1 = consent(world, alice, [image], users=(bob.user_id, carol.user_id))
    t2, _ = consent(world, alice, [image], users=(bob.user_id, carol.user_id))
    assert (await register(world, alice, t1))[0] == 201
    r = await world.revoke(world.org, 1, users=(alice.user_id,))
    assert r.status_code == 200, r.text
    assert (await register(world, bob, t2))[1]["code"] == "consent_invalid"
    tid = await thread(world, bob, carol)
    d = await upload(world, bob, image)  # bob forwards the image he received under c1
    b = await connect(world, bob)
    try:
        code = await refused(world, b, seal_with(bob, tid, [carol], image_body("fwd", d),
                                                 consent_id=c1, attachment_ids=[d.attachment_id]))
        assert code == "consent_invalid"
    finally:
        await b.close()


# --- enforcement ----------------------------------------------------------------------------


async def test_every_consent_failure_is_refused_with_its_code_and_stores_nothing(
        world: World, people: dict[str, Peer]) -> None:
    alice, bob, carol, dave = people["alice"], people["bob"], people["carol"], people["dave"]
    image = xray_png(96, 96)
    d = await upload(world, alice, image)
    tid = await thread(world, alice, bob)
    wide = await thread(world, alice, bob, carol)
    ok_token, ok_id = consent(world, alice, [image], roles=(ORTHO,))
    refused_token, refused_id = consent(world, alice, [image], roles=(ORTHO,),
                                        decision=ConsentDecision.REFUSED)
    revoked_token, revoked_id = consent(world, alice, [image], roles=(ORTHO,))
    foreign_token, foreign_id = consent(world, dave, [image], orgs=("st-elsewhere",))
    for who, t in ((alice, ok_token), (alice, refused_token), (alice, revoked_token),
                   (dave, foreign_token)):
        assert (await register(world, who, t))[0] == 201
    r = await world.call(alice.device, "POST", f"/v1/consents/{revoked_id}/revoke")
    assert r.status_code == 200, r.text
    body = image_body("Query scaphoid fracture", d)
    a = await connect(world, alice)
    try:
        def msg(consent_id: str | None, *, purpose: Purpose = Purpose.DIRECT_CARE,
                thread_id: str = tid, to: list[Peer] | None = None,
                attachments: list[str] | None = None) -> object:
            return seal_with(alice, thread_id, to or [bob], body, consent_id=consent_id,
                             attachment_ids=[d.attachment_id] if attachments is None
                             else attachments, purpose=purpose)

        cases = [
            ("consent_missing", msg(None)),
            ("consent_missing", msg(None, purpose=Purpose.TEACHING, attachments=[])),
            ("consent_invalid", msg(str(uuid.uuid4()))),
            ("consent_refused", msg(refused_id)),
            ("consent_revoked", msg(revoked_id)),
            ("consent_purpose", msg(ok_id, purpose=Purpose.TEACHING)),
            ("consent_purpose", msg(ok_id, purpose=Purpose.EXTERNAL_CONSULT)),
            ("consent_recipient_out_of_scope", msg(ok_id, thread_id=wide, to=[bob, carol])),
            ("consent_external_requires_written", msg(foreign_id)),
            ("upload_not_found", msg(ok_id, attachments=[str(uuid.uuid4())])),
        ]
        for expected, sealed in cases:
            assert await refused(world, a, sealed) == expected, expected
        # The same consent and image, to covered recipients, is accepted.
        acc = await a.send(msg(ok_id))  # type: ignore[arg-type]
        assert not acc.duplicate
        # Direct-care text without attachments needs no consent.
        await a.send(seal_with(alice, tid, [bob], b"thanks", consent_id=None,
                               attachment_ids=[]))
    finally:
        await a.close()
    assert await count(world, "SELECT count(*) FROM messages") == 2
    assert await count(world, "SELECT count(*) FROM attachment_access WHERE device_id = $1",
                       uuid.UUID(bob.device_id)) == 1
    await assert_blind(world.dsn, {**image_needles(image),
                                   **patient_needles("Query scaphoid fracture")},
                       controls=(d.attachment_id.encode(),))


async def test_unfinalised_and_other_peoples_uploads_are_refused(
        world: World, people: dict[str, Peer]) -> None:
    alice, bob = people["alice"], people["bob"]
    image = b"image bytes"
    token, cid = consent(world, alice, [image], roles=(ORTHO,))
    await register(world, alice, token)
    tid = await thread(world, alice, bob)
    relay = await sdk(world, alice)
    try:
        half = (await relay.create_upload(100)).attachment_id
    finally:
        await relay.aclose()
    bobs = await upload(world, bob, image)
    a = await connect(world, alice)
    try:
        for aid, expected in ((half, "validation_failed"), (bobs.attachment_id,
                                                             "upload_not_found")):
            sealed = seal_with(alice, tid, [bob], b"x", consent_id=cid, attachment_ids=[aid])
            assert await refused(world, a, sealed) == expected
    finally:
        await a.close()


async def test_an_expired_consent_is_refused_at_send(db_dsn: str, tmp_path: Path) -> None:
    policy = tmp_path / "consent-policy.json"
    policy.write_text(json.dumps({"st-elsewhere": {"clock_skew": 0}}))
    async with identity_world(db_dsn, tmp_path, consent_policy_file=policy) as world:
        alice, bob = await peer(world, "alice"), await peer(world, "bob", roles=(ORTHO,))
        token, cid = consent(world, alice, [b"img"], roles=(ORTHO,), valid_for=2)
        assert (await register(world, alice, token))[0] == 201
        d = await upload(world, alice, b"img")
        tid = await thread(world, alice, bob)
        world.clock.advance(2.2)  # the relay's clock: the consent's two seconds have passed
        a = await connect(world, alice)
        try:
            sealed = seal_with(alice, tid, [bob], b"x", consent_id=cid,
                               attachment_ids=[d.attachment_id])
            assert await refused(world, a, sealed) == "consent_expired"
        finally:
            await a.close()
        r = await world.call(alice.device, "GET", f"/v1/consents/{cid}")
        assert r.json()["status"] == "expired"


async def test_forwarding_needs_the_consent_to_cover_the_new_recipient(
        world: World, people: dict[str, Peer]) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    image = xray_png(64, 64)
    token, cid = consent(world, alice, [image], users=(bob.user_id,))
    await register(world, alice, token)
    d = await upload(world, alice, image)
    first = await thread(world, alice, bob)
    a, b = await connect(world, alice), await connect(world, bob)
    try:
        await a.send(seal_with(alice, first, [bob], image_body("look", d), consent_id=cid,
                               attachment_ids=[d.attachment_id]))
        got = await next_of(b, Deliver)
        await b.ack([got.delivery_id])
        # bob forwards the same attachment (by reference) into a thread with carol
        other = await thread(world, bob, carol)
        fwd = seal_with(bob, other, [carol], image_body("fwd", d), consent_id=cid,
                        attachment_ids=[d.attachment_id])
        assert await refused(world, b, fwd) == "consent_recipient_out_of_scope"
        # a consent that covers carol too lets him forward it
        token2, cid2 = consent(world, alice, [image], users=(bob.user_id, carol.user_id))
        await register(world, alice, token2)
        await b.send(seal_with(bob, other, [carol], image_body("fwd", d), consent_id=cid2,
                               attachment_ids=[d.attachment_id]))
        assert await count(world, "SELECT count(*) FROM attachment_access WHERE device_id = $1",
                           uuid.UUID(carol.device_id)) == 1
    finally:
        await a.close()
        await b.close()


async def test_written_consent_for_teaching_is_accepted(
        world: World, people: dict[str, Peer]) -> None:
    alice, bob = people["alice"], people["bob"]
    image = b"teaching image"
    token, cid = consent(world, alice, [image], roles=(ORTHO,), purposes=(Purpose.TEACHING,),
                         basis=ConsentBasis.WRITTEN)
    await register(world, alice, token)
    d = await upload(world, alice, image)
    tid = await thread(world, alice, bob)
    a = await connect(world, alice)
    try:
        acc = await a.send(seal_with(alice, tid, [bob], b"x", consent_id=cid,
                                     attachment_ids=[d.attachment_id],
                                     purpose=Purpose.TEACHING))
        assert acc.thread_seq == 1
    finally:
        await a.close()


# --- withdrawal -----------------------------------------------------------------------------


async def test_revocation_withdraws_undelivered_orders_expiry_and_stops_the_next_send(
        world: World, people: dict[str, Peer]) -> None:
    alice, bob, carol, officer = (people[k] for k in ("alice", "bob", "carol", "officer"))
    image = xray_png(128, 128)
    token, cid = consent(world, alice, [image], users=(bob.user_id, carol.user_id))
    await register(world, alice, token)
    d = await upload(world, alice, image)
    tid = await thread(world, alice, bob, carol)
    a, b = await connect(world, alice), await connect(world, bob)
    try:
        sent = seal_with(alice, tid, [bob, carol], image_body("see image", d), consent_id=cid,
                         attachment_ids=[d.attachment_id])
        await a.send(sent)
        got = await next_of(b, Deliver)
        await b.ack([got.delivery_id])  # bob has it; carol is offline: still queued

        async def bobs_gone() -> bool:
            return await count(world, "SELECT count(*) FROM deliveries") == 1

        await eventually(bobs_gone)
        # Neither an unrelated user nor a non-issuing participant may revoke.
        dave = people["dave"]
        r = await world.call(dave.device, "POST", f"/v1/consents/{cid}/revoke")
        assert r.json()["code"] == "not_found"
        r = await world.call(bob.device, "POST", f"/v1/consents/{cid}/revoke")
        assert r.json()["code"] == "forbidden"
        r = await world.call(officer.device, "POST", f"/v1/consents/{cid}/revoke")
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["withdrawn_messages"] == 1
        assert result["expiry_orders"] == 3  # alice's, bob's and carol's devices
        withdrawn = await next_of(a, Withdrawn)
        assert (withdrawn.message_id, withdrawn.reason.value) == (sent.header.message_id,
                                                                  "consent_revoked")
        order = await next_of(b, ExpireOrder)
        assert (order.attachment_id, order.thread_id, order.reason.value) == (
            d.attachment_id, tid, "consent_revoked")
        assert await count(world, "SELECT count(*) FROM deliveries") == 0
        # The next send under it is refused, and its image is no longer served.
        again = seal_with(alice, tid, [bob, carol], image_body("again", d), consent_id=cid,
                          attachment_ids=[d.attachment_id])
        assert await refused(world, a, again) == "consent_revoked"
        path = f"/v1/attachments/{d.attachment_id}"
        r = await world.call(bob.device, "GET", path)
        assert r.json()["code"] == "consent_revoked"
        # Revoking again changes nothing.
        r = await world.call(alice.device, "POST", f"/v1/consents/{cid}/revoke")
        assert r.json()["expiry_orders"] == 0
    finally:
        await a.close()
        await b.close()
    # Orders are durable: bob's reconnecting device gets it again; carol's, offline during
    # the revocation, gets it first and never the withdrawn message.
    b = await connect(world, bob)
    c = await connect(world, carol)
    try:
        assert (await next_of(b, ExpireOrder)).order_id == order.order_id
        frames = []
        while True:
            f = await c.next_event(seconds(10))
            frames.append(f)
            if isinstance(f, QueueEmpty):
                break
        assert any(isinstance(f, ExpireOrder) for f in frames)  # before the queue is empty
        assert not any(isinstance(f, Deliver) for f in frames)
    finally:
        await b.close()
        await c.close()
    conn = await world.db()
    try:
        orders = await conn.fetch("SELECT device_id::text AS d, confirmed_at FROM expiry_orders")
        events = [r["event"] for r in await conn.fetch("SELECT event FROM audit_log")]
    finally:
        await conn.close()
    assert {o["d"] for o in orders} == {alice.device_id, bob.device_id, carol.device_id}
    assert all(o["confirmed_at"] is None for o in orders)
    assert "consent.revoked" in events
    r = await world.call(carol.device, "GET", f"/v1/consents/{cid}")
    assert r.json()["status"] == "revoked"
    r = await world.call(people["dave"].device, "GET", f"/v1/consents/{cid}")
    assert r.json()["code"] == "not_found"
