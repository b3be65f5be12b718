"""clients/sdk/attachments.py: the recipient's consent check before an image is shown (the
token verifies under the issuer's identity key from a certificate our organisation key
signed, names the message's consent, records an agreement and names the image), each refusal
with its sentence and the reason reported to the relay; the sealed descriptor's checks on
decryption; and a resumed upload continuing from what a real relay (``world``) committed."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clients.sdk import attachments
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash
from clients.sdk.errors import ConsentImageMismatch
from clients.sdk.keystore import DeviceState
from protocol.attachments import AttachmentDescriptor
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.errors import VerificationError
from protocol.keys import OrganisationKey
from protocol.model import Purpose
from tests.clinician_world import enrol_clinician
from tests.identity_world import Org, User, World

pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

IMAGE = b"the film the patient was shown" * 100
ORG = Org("st-elsewhere")
ISSUER = ORG.user("issuer")


def _token(by: User = ISSUER, *, signer: User | None = None,
           decision: ConsentDecision = ConsentDecision.AGREED,
           consent_id: str = str(uuid.UUID(int=9))) -> tuple[str, int]:
    """A consent captured by ``by`` (signed with ``signer``'s identity key, default ``by``'s);
    returns the token and its issue time."""
    key = (signer or by).identity
    state = DeviceState(
        server_url="http://relay.test", login=by.login, user_id=by.user_id,
        org_id=by.org.org_id, org_public_key=by.org.key.public,
        identity_seed=key.seed.reveal(), device_id=str(uuid.UUID(int=4)), device_kind="mobile",
        device_seed=b"DEVICE-SEED-SECRET-32-BYTES!!!!!", dh_secret=b"D" * 32,
        user_certificate=by.cert, device_certificate="d.c")
    token, claims = capture_consent(state, ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[image_hash(IMAGE)], decision=decision,
        basis=ConsentBasis.TREATMENT_ATTESTATION, permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True, valid_for=3600), consent_id=consent_id)
    return token, claims.iat


def _check(token: str, *, image: bytes = IMAGE, certificate: str = ISSUER.cert,
           consent_id: str | None = str(uuid.UUID(int=9)), at: int | None = None,
           org_key: bytes = ORG.key.public) -> None:
    attachments.check_image_consent(hashlib.sha256(image).digest(), token,
                                    issuer_certificate=certificate,
                                    trusted_orgs={ORG.org_id: org_key}, consent_id=consent_id,
                                    at=at)


def _refused(token: str, **kw: Any) -> ConsentImageMismatch:
    with pytest.raises(ConsentImageMismatch) as err:
        _check(token, **kw)
    assert err.value.code == "consent_image_mismatch"
    return err.value


# -- the recipient's consent check ----------------------------------------------------------------


def test_an_image_the_agreed_consent_names_is_shown() -> None:
    token, _ = _token()
    _check(token)


def test_an_image_the_consent_does_not_name_is_refused_as_image_not_named() -> None:
    token, _ = _token()
    err = _refused(token, image=b"another film")
    assert (str(err), err.reason) == (
        "the image is not one the patient was shown and agreed to", "image_not_named")


def test_a_refusal_is_never_shown() -> None:
    token, _ = _token(decision=ConsentDecision.REFUSED)
    err = _refused(token)
    assert (str(err), err.reason) == ("the patient refused consent for these images",
                                      "token_invalid")


def test_a_token_for_another_consent_than_the_message_names_is_refused() -> None:
    token, _ = _token()
    assert str(_refused(token, consent_id=str(uuid.UUID(int=10)))) == (
        "the message names another consent than this token")


def test_an_issuer_certificate_our_organisation_did_not_sign_is_refused() -> None:
    token, _ = _token()
    err = _refused(token, org_key=OrganisationKey.generate().public)
    assert str(err).startswith("the consent does not verify (")


def test_a_token_not_signed_by_the_certificate_holder_is_refused() -> None:
    token, _ = _token(signer=ORG.user("someone-else"))
    assert str(_refused(token)).startswith("the consent does not verify (")


def test_a_certificate_of_another_user_is_not_the_issuer() -> None:
    other = ORG.user("other")
    token, _ = _token(by=ISSUER, signer=other)  # other's key, ISSUER's name
    assert str(_refused(token, certificate=other.cert)) == (
        "the consent was not issued by this certificate's holder")


def test_an_expired_consent_is_refused_after_a_minute_of_leeway() -> None:
    token, iat = _token()
    _check(token, at=iat + 3600 + 59)
    assert str(_refused(token, at=iat + 3600 + 60)).startswith("the consent does not verify (")


# -- decryption and upload ------------------------------------------------------------------------


async def test_decryption_checks_the_sealed_size_and_hash() -> None:
    encrypted = await attachments.encrypt(IMAGE)
    descriptor = AttachmentDescriptor(attachment_id=str(uuid.UUID(int=11)), key=encrypted.key,
                                      sha256=hashlib.sha256(IMAGE).digest(), size=len(IMAGE),
                                      media_type="image/png")
    assert await attachments.decrypt(encrypted.ciphertext, descriptor) == IMAGE
    wrongs: list[dict[str, Any]] = [dict(size=len(IMAGE) + 1),
                                    dict(sha256=hashlib.sha256(b"x").digest())]
    for wrong in wrongs:
        with pytest.raises(VerificationError):
            await attachments.decrypt(encrypted.ciphertext,
                                      msgspec.structs.replace(descriptor, **wrong))


async def test_a_resumed_upload_continues_from_what_the_relay_committed(
        world: World, tmp_path: Path) -> None:
    sender = await enrol_clinician(world, tmp_path, "sender")
    relay = sender.client.relay
    try:
        await sender.client.ensure_login()
        ciphertext = (await attachments.encrypt(IMAGE * 100)).ciphertext
        status = await relay.create_upload(len(ciphertext))
        first = await relay.put_chunk(status.attachment_id, 0, ciphertext[:status.chunk_size])
        assert 0 < first.committed < len(ciphertext)
        done = await attachments.upload(relay, ciphertext, attachment_id=status.attachment_id,
                                        backoff=0)
        assert done == status.attachment_id
        assert (await relay.upload_status(done)).committed == len(ciphertext)
    finally:
        await relay.aclose()
