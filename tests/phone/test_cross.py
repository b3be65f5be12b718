"""Cross-implementation: what the phone's TypeScript protocol core seals opens with the Python
protocol library and SDK, and the reverse; a consent token the phone signs is registered by the
real relay, which then accepts an image sent under it (docs/PROTOCOL.md §5, §6, §7, §13).

The TypeScript runs under Node through clients/phone/test/driver.ts (tests/phone/node.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import pytest

from clients.sdk import attachments as sdk_attachments
from protocol import envelope
from protocol.attachments import AttachmentDescriptor, decrypt_attachment, encrypt_attachment
from protocol.body import Body, BodyKind, RecordData, decode_body, encode_body
from protocol.canonical import b64url_decode, b64url_encode
from protocol.certs import verify_chain
from protocol.consent import check_consent, verify_consent_token
from protocol.frames import Deliver
from protocol.keys import MemoryPrekeyStore
from protocol.model import MessageHeader, Priority, Purpose
from protocol.vectors import ORG_ID, T0, Party, VectorContext, build_context
from tests.consent_world import sdk, xray_png
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.node import run_driver
from tests.relay_world import Peer, connect, peer, thread

ORTHO = "orthopaedics_oncall"
TEXT = "Query scaphoid fracture, please review"


def b64(data: bytes) -> str:
    return b64url_encode(data)


@pytest.fixture(scope="module")
def ctx() -> VectorContext:
    return build_context()


def trusted(ctx: VectorContext) -> dict[str, str]:
    return {ORG_ID: b64(ctx.org.public)}


def recipient(p: Party, *, one_time: bool) -> dict[str, Any]:
    return {"user_certificate": p.user_token, "device_certificate": p.device_token,
            "signed_prekey": p.signed_prekey_token,
            "one_time_prekey": p.one_time_prekey_tokens[0] if one_time else None}


def device_secrets(p: Party) -> dict[str, Any]:
    return {"device_id": p.device_keys.device_id,
            "signing_seed": b64(p.device_keys.signing.seed.reveal()),
            "dh_secret": b64(p.device_keys.dh.secret.reveal()),
            "signed_prekeys": [{"id": p.signed_prekey.prekey_id,
                                "secret": b64(p.signed_prekey.keypair.secret.reveal())}],
            "one_time_prekeys": [{"id": k.prekey_id, "secret": b64(k.keypair.secret.reveal())}
                                 for k in p.one_time_prekeys]}


def header(sender: Party, recipients: list[Party], **extra: Any) -> dict[str, Any]:
    return {"v": 1, "message_id": str(uuid.uuid4()), "thread_id": str(uuid.uuid4()),
            "sender_user_id": sender.user.user_id, "sender_device_id": sender.device.device_id,
            "sent_at": T0, "purpose": "direct_care", "priority": "urgent", "consent_id": None,
            "attachment_ids": [], "recipient_devices": [r.device.device_id for r in recipients],
            **extra}


def test_a_message_and_an_image_sealed_on_the_phone_open_in_python(ctx: VectorContext) -> None:
    image = xray_png(120, 96)
    enc = run_driver({"op": "encrypt_attachment", "plaintext": b64(image)})
    aid = str(uuid.uuid4())
    body = {"text": TEXT, "attachments": [{
        "attachment_id": aid, "key": enc["key"], "sha256": enc["sha256"], "size": enc["size"],
        "media_type": "image/png", "width": 120, "height": 96}],
        "record": {"patient_name": "Doe^Jane", "patient_id": "MRN123", "issuer_of_patient_id": "",
                   "birth_date": None, "sex": "F", "accession_number": "", "anatomic_region": "",
                   "study_description": "", "capture": "film"},
        "quality_warnings": ["glare"]}
    sealed_b64 = run_driver({
        "op": "seal", "sender": device_secrets(ctx.alice), "trusted": trusted(ctx), "at": T0,
        "recipients": [recipient(ctx.bob, one_time=True), recipient(ctx.gateway, one_time=False)],
        "header": header(ctx.alice, [ctx.bob, ctx.gateway], attachment_ids=[aid]),
        "body": body})["sealed"]
    sealed = envelope.decode_sealed(b64url_decode(sealed_b64))
    sender = verify_chain(ctx.alice.user_token, ctx.alice.device_token,
                          trusted_orgs=ctx.trusted_orgs, at=T0, revocations=None)
    for me in (ctx.bob, ctx.gateway):
        store = MemoryPrekeyStore(signed=[me.signed_prekey], one_time=me.one_time_prekeys)
        opened = decode_body(envelope.open_message(
            sealed, me=me.device_keys, prekeys=store, sender=sender,
            seen=envelope.MemorySeenSet()))
        assert opened.text == TEXT and opened.quality_warnings == ["glare"]
        assert opened.record is not None and opened.record.patient_id == "MRN123"
        (d,) = opened.attachments
        assert (d.attachment_id, d.media_type, d.width, d.height) == (aid, "image/png", 120, 96)
        clear = decrypt_attachment(b64url_decode(enc["ciphertext"]), d.key,
                                   expected_sha256=d.sha256, expected_size=d.size)
        assert clear == image


def test_a_message_and_an_image_sealed_in_python_open_on_the_phone(ctx: VectorContext) -> None:
    image = xray_png(64, 64, seed=3)
    enc = encrypt_attachment(image)
    aid = str(uuid.uuid4())
    body = encode_body(Body(kind=BodyKind.TEXT, text=TEXT, subject="Wrist",
                            attachments=[enc.descriptor(aid, "image/png", width=64, height=64)],
                            record=RecordData(patient_name="Doe^Jane", patient_id="MRN123")))
    hdr = MessageHeader(v=1, message_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()),
                        sender_user_id=ctx.bob.user.user_id,
                        sender_device_id=ctx.bob.device.device_id, sent_at=T0,
                        purpose=Purpose.DIRECT_CARE, priority=Priority.ROUTINE, consent_id=None,
                        attachment_ids=[aid], recipient_devices=[ctx.alice.device.device_id])
    alice = verify_chain(ctx.alice.user_token, ctx.alice.device_token,
                         trusted_orgs=ctx.trusted_orgs, at=T0, revocations=None)
    sealed = envelope.seal_message(hdr, body, sender=ctx.bob.device_keys, recipients=[
        envelope.RecipientBundle.from_tokens(alice, ctx.alice.signed_prekey_token,
                                             ctx.alice.one_time_prekey_tokens[0])])
    command = {"op": "open", "me": device_secrets(ctx.alice), "trusted": trusted(ctx), "at": T0,
               "sender": {"user_certificate": ctx.bob.user_token,
                          "device_certificate": ctx.bob.device_token},
               "sealed": b64(envelope.encode_sealed(sealed)),
               "attachments": {aid: b64(enc.ciphertext)}}
    answer = run_driver(command)
    assert answer["body"]["text"] == TEXT and answer["body"]["subject"] == "Wrist"
    assert answer["body"]["record"]["patient_name"] == "Doe^Jane"
    assert b64url_decode(answer["images"][aid]) == image
    # The phone refuses the same message with one signature byte changed, and a sender that
    # is not the one the header names.
    bad = msgspec.structs.replace(sealed, signature=bytes([sealed.signature[0] ^ 1])
                                  + sealed.signature[1:])
    assert run_driver({**command, "sealed": b64(envelope.encode_sealed(bad))}) == {
        "error": "verification_failed"}
    assert run_driver({**command, "sender": {"user_certificate": ctx.gateway.user_token,
                                             "device_certificate": ctx.gateway.device_token}}
                      ) == {"error": "sender_mismatch"}


# --- against the real relay ----------------------------------------------------------------


def consent_claims(issuer: Peer, now: int, *, images: list[str], decision: str
                   ) -> dict[str, Any]:
    """The claims of a direct-care consent for the orthopaedic on-call role (PROTOCOL §7.2)."""
    return {"jti": str(uuid.uuid4()), "iss": issuer.user_id,
            "org": issuer.device.user.org.org_id, "patient": "pt-" + uuid.uuid4().hex[:16],
            "purposes": ["direct_care"],
            "recipients": {"users": [], "roles": [ORTHO], "orgs": [], "external": False},
            "images": images, "form_version": "2026.1", "decision": decision,
            "basis": "treatment_attestation", "permanence_statement_shown": True,
            "no_effect_on_care_statement_shown": True, "iat": now, "nbf": now,
            "exp": now + 3600}


def secrets_of(p: Peer) -> dict[str, Any]:
    d = p.device
    return {"device_id": d.device_id, "signing_seed": b64(d.keys.signing.seed.reveal()),
            "dh_secret": b64(d.keys.dh.secret.reveal())}


async def test_an_image_consult_sealed_and_consented_on_the_phone_is_accepted_and_opened(
        world: World) -> None:
    alice = await peer(world, "alice", roles=("intern",))
    bob = await peer(world, "bob", roles=(ORTHO,))
    org = {alice.device.user.org.org_id: b64(alice.device.user.org.key.public)}
    now = int(time.time())
    image = xray_png(160, 128, seed=9)
    enc = run_driver({"op": "encrypt_attachment", "plaintext": b64(image)})
    relay = await sdk(world, alice)
    try:
        aid = await sdk_attachments.upload(relay, b64url_decode(enc["ciphertext"]))
    finally:
        await relay.aclose()
    # The phone signs the consent with the intern's identity key; the relay registers it.
    claims = consent_claims(alice, now, images=[enc["sha256_hex"]], decision="agreed")
    jti = claims["jti"]
    token = run_driver({"op": "sign_consent", "claims": claims,
                        "identity_seed": b64(alice.device.user.identity.seed.reveal())})["token"]
    r = await world.call(alice.device, "POST", "/v1/consents", json={"token": token})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "active" and r.json()["consent_id"] == jti
    # The phone seals the consult (image, consent token, record data) to Bob's device.
    tid = await thread(world, alice, bob)
    body = {"text": TEXT, "consent_token": token, "attachments": [{
        "attachment_id": aid, "key": enc["key"], "sha256": enc["sha256"], "size": enc["size"],
        "media_type": "image/png", "width": 160, "height": 128}],
        "record": {"patient_name": "Doe^Jane", "patient_id": "MRN123", "issuer_of_patient_id": "",
                   "birth_date": None, "sex": "", "accession_number": "", "anatomic_region": "",
                   "study_description": "", "capture": "film"}}
    mid = str(uuid.uuid4())
    sealed_b64 = run_driver({
        "op": "seal", "sender": secrets_of(alice), "trusted": org, "at": now,
        "recipients": [{"user_certificate": bob.device.user.cert,
                        "device_certificate": bob.device.cert, "signed_prekey": bob.spk_token}],
        "header": {"v": 1, "message_id": mid, "thread_id": tid, "sender_user_id": alice.user_id,
                   "sender_device_id": alice.device_id, "sent_at": now, "purpose": "direct_care",
                   "priority": "urgent", "consent_id": jti, "attachment_ids": [aid],
                   "recipient_devices": [bob.device_id]},
        "body": body})["sealed"]
    a = await connect(world, alice)
    try:
        accepted = await a.send(envelope.decode_sealed(b64url_decode(sealed_b64)))
        assert not accepted.duplicate and accepted.thread_id == tid
    finally:
        await a.close()
    # Bob's Python client opens it, fetches the image through the SDK, and checks the consent.
    b = await connect(world, bob)
    try:
        while True:
            frame = await b.next_event(seconds(10))
            if isinstance(frame, Deliver):
                break
    finally:
        await b.close()
    assert frame.message.header.message_id == mid and frame.priority == Priority.URGENT
    sender = verify_chain(alice.device.user.cert, alice.device.cert,
                          trusted_orgs={alice.device.user.org.org_id:
                                        alice.device.user.org.key.public},
                          at=now, revocations=None)
    opened = decode_body(envelope.open_message(frame.message, me=bob.device.keys,
                                               prekeys=bob.prekeys, sender=sender,
                                               seen=envelope.MemorySeenSet()))
    (d,) = opened.attachments
    assert isinstance(d, AttachmentDescriptor) and opened.consent_token == token
    relay = await sdk(world, bob)
    try:
        blob = await sdk_attachments.download(relay, aid)
    finally:
        await relay.aclose()
    assert decrypt_attachment(blob, d.key, expected_sha256=d.sha256, expected_size=d.size) == image
    checked = verify_consent_token(token, alice.device.user.identity.public, at=now + 1)
    check_consent(checked, purpose=Purpose.DIRECT_CARE, sender=sender.user,
                  recipient=verify_chain(bob.device.user.cert, bob.device.cert,
                                         trusted_orgs=sender_trust(alice), at=now,
                                         revocations=None).user,
                  revoked=False, at=now + 1, images=[enc["sha256_hex"]])


def sender_trust(p: Peer) -> dict[str, bytes]:
    return {p.device.user.org.org_id: p.device.user.org.key.public}


async def test_a_consent_token_the_phone_signs_with_another_key_is_refused_by_the_relay(
        world: World) -> None:
    alice = await peer(world, "alice", roles=("intern",))
    bob = await peer(world, "bob", roles=(ORTHO,))
    now = int(time.time())
    claims = consent_claims(alice, now, images=[], decision="refused")
    forged = run_driver({"op": "sign_consent", "claims": claims,
                         "identity_seed": b64(bob.device.user.identity.seed.reveal())})["token"]
    r = await world.call(alice.device, "POST", "/v1/consents", json={"token": forged})
    assert r.status_code == 403 and r.json()["code"] == "consent_invalid", r.text
    # The same claims under the intern's own key: a refusal is registered like an agreement.
    token = run_driver({"op": "sign_consent", "claims": claims,
                        "identity_seed": b64(alice.device.user.identity.seed.reveal())})["token"]
    r = await world.call(alice.device, "POST", "/v1/consents", json={"token": token})
    assert r.status_code == 201 and r.json()["status"] == "refused", r.text
    assert run_driver({"op": "verify_consent", "token": token,
                       "identity_public": b64(bob.device.user.identity.public), "at": now}
                      ) == {"error": "consent_invalid"}
