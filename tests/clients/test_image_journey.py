"""The image journey with the SDK against a real relay: an intern captures consent for an x-ray,
encrypts and uploads it, and sends it to the on-call specialist, whose client downloads,
decrypts and checks it against the consent before showing it; an image the consent does not
name is refused by the recipient and reported; the consent exports to a valid FHIR R4 Consent;
the `lightbox consent capture` CLI; and a dump of the relay's whole database afterwards holds
neither the image, nor the message text, nor any patient identifier."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.consent import Consent

from clients.clinician import cli as device_cli
from clients.sdk import attachments as sdk_attachments
from clients.sdk.consent import (
    ConsentCapture,
    capture_consent,
    ensure_sendable,
    fhir_consent,
    image_hash,
    register_consent,
)
from clients.sdk.errors import ConsentImageMismatch, FlowError
from clients.sdk.imaging import prepare_image
from clients.sdk.keystore import KeyStore
from protocol.consent import ConsentBasis, ConsentDecision, peek_consent_token_unverified
from protocol.frames import Deliver
from protocol.model import Purpose
from tests.consent_world import (
    assert_blind,
    consent,
    count,
    descriptor_of,
    device_state,
    image_body,
    image_needles,
    patient_needles,
    sdk,
    seal_with,
    xray_png,
)
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World
from tests.relay_world import connect, opened, peer, thread

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

ORTHO = "orthopaedics_oncall"
TEXT = "Night shift: displaced distal radius fracture? Please review LBX urgently."


async def next_deliver(sock: object) -> Deliver:
    while True:
        frame = await sock.next_event(seconds(10))  # type: ignore[attr-defined]
        if isinstance(frame, Deliver):
            return frame


async def test_xray_with_consent_arrives_intact_and_the_relay_stays_blind(
        world: World, db_dsn: str) -> None:
    intern = await peer(world, "intern", roles=("intern",))
    specialist = await peer(world, "specialist", roles=(ORTHO,))
    xray = xray_png(800, 600)
    other = xray_png(320, 240, seed=7)
    assert len(xray) > 4 * 64 * 1024  # several chunks

    # 1. Consent, captured on the intern's enrolled device and registered.
    capture = ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(xray)],
        decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
        recipient_roles=[ORTHO], permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True)
    token, claims = capture_consent(device_state(world, intern), capture)
    a_http, b_http = await sdk(world, intern), await sdk(world, specialist)
    a = b = None
    try:
        info = await register_consent(a_http, token)
        assert info.status == "active"
        ensure_sendable(claims, Purpose.DIRECT_CARE, [image_hash(xray)])
        Consent.model_validate(fhir_consent(token))  # FHIR R4 (R4B model), for the record

        # 2. Encrypt off the loop, upload in chunks, seal the descriptor in the body, send.
        enc = await sdk_attachments.encrypt(xray)
        aid = await sdk_attachments.upload(a_http, enc.ciphertext)
        tid = await thread(world, intern, specialist, priority="urgent")
        a, b = await connect(world, intern), await connect(world, specialist)
        sealed = seal_with(intern, tid, [specialist],
                           image_body(TEXT, enc.descriptor(aid, "image/png", width=800,
                                                           height=600)),
                           consent_id=claims.jti, attachment_ids=[aid])
        await a.send(sealed)

        # 3. The specialist's client opens the body, fetches, decrypts and checks consent.
        d = await next_deliver(b)
        body = opened(specialist, intern, d.message)
        descriptor = descriptor_of(body)
        shown = await sdk_attachments.receive_image(
            b_http, descriptor, consent_id=claims.jti, message_id=sealed.header.message_id,
            sender_user_id=intern.user_id, sender_certificate=intern.device.user.cert,
            trusted_orgs={world.org.org_id: world.org.key.public})
        assert shown == xray
        assert hashlib.sha256(shown).digest() == descriptor.sha256
        await b.ack([d.delivery_id])

        # 4. The same token reused for an image it does not name: the relay cannot see image
        #    hashes, so it delivers; the recipient refuses to show it and reports it.
        enc2 = await sdk_attachments.encrypt(other)
        aid2 = await sdk_attachments.upload(a_http, enc2.ciphertext)
        reused = seal_with(intern, tid, [specialist],
                           image_body("and this one", enc2.descriptor(aid2, "image/png")),
                           consent_id=claims.jti, attachment_ids=[aid2])
        await a.send(reused)
        d2 = await next_deliver(b)
        with pytest.raises(ConsentImageMismatch) as err:
            await sdk_attachments.receive_image(
                b_http, descriptor_of(opened(specialist, intern, d2.message)),
                consent_id=claims.jti, message_id=reused.header.message_id,
                sender_user_id=intern.user_id, sender_certificate=intern.device.user.cert,
                trusted_orgs={world.org.org_id: world.org.key.public})
        assert err.value.code == "consent_image_mismatch"
        assert err.value.reason == "image_not_named"
        await b.ack([d2.delivery_id])
        assert await count(world, "SELECT count(*) FROM audit_log WHERE event = $1",
                           "consent.image_mismatch") == 1
    finally:
        for s in (a, b):
            if s is not None:
                await s.close()
        await a_http.aclose()
        await b_http.aclose()

    # 5. The relay is blind: dump every table and search it.
    searched = await assert_blind(db_dsn, {
        **image_needles(xray), **image_needles(other), **patient_needles(TEXT, "and this one"),
        "plaintext sha256": hashlib.sha256(xray).digest(),
        "attachment key": enc.key, "second attachment key": enc2.key},
        controls=(aid.encode(), claims.patient.encode(), enc.ciphertext[1000:1048]))
    assert searched > 100


# --- recipient-side checks, directly -------------------------------------------------------


async def test_recipient_refuses_tokens_that_do_not_verify_or_do_not_name_the_image(
        world: World) -> None:
    alice = await peer(world, "alice", roles=("intern",))
    bob = await peer(world, "bob", roles=(ORTHO,))
    image = b"an image the patient saw"
    token, cid = consent(world, alice, [image], roles=(ORTHO,))
    trusted = {world.org.org_id: world.org.key.public}
    digest = hashlib.sha256(image).digest()
    cert = alice.device.user.cert
    claims = sdk_attachments.check_image_consent(digest, token, issuer_certificate=cert,
                                                 trusted_orgs=trusted, consent_id=cid)
    assert claims.jti == cid
    cases: list[dict[str, Any]] = [
        dict(image_sha256=hashlib.sha256(b"another").digest()),  # not named
        dict(issuer_certificate=bob.device.user.cert),  # signed by someone else
        dict(trusted_orgs={world.org.org_id: bytes(32)}),  # chain does not verify
        dict(consent_id="00000000-0000-4000-8000-000000000000"),  # another consent
        dict(at=int(time.time()) + 10 * 86400),  # expired
    ]
    for change in cases:
        args: dict[str, Any] = {"image_sha256": digest, "issuer_certificate": cert,
                                "trusted_orgs": trusted, "consent_id": cid, **change}
        digest_arg = args.pop("image_sha256")
        with pytest.raises(ConsentImageMismatch):
            sdk_attachments.check_image_consent(digest_arg, token, **args)
    refused_token, _ = consent(world, alice, [image], roles=(ORTHO,),
                               decision=ConsentDecision.REFUSED)
    with pytest.raises(ConsentImageMismatch):
        sdk_attachments.check_image_consent(digest, refused_token, issuer_certificate=cert,
                                            trusted_orgs=trusted)
    with pytest.raises(FlowError) as err:
        ensure_sendable(peek_consent_token_unverified(refused_token), Purpose.DIRECT_CARE,
                        [image_hash(image)])
    assert err.value.code == "consent_refused"
    with pytest.raises(FlowError) as err:
        ensure_sendable(claims, Purpose.DIRECT_CARE, [image_hash(b"other")])
    assert err.value.code == "consent_image_mismatch"


async def test_capture_requires_statements_identity_key_and_written_basis(
        world: World) -> None:
    alice = await peer(world, "alice", roles=("intern",))
    base: dict[str, Any] = dict(purposes=[Purpose.DIRECT_CARE], images=[image_hash(b"i")],
                decision=ConsentDecision.AGREED, basis=ConsentBasis.TREATMENT_ATTESTATION,
                permanence_statement_shown=True, no_effect_on_care_statement_shown=True)
    changes: list[tuple[dict[str, Any], str]] = [
        (dict(permanence_statement_shown=False), "validation_failed"),
        (dict(no_effect_on_care_statement_shown=False), "validation_failed"),
        (dict(images=[]), "validation_failed"),
        (dict(purposes=[Purpose.RESEARCH]), "consent_purpose"),
        (dict(external=True), "consent_external_requires_written"),
    ]
    for change, code in changes:
        with pytest.raises(FlowError) as err:
            capture_consent(device_state(world, alice), ConsentCapture(**{**base, **change}))
        assert err.value.code == code, change
    with pytest.raises(FlowError) as err:  # a linked device holds no identity key
        capture_consent(device_state(world, alice, with_identity=False),
                        ConsentCapture(**base))
    assert err.value.code == "forbidden"
    _, claims = capture_consent(device_state(world, alice), ConsentCapture(**base))
    assert claims.patient.startswith("pt-") and claims.iss == alice.user_id
    refusal = capture_consent(device_state(world, alice), ConsentCapture(
        **{**base, "decision": ConsentDecision.REFUSED}))[0]
    resource = Consent.model_validate(fhir_consent(refusal))
    assert resource.status == "rejected"


# --- CLI ----------------------------------------------------------------------------------


async def test_cli_consent_capture_signs_registers_and_exports_fhir(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = await peer(world, "alice", roles=("intern",))
    await peer(world, "bob", roles=(ORTHO,))  # the role the consent names is held
    home = tmp_path / "devices"
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.setenv("LIGHTBOX_INSECURE_FAST_KDF", "1")
    monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
    KeyStore.for_profile("phone", home=home).create(device_state(world, alice), PASSWORD)
    image = tmp_path / "xray.png"
    image.write_bytes(xray_png(64, 64))
    argv = ["--profile", "phone", "consent", "capture", "--image", str(image),
            "--purpose", "direct_care", "--role", ORTHO, "--decision", "agreed",
            "--statements-shown", "--yes", "--token-out", str(tmp_path / "token"),
            "--fhir", str(tmp_path / "consent.json")]

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = device_cli.main(argv)
        return rc, out.getvalue(), err.getvalue()

    rc, out, err = await asyncio.to_thread(run)
    assert rc == 0, out + err
    assert "agreed (relay: active)" in out
    token = (tmp_path / "token").read_text().strip()
    claims = peek_consent_token_unverified(token)
    # the consent names the sanitised image that `lightbox send` will encrypt, not the file
    assert claims.images == [image_hash(prepare_image(image.read_bytes()).image.data)]
    assert claims.images != [image_hash(image.read_bytes())]
    Consent.model_validate(json.loads((tmp_path / "consent.json").read_text()))
    assert await count(world, "SELECT count(*) FROM consents") == 1
    argv[argv.index("--statements-shown")] = "--external"
    rc, _, err = await asyncio.to_thread(run)
    assert rc == 1 and "validation_failed" in err  # statements not shown: nothing signed
