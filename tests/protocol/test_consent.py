"""Tests of protocol/consent.py: consent tokens, the docs/ARCHITECTURE.md §5 policy, and the FHIR
mapping."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.consent import Consent

from protocol.certs import AccountKind, Licence, UserCertificate
from protocol.consent import (
    CONSENT_TOKEN_TYPE,
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    ConsentPolicy,
    ConsentRecipients,
    check_consent,
    consent_vectors,
    issue_consent_token,
    peek_consent_token_unverified,
    to_fhir_consent,
    verify_consent_token,
)
from protocol.errors import DecodeError, ErrorCode, PolicyDenied, VerificationError
from protocol.keys import Ed25519KeyPair, SecretBytes, key_id
from protocol.model import Purpose

ISSUER_KEY = Ed25519KeyPair.from_seed(b"\x11" * 32)
OTHER_KEY = Ed25519KeyPair.from_seed(b"\x22" * 32)
SEED = ISSUER_KEY.seed.reveal()
T0 = 1_767_225_600
ORG = "st-elsewhere.example"
OTHER_ORG = "county-general.example"
INTERN = "a0000000-0000-4000-8000-000000000001"
ORTHO = "a0000000-0000-4000-8000-000000000002"
STRANGER = "a0000000-0000-4000-8000-000000000003"
GATEWAY = "a0000000-0000-4000-8000-000000000004"
EXTERNAL = "a0000000-0000-4000-8000-000000000005"
IMAGE = "ab" * 32
OTHER_IMAGE = "cd" * 32


def claims(**changes: Any) -> ConsentClaims:
    base = ConsentClaims(
        jti="c0000000-0000-4000-8000-000000000001",
        iss=INTERN,
        org=ORG,
        patient="pt-7f3a9c",
        purposes=[Purpose.DIRECT_CARE],
        recipients=ConsentRecipients(
            users=[], roles=["orthopaedics_oncall"], orgs=[], external=False
        ),
        images=[IMAGE],
        form_version="2026.1",
        decision=ConsentDecision.AGREED,
        basis=ConsentBasis.TREATMENT_ATTESTATION,
        permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True,
        iat=T0,
        nbf=T0,
        exp=T0 + 86400,
    )
    return msgspec.structs.replace(base, **changes)


def cert(
    user_id: str,
    *,
    org: str = ORG,
    roles: tuple[str, ...] = (),
    kind: AccountKind = AccountKind.CLINICIAN,
) -> UserCertificate:
    return UserCertificate(
        v=1,
        serial=user_id,
        user_id=user_id,
        org_id=org,
        display_name="Dr Test",
        account_kind=kind,
        roles=list(roles),
        specialty=None,
        department=None,
        licence=Licence(type="GMC", number="1234567", jurisdiction="UK", expires_at=T0 * 2)
        if kind is AccountKind.CLINICIAN
        else None,
        identity_key=b"\x00" * 32,
        not_before=0,
        not_after=T0 * 2,
        issued_at=0,
    )


SENDER = cert(INTERN, roles=("intern",))
SPECIALIST = cert(ORTHO, roles=("orthopaedics_oncall",))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: bytes, signature: bytes = b"") -> str:
    head = b64(json.dumps(header, separators=(",", ":")).encode())
    return f"{head}.{b64(payload)}.{b64(signature)}"


def sign_raw(
    payload: bytes, *, headers: dict[str, Any] | None = None, key: Ed25519KeyPair = ISSUER_KEY
) -> str:
    """A token over arbitrary payload bytes, signed properly by ``key``."""
    return jwt.PyJWS().encode(
        payload,
        Ed25519PrivateKey.from_private_bytes(key.seed.reveal()),
        algorithm="EdDSA",
        headers=headers or {"typ": CONSENT_TOKEN_TYPE, "kid": key_id(key.public)},
    )


def verify_code(token: str, at: int = T0 + 10, key: bytes = ISSUER_KEY.public) -> ErrorCode:
    with pytest.raises(VerificationError) as info:
        verify_consent_token(token, key, at=at)
    return info.value.code


def check_args(**kw: Any) -> dict[str, Any]:
    """check_consent's arguments for the sender's direct-care send to the specialist, unrevoked,
    just after issue; ``kw`` changes any of them."""
    return {
        "purpose": Purpose.DIRECT_CARE,
        "sender": SENDER,
        "recipient": SPECIALIST,
        "revoked": False,
        "at": T0 + 10,
    } | kw


def denial(c: ConsentClaims, **kw: Any) -> ErrorCode:
    with pytest.raises(PolicyDenied) as info:
        check_consent(c, **check_args(**kw))
    return info.value.code


def allow(c: ConsentClaims, **kw: Any) -> None:
    check_consent(c, **check_args(**kw))


# --- issue and verify ----------------------------------------------------------------------------


def test_issued_token_verifies_to_the_same_claims() -> None:
    token = issue_consent_token(claims(), SEED)
    assert verify_consent_token(token, ISSUER_KEY.public, at=T0 + 10) == claims()


def test_token_header_is_eddsa_with_our_type_and_the_issuer_key_id() -> None:
    header = jwt.get_unverified_header(issue_consent_token(claims(), SEED))
    assert header == {"alg": "EdDSA", "kid": ISSUER_KEY.key_id, "typ": "lightbox-consent+jwt"}


def test_issuing_is_deterministic_and_accepts_a_secret_wrapper() -> None:
    assert issue_consent_token(claims(), SEED) == issue_consent_token(claims(), SecretBytes(SEED))


def test_tampered_signature_is_invalid() -> None:
    token = issue_consent_token(claims(), SEED)
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    assert verify_code(f"{head}.{payload}.{b64(bytes(raw))}") is ErrorCode.CONSENT_INVALID


def test_tampered_claims_are_invalid() -> None:
    head, _, sig = issue_consent_token(claims(), SEED).split(".")
    other = b64(msgspec.json.encode(claims(purposes=[Purpose.RESEARCH])))
    assert verify_code(f"{head}.{other}.{sig}") is ErrorCode.CONSENT_INVALID


def test_token_signed_by_another_key_is_invalid() -> None:
    token = issue_consent_token(claims(), OTHER_KEY.seed.reveal())
    assert verify_code(token) is ErrorCode.CONSENT_INVALID


def test_token_signed_by_another_key_claiming_our_kid_is_invalid() -> None:
    headers = {"typ": CONSENT_TOKEN_TYPE, "kid": ISSUER_KEY.key_id}
    token = sign_raw(msgspec.json.encode(claims()), headers=headers, key=OTHER_KEY)
    assert verify_code(token) is ErrorCode.CONSENT_INVALID


def test_alg_none_is_refused() -> None:
    header = {"alg": "none", "kid": ISSUER_KEY.key_id, "typ": CONSENT_TOKEN_TYPE}
    assert verify_code(forge(header, msgspec.json.encode(claims()))) is ErrorCode.CONSENT_INVALID


def test_alg_none_is_refused_even_with_a_lying_header() -> None:
    header = {"alg": "EdDSA", "kid": ISSUER_KEY.key_id, "typ": CONSENT_TOKEN_TYPE}
    assert verify_code(forge(header, msgspec.json.encode(claims()))) is ErrorCode.CONSENT_INVALID


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    token = jwt.PyJWS().encode(
        msgspec.json.encode(claims()),
        ISSUER_KEY.public,
        algorithm="HS256",
        headers={"typ": CONSENT_TOKEN_TYPE, "kid": ISSUER_KEY.key_id},
    )
    assert verify_code(token) is ErrorCode.CONSENT_INVALID


def test_expired_token_is_consent_expired() -> None:
    token = issue_consent_token(claims(), SEED)
    assert verify_code(token, at=T0 + 86400) is ErrorCode.CONSENT_EXPIRED


def test_not_yet_valid_token_is_consent_expired() -> None:
    token = issue_consent_token(claims(nbf=T0 + 100), SEED)
    assert verify_code(token, at=T0 + 99) is ErrorCode.CONSENT_EXPIRED
    assert verify_consent_token(token, ISSUER_KEY.public, at=T0 + 100).nbf == T0 + 100


def test_leeway_widens_the_validity_window() -> None:
    token = issue_consent_token(claims(), SEED)
    assert verify_consent_token(token, ISSUER_KEY.public, at=T0 + 86400, leeway=5)


def test_unknown_claim_is_invalid() -> None:
    payload = msgspec.json.encode(msgspec.to_builtins(claims()) | {"mrn": "123"})
    assert verify_code(sign_raw(payload)) is ErrorCode.CONSENT_INVALID


def test_missing_claim_is_invalid() -> None:
    body = msgspec.to_builtins(claims())
    del body["images"]
    assert verify_code(sign_raw(msgspec.json.encode(body))) is ErrorCode.CONSENT_INVALID


def test_mistyped_claim_is_invalid() -> None:
    body = msgspec.to_builtins(claims()) | {"exp": "tomorrow"}
    assert verify_code(sign_raw(msgspec.json.encode(body))) is ErrorCode.CONSENT_INVALID


def test_claims_with_exp_before_nbf_are_invalid() -> None:
    body = msgspec.to_builtins(claims()) | {"exp": T0 - 1}
    assert verify_code(sign_raw(msgspec.json.encode(body))) is ErrorCode.CONSENT_INVALID
    with pytest.raises(ValueError, match="exp"):
        claims(exp=T0)


def test_other_token_type_is_invalid() -> None:
    token = sign_raw(
        msgspec.json.encode(claims()), headers={"typ": "JWT", "kid": ISSUER_KEY.key_id}
    )
    assert verify_code(token) is ErrorCode.CONSENT_INVALID


def test_extra_header_parameter_is_invalid() -> None:
    headers = {"typ": CONSENT_TOKEN_TYPE, "kid": ISSUER_KEY.key_id, "jku": "https://evil"}
    assert verify_code(sign_raw(msgspec.json.encode(claims()), headers=headers)) is (
        ErrorCode.CONSENT_INVALID
    )


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c", "x" * 20_000, "...."])
def test_garbage_tokens_are_invalid(token: str) -> None:
    assert verify_code(token) is ErrorCode.CONSENT_INVALID


def test_wrong_length_issuer_key_is_invalid() -> None:
    token = issue_consent_token(claims(), SEED)
    assert verify_code(token, key=b"\x01" * 31) is ErrorCode.CONSENT_INVALID


def test_peek_reads_claims_without_a_key_and_without_checking_the_signature() -> None:
    token = issue_consent_token(claims(), OTHER_KEY.seed.reveal())
    assert peek_consent_token_unverified(token).iss == INTERN


def test_peek_is_strict_about_claims() -> None:
    payload = msgspec.json.encode(msgspec.to_builtins(claims()) | {"extra": 1})
    with pytest.raises(DecodeError) as info:
        peek_consent_token_unverified(sign_raw(payload))
    assert info.value.code is ErrorCode.CONSENT_INVALID
    with pytest.raises(DecodeError):
        peek_consent_token_unverified("not-a-token")


# --- policy --------------------------------------------------------------------------------------


def test_direct_care_to_a_covered_role_in_the_same_org_is_allowed() -> None:
    allow(claims(), images=[IMAGE])


def test_recipient_named_by_user_id_or_org_is_covered() -> None:
    stranger = cert(STRANGER, roles=("nurse",))
    recipients = ConsentRecipients(users=[STRANGER], roles=[], orgs=[], external=False)
    allow(claims(recipients=recipients), recipient=stranger)
    recipients = ConsentRecipients(users=[], roles=[], orgs=[ORG], external=False)
    allow(claims(recipients=recipients), recipient=stranger)


def test_revoked_consent_is_denied_first() -> None:
    c = claims(decision=ConsentDecision.REFUSED)
    assert denial(c, revoked=True, at=T0 + 10**6) is ErrorCode.CONSENT_REVOKED


def test_expired_consent_is_denied_before_refusal() -> None:
    c = claims(decision=ConsentDecision.REFUSED)
    assert denial(c, at=T0 + 86400 + 60) is ErrorCode.CONSENT_EXPIRED
    assert denial(claims(), at=T0 - 61) is ErrorCode.CONSENT_EXPIRED


def test_clock_skew_tolerates_a_minute_by_default() -> None:
    allow(claims(), at=T0 - 60)
    allow(claims(), at=T0 + 86400 + 59)


def test_policy_max_validity_caps_a_long_token() -> None:
    policy = ConsentPolicy(max_validity=3600, clock_skew=0)
    allow(claims(), policy=policy, at=T0 + 3599)
    assert denial(claims(), policy=policy, at=T0 + 3600) is ErrorCode.CONSENT_EXPIRED


def test_refused_consent_is_denied() -> None:
    assert denial(claims(decision=ConsentDecision.REFUSED)) is ErrorCode.CONSENT_REFUSED


def test_purpose_not_named_is_denied() -> None:
    assert denial(claims(), purpose=Purpose.RESEARCH) is ErrorCode.CONSENT_PURPOSE


@pytest.mark.parametrize("purpose", [Purpose.TEACHING, Purpose.PUBLICATION, Purpose.RESEARCH])
def test_secondary_use_needs_written_consent_naming_it(purpose: Purpose) -> None:
    attested = claims(purposes=[Purpose.DIRECT_CARE, purpose])
    assert denial(attested, purpose=purpose) is ErrorCode.CONSENT_PURPOSE
    allow(claims(purposes=[purpose], basis=ConsentBasis.WRITTEN), purpose=purpose)


def test_recipient_not_covered_is_out_of_scope() -> None:
    stranger = cert(STRANGER, roles=("dermatology_oncall",))
    assert denial(claims(), recipient=stranger) is ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE


def test_external_recipient_without_written_consent_is_denied() -> None:
    external = cert(EXTERNAL, org=OTHER_ORG)
    recipients = ConsentRecipients(users=[EXTERNAL], roles=[], orgs=[], external=True)
    c = claims(recipients=recipients, purposes=[Purpose.DIRECT_CARE, Purpose.EXTERNAL_CONSULT])
    assert denial(c, recipient=external) is ErrorCode.CONSENT_EXTERNAL_REQUIRES_WRITTEN


def test_external_recipient_needs_external_consult_and_the_external_flag() -> None:
    external = cert(EXTERNAL, org=OTHER_ORG)
    written = {"basis": ConsentBasis.WRITTEN, "purposes": [Purpose.EXTERNAL_CONSULT]}
    flag_off = ConsentRecipients(users=[EXTERNAL], roles=[], orgs=[], external=False)
    flag_on = ConsentRecipients(users=[EXTERNAL], roles=[], orgs=[], external=True)
    kw = {"recipient": external, "purpose": Purpose.EXTERNAL_CONSULT}
    assert denial(claims(recipients=flag_off, **written), **kw) is (
        ErrorCode.CONSENT_EXTERNAL_REQUIRES_WRITTEN
    )
    no_purpose = claims(recipients=flag_on, basis=ConsentBasis.WRITTEN)
    assert denial(no_purpose, recipient=external) is ErrorCode.CONSENT_EXTERNAL_REQUIRES_WRITTEN
    allow(claims(recipients=flag_on, **written), **kw)


def test_a_role_does_not_cover_a_namesake_role_in_another_org() -> None:
    namesake = cert(EXTERNAL, org=OTHER_ORG, roles=("orthopaedics_oncall",))
    recipients = ConsentRecipients(users=[], roles=["orthopaedics_oncall"], orgs=[], external=True)
    c = claims(
        recipients=recipients, basis=ConsentBasis.WRITTEN, purposes=[Purpose.EXTERNAL_CONSULT]
    )
    kw = {"recipient": namesake, "purpose": Purpose.EXTERNAL_CONSULT}
    assert denial(c, **kw) is ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE


def test_image_not_named_by_the_consent_is_denied() -> None:
    assert denial(claims(), images=[IMAGE, OTHER_IMAGE]) is ErrorCode.CONSENT_IMAGE_MISMATCH


def test_record_gateway_of_the_issuer_org_is_covered_for_filing_under_either_basis() -> None:
    gateway = cert(GATEWAY, roles=("record_gateway",), kind=AccountKind.SERVICE)
    allow(claims(), recipient=gateway, images=[IMAGE])
    written = claims(basis=ConsentBasis.WRITTEN, purposes=[Purpose.EXTERNAL_CONSULT])
    allow(written, recipient=gateway, purpose=Purpose.EXTERNAL_CONSULT)


def test_gateway_exemption_needs_a_service_account_of_the_issuer_org_and_a_care_purpose() -> None:
    foreign = cert(GATEWAY, org=OTHER_ORG, roles=("record_gateway",), kind=AccountKind.SERVICE)
    assert denial(claims(), recipient=foreign) is ErrorCode.CONSENT_EXTERNAL_REQUIRES_WRITTEN
    impostor = cert(GATEWAY, roles=("record_gateway",))  # a clinician claiming the role
    assert (
        denial(
            claims(recipients=ConsentRecipients(users=[], roles=[], orgs=[], external=False)),
            recipient=impostor,
        )
        is ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE
    )
    gateway = cert(GATEWAY, roles=("record_gateway",), kind=AccountKind.SERVICE)
    teaching = claims(basis=ConsentBasis.WRITTEN, purposes=[Purpose.TEACHING])
    assert denial(teaching, recipient=gateway, purpose=Purpose.TEACHING) is (
        ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE
    )


def test_forwarding_to_a_new_recipient_needs_the_consent_to_cover_them() -> None:
    stranger = cert(STRANGER, roles=("nurse",))
    assert denial(claims(), sender=SPECIALIST, recipient=stranger) is (
        ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE
    )
    colleague = cert(STRANGER, roles=("orthopaedics_oncall",))
    allow(claims(), sender=SPECIALIST, recipient=colleague)


def test_a_sender_outside_the_consent_cannot_pass_it_on() -> None:
    stranger = cert(STRANGER, roles=("nurse",))
    assert denial(claims(), sender=stranger) is ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE


def test_issuer_is_always_covered_as_a_recipient() -> None:
    allow(claims(), sender=SPECIALIST, recipient=SENDER)


def test_policy_cannot_widen_treatment_attestation_beyond_direct_care() -> None:
    with pytest.raises(ValueError, match="direct care"):
        ConsentPolicy(attestation_purposes=frozenset({Purpose.DIRECT_CARE, Purpose.TEACHING}))


def test_policy_may_require_written_consent_even_for_direct_care() -> None:
    strict = ConsentPolicy(attestation_purposes=frozenset())
    assert denial(claims(), policy=strict) is ErrorCode.CONSENT_PURPOSE
    allow(claims(basis=ConsentBasis.WRITTEN), policy=strict)


def test_policy_loads_strictly_from_configuration() -> None:
    policy = msgspec.json.decode(b'{"max_validity": 600, "clock_skew": 0}', type=ConsentPolicy)
    assert policy.max_validity == 600
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"attestation_purposes": ["teaching"]}', type=ConsentPolicy)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"unknown": 1}', type=ConsentPolicy)


# --- FHIR ----------------------------------------------------------------------------------------


def test_agreed_consent_maps_to_a_valid_active_permit_fhir_consent() -> None:
    resource = to_fhir_consent(claims())
    # Any: the model's fields are all optional; the asserts below are the checks.
    consent: Any = Consent.model_validate(resource)
    assert consent.status == "active"
    assert consent.provision.type == "permit"
    assert consent.patient.identifier.value == "pt-7f3a9c"
    assert consent.provision.data[0].reference.identifier.value == IMAGE
    assert consent.identifier[0].value == f"urn:uuid:{claims().jti}"
    assert consent.sourceReference.identifier.value == f"urn:uuid:{claims().jti}"
    assert consent.policyRule.coding[0].code == "treatment_attestation"
    assert {c.code for c in consent.provision.purpose} == {"direct_care", "TREAT"}
    assert str(consent.provision.period.start).startswith("2026-01-01")


def test_refused_consent_maps_to_a_rejected_deny_fhir_consent() -> None:
    c = claims(
        decision=ConsentDecision.REFUSED,
        images=[],
        recipients=ConsentRecipients(
            users=[ORTHO], roles=["x_role"], orgs=[OTHER_ORG], external=True
        ),
    )
    consent: Any = Consent.model_validate(to_fhir_consent(c))
    assert consent.status == "rejected"
    assert consent.provision.type == "deny"
    types = [a.reference.type for a in consent.provision.actor]
    assert types == ["Practitioner", "PractitionerRole", "Organization"]
    assert consent.provision.data is None


def test_fhir_consent_carries_no_phi_beyond_the_opaque_reference() -> None:
    text = json.dumps(to_fhir_consent(claims()))
    assert "pt-7f3a9c" in text
    assert '"name"' not in text
    assert "birthDate" not in text


# --- vectors -------------------------------------------------------------------------------------


def test_consent_vectors_are_deterministic_and_self_consistent() -> None:
    vectors = consent_vectors()
    assert vectors == consent_vectors()
    json.dumps(vectors)  # serialisable for protocol/vectors/v1.json
    public = bytes.fromhex(vectors["issuer_public"])
    got = verify_consent_token(vectors["token"], public, at=vectors["valid_at"])
    assert msgspec.to_builtins(got) == vectors["claims"]
    Consent.model_validate(vectors["fhir"])
    for case in vectors["invalid"]:
        key = bytes.fromhex(case.get("issuer_public", vectors["issuer_public"]))
        with pytest.raises(VerificationError) as info:
            verify_consent_token(case.get("token", vectors["token"]), key, at=case["at"])
        assert info.value.code == case["code"], case["case"]
