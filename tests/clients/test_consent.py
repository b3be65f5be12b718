"""clients/sdk/consent.py: what a capture must say before it is signed, what the signed token
holds, and the sender's own check before an image leaves the device."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from clients.sdk.consent import (
    FORM_VERSION,
    ConsentCapture,
    capture_consent,
    ensure_sendable,
    fhir_consent,
    image_hash,
    new_patient_reference,
)
from clients.sdk.errors import FlowError
from clients.sdk.keystore import DeviceState
from protocol.consent import ConsentBasis, ConsentDecision, verify_consent_token
from protocol.keys import IdentityKey
from protocol.model import Purpose

NOW = 1_800_000_000
IDENTITY_SEED = b"IDENTITY-SEED-SECRET-32-BYTES!!!"
SHOWN = image_hash(b"the film the patient was shown")
OTHER = image_hash(b"another film")


def _state(*, identity: bool = True) -> DeviceState:
    return DeviceState(
        server_url="http://relay.test", login="alice",
        user_id="6f1c2a4e-0b7d-4c55-9a1e-2d3f4a5b6c7d", org_id="org.test",
        org_public_key=b"\x01" * 32, identity_seed=IDENTITY_SEED if identity else None,
        device_id="d" * 8, device_kind="mobile", device_seed=b"DEVICE-SEED-SECRET-32-BYTES!!!!!",
        dh_secret=b"DH-SECRET-SECRET-32-BYTES!!!!!!!", user_certificate="u.c",
        device_certificate="d.c")


def _capture(**changes: Any) -> ConsentCapture:
    base = ConsentCapture(
        purposes=[Purpose.DIRECT_CARE], images=[SHOWN], decision=ConsentDecision.AGREED,
        basis=ConsentBasis.TREATMENT_ATTESTATION, permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True)
    return dataclasses.replace(base, **changes)


def _refused(capture: ConsentCapture) -> FlowError:
    with pytest.raises(FlowError) as err:
        capture_consent(_state(), capture, now=NOW)
    return err.value


# -- what a capture must say --------------------------------------------------------------------


def test_a_capture_without_a_purpose_is_refused() -> None:
    err = _refused(_capture(purposes=[]))
    assert (err.code, str(err)) == ("validation_failed", "name at least one purpose")


def test_a_capture_must_name_the_images_shown() -> None:
    err = _refused(_capture(images=[]))
    assert (err.code, str(err)) == (
        "validation_failed", "a consent must name the images the patient was shown")


@pytest.mark.parametrize("shown", [dict(permanence_statement_shown=False),
                                   dict(no_effect_on_care_statement_shown=False)])
def test_a_decision_is_refused_until_both_statements_were_shown(shown: dict[str, bool]) -> None:
    err = _refused(_capture(**shown))
    assert err.code == "validation_failed"
    assert str(err).startswith("both statements (permanence, no effect on care) must be shown")


def test_purposes_beyond_direct_care_need_written_consent_to_agree() -> None:
    err = _refused(_capture(purposes=[Purpose.DIRECT_CARE, Purpose.TEACHING,
                                      Purpose.RESEARCH]))
    assert (err.code, str(err)) == (
        "consent_purpose", "research, teaching need the patient's written consent")


def test_a_refusal_to_teaching_needs_no_written_basis() -> None:
    _, claims = capture_consent(_state(), _capture(purposes=[Purpose.TEACHING],
                                                   decision=ConsentDecision.REFUSED), now=NOW)
    assert claims.decision is ConsentDecision.REFUSED


def test_written_consent_allows_teaching() -> None:
    _, claims = capture_consent(_state(), _capture(purposes=[Purpose.TEACHING],
                                                   basis=ConsentBasis.WRITTEN), now=NOW)
    assert claims.purposes == [Purpose.TEACHING]


def test_external_recipients_need_the_external_consult_purpose() -> None:
    err = _refused(_capture(external=True))
    assert (err.code, str(err)) == (
        "consent_external_requires_written",
        "external recipients need the external_consult purpose")


def test_only_the_device_holding_the_identity_key_signs_consent() -> None:
    with pytest.raises(FlowError) as err:
        capture_consent(_state(identity=False), _capture(), now=NOW)
    assert err.value.code == "forbidden"
    assert "identity key" in str(err.value)


# -- the signed token -----------------------------------------------------------------------------


def test_the_token_is_signed_by_the_identity_key_and_valid_for_the_capture_window() -> None:
    token, claims = capture_consent(_state(), _capture(valid_for=3600), now=NOW)
    public = IdentityKey.from_seed(IDENTITY_SEED).public
    assert verify_consent_token(token, public, at=NOW) == claims
    assert (claims.iat, claims.nbf, claims.exp) == (NOW, NOW, NOW + 3600)
    assert (claims.iss, claims.org) == (_state().user_id, "org.test")
    assert claims.form_version == FORM_VERSION


def test_repeated_purposes_and_images_are_named_once_in_first_order() -> None:
    capture = _capture(purposes=[Purpose.DIRECT_CARE, Purpose.DIRECT_CARE],
                       images=[OTHER, SHOWN, OTHER])
    _, claims = capture_consent(_state(), capture, now=NOW)
    assert claims.purposes == [Purpose.DIRECT_CARE]
    assert claims.images == [OTHER, SHOWN]


def test_the_patient_reference_is_random_unless_given() -> None:
    _, one = capture_consent(_state(), _capture(), now=NOW)
    _, two = capture_consent(_state(), _capture(), now=NOW)
    assert one.patient != two.patient
    assert one.patient.startswith("pt-") and len(new_patient_reference()) == 27
    _, given = capture_consent(_state(), _capture(patient_ref="pt-chosen"), now=NOW,
                               consent_id="0b9f7e52-8c1d-4f3a-b6e2-71a4c5d3e9f0")
    assert (given.patient, given.jti) == ("pt-chosen", "0b9f7e52-8c1d-4f3a-b6e2-71a4c5d3e9f0")


def test_the_fhir_resource_is_read_from_the_token() -> None:
    token, claims = capture_consent(_state(), _capture(), now=NOW)
    resource = fhir_consent(token)
    assert resource["resourceType"] == "Consent"
    assert claims.jti in msgspec.json.encode(resource).decode()


def test_the_image_hash_is_sha256_hex_of_exactly_the_bytes() -> None:
    assert image_hash(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


# -- the sender's own check -----------------------------------------------------------------------


def test_an_agreed_consent_sends_the_images_it_names_for_its_purpose() -> None:
    _, claims = capture_consent(_state(), _capture(images=[SHOWN, OTHER]), now=NOW)
    ensure_sendable(claims, Purpose.DIRECT_CARE, [OTHER, SHOWN])


def _unsendable(purpose: Purpose, images: list[str], **changes: Any) -> FlowError:
    _, claims = capture_consent(_state(), _capture(**changes), now=NOW)
    with pytest.raises(FlowError) as err:
        ensure_sendable(claims, purpose, images)
    return err.value


def test_nothing_is_sent_under_a_refusal() -> None:
    err = _unsendable(Purpose.DIRECT_CARE, [SHOWN], decision=ConsentDecision.REFUSED)
    assert (err.code, str(err)) == (
        "consent_refused", "the patient refused: these images cannot be sent")


def test_a_purpose_the_consent_does_not_name_is_refused() -> None:
    err = _unsendable(Purpose.TEACHING, [SHOWN])
    assert (err.code, str(err)) == ("consent_purpose", "the consent does not cover teaching")


def test_an_image_the_patient_was_not_shown_is_refused() -> None:
    err = _unsendable(Purpose.DIRECT_CARE, [SHOWN, OTHER])
    assert (err.code, str(err)) == (
        "consent_image_mismatch", "an image was not shown to the patient under this consent")
