"""Consent tokens (docs/ARCHITECTURE.md §5): issue, verify, enforce, and map to FHIR.

A consent token is a compact JWS (RFC 7515 §7.1) signed with EdDSA/Ed25519 (RFC 8037 §3.1) by
the identity key of the clinician who captured the consent; its payload is a JWT claims set
(RFC 7519) with the registered claims ``jti``, ``iss``, ``iat``, ``nbf`` and ``exp`` and the
Lightbox claims of :class:`ConsentClaims`. The protected header is exactly::

    {"alg": "EdDSA", "kid": key_id(issuer identity key), "typ": "lightbox-consent+jwt"}

(RFC 8725 §3.11: an explicit ``typ`` keeps a consent token from being accepted as any other
JWT.) Verification pins ``algorithms=["EdDSA"]``, so ``alg: none`` and HS256 signed with the
public key (key confusion, RFC 8725 §2.1 and §3.1) are refused; the claims are decoded strictly
(unknown, missing or mistyped claims are refused) and the time is injected (``at=``).

The relay enforces the policy (:func:`check_consent`) before it queues a delivery; the
recipient's client enforces it again and checks each decrypted image's SHA-256 against the
token before showing it. :func:`to_fhir_consent` maps a token field by field to a FHIR R4
Consent resource for the record.

Errors: :class:`~protocol.errors.VerificationError` with ``consent_invalid`` or
``consent_expired`` from :func:`verify_consent_token`; :class:`~protocol.errors.DecodeError`
with ``consent_invalid`` from :func:`peek_consent_token_unverified`;
:class:`~protocol.errors.PolicyDenied` with a ``consent_*`` code from :func:`check_consent`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import jwt
import msgspec
from msgspec import Meta

from protocol import _sodium
from protocol.canonical import MAX_SAFE_INTEGER, UuidStr
from protocol.certs import ROLE_RECORD_GATEWAY, AccountKind, UserCertificate
from protocol.errors import DecodeError, ErrorCode, PolicyDenied, VerificationError
from protocol.keys import SecretBytes, key_id
from protocol.model import Purpose

__all__ = [
    "CONSENT_TOKEN_TYPE",
    "DEFAULT_CONSENT_POLICY",
    "FHIR_SYSTEM_BASE",
    "MAX_CONSENT_TOKEN",
    "ConsentBasis",
    "ConsentClaims",
    "ConsentDecision",
    "ConsentPolicy",
    "ConsentRecipients",
    "check_consent",
    "consent_vectors",
    "issue_consent_token",
    "peek_consent_token_unverified",
    "to_fhir_consent",
    "verify_consent_token",
]

CONSENT_TOKEN_TYPE: Final = "lightbox-consent+jwt"  # noqa: S105 (a media type, not a secret)
"""The JWS ``typ`` header of a consent token (RFC 7515 §4.1.9, RFC 8725 §3.11)."""
MAX_CONSENT_TOKEN: Final = 16 * 1024
"""Longest consent token accepted, in characters (checked before any parsing)."""
MAX_CONSENT_USERS: Final = 64
MAX_CONSENT_ROLES: Final = 32
MAX_CONSENT_ORGS: Final = 16
MAX_CONSENT_IMAGES: Final = 32
FHIR_SYSTEM_BASE: Final = "https://lightbox.example.org/fhir"
"""Base of Lightbox's own FHIR code systems, identifier systems and extensions."""

_ALLOWED_HEADER: Final = frozenset({"alg", "kid", "typ"})

Timestamp = Annotated[int, Meta(ge=0, le=MAX_SAFE_INTEGER)]
OrgId = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")]  # as protocol.certs
Role = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]  # as protocol.certs
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
PatientRef = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
FormVersion = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]


class ConsentDecision(enum.StrEnum):
    AGREED = "agreed"
    REFUSED = "refused"


class ConsentBasis(enum.StrEnum):
    """On what the consent rests (docs/ARCHITECTURE.md §5 policy table)."""

    TREATMENT_ATTESTATION = "treatment_attestation"  # the clinician attests it is for treatment
    WRITTEN = "written"  # the patient's written consent, naming each purpose


class ConsentRecipients(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who may receive under the consent: named users, holders of a role in the issuer's
    organisation, whole organisations, and whether recipients outside the issuer's organisation
    are allowed at all."""

    users: Annotated[list[UuidStr], Meta(max_length=MAX_CONSENT_USERS)]
    roles: Annotated[list[Role], Meta(max_length=MAX_CONSENT_ROLES)]
    orgs: Annotated[list[OrgId], Meta(max_length=MAX_CONSENT_ORGS)]
    external: bool


class ConsentClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The claims set of a consent token. Every claim is required.

    ``patient`` is an *opaque* reference chosen by the capturing client (for example a random
    UUID, or a keyed hash of the MRN that only the record gateway can resolve): it must never be
    a name, MRN, date of birth or anything else that identifies the patient, because the relay
    reads and stores it (docs/ARCHITECTURE.md §2, the relay is blind). The pattern only admits
    identifier-like
    strings (no spaces); the rest is the issuing client's duty.
    """

    jti: UuidStr  # token id
    iss: UuidStr  # issuing clinician's user id (the signer)
    org: OrgId  # issuing clinician's organisation
    patient: PatientRef
    purposes: Annotated[list[Purpose], Meta(min_length=1, max_length=len(Purpose))]
    recipients: ConsentRecipients
    images: Annotated[list[Sha256Hex], Meta(max_length=MAX_CONSENT_IMAGES)]  # SHA-256, hex
    form_version: FormVersion
    decision: ConsentDecision
    basis: ConsentBasis
    permanence_statement_shown: bool  # "images filed in the record are kept"
    no_effect_on_care_statement_shown: bool  # "refusing does not change your care"
    iat: Timestamp
    nbf: Timestamp
    exp: Timestamp

    def __post_init__(self) -> None:
        if len(set(self.purposes)) != len(self.purposes):
            raise ValueError("purposes must not repeat")
        if self.exp <= self.nbf or self.exp <= self.iat:
            raise ValueError("exp must be after nbf and iat")


class ConsentPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An organisation's consent policy; the defaults are the docs/ARCHITECTURE.md §5 table.

    ``attestation_purposes``: purposes a clinician's treatment attestation covers for
    recipients in the issuer's organisation (every other purpose needs the patient's written
    consent naming it). An organisation may narrow it (to require written consent always) but
    not widen it beyond direct care. ``filing_purposes``: purposes for which the organisation's
    record gateway is covered without being named (both rows of direct-care consult).
    ``max_validity``: seconds after ``nbf`` beyond which a token counts as expired whatever its
    ``exp``. ``clock_skew``: tolerance, in seconds, on ``nbf`` and ``exp``.
    """

    attestation_purposes: frozenset[Purpose] = frozenset({Purpose.DIRECT_CARE})
    filing_purposes: frozenset[Purpose] = frozenset({Purpose.DIRECT_CARE, Purpose.EXTERNAL_CONSULT})
    gateway_role: Role = ROLE_RECORD_GATEWAY
    max_validity: Annotated[int, Meta(ge=1)] | None = None
    clock_skew: Annotated[int, Meta(ge=0, le=3600)] = 60

    def __post_init__(self) -> None:
        if not self.attestation_purposes <= {Purpose.DIRECT_CARE}:
            raise ValueError("treatment attestation can only cover direct care "
                             "(docs/ARCHITECTURE.md §5)")


DEFAULT_CONSENT_POLICY: Final = ConsentPolicy()


# --- issue, verify, peek -----------------------------------------------------------------------


def issue_consent_token(claims: ConsentClaims, signing_key: bytes | SecretBytes) -> str:
    """Sign ``claims`` with the issuer's Ed25519 identity key (its 32-byte seed).

    The payload is the compact JSON of ``claims`` in field order, so equal claims and key give
    the same token (Ed25519 is deterministic).
    """
    seed = signing_key.reveal() if isinstance(signing_key, SecretBytes) else signing_key
    if len(seed) != _sodium.ED25519_SEED_BYTES:
        raise ValueError("the signing key must be a 32-byte Ed25519 seed")
    private = _sodium.jws_private_key(seed)
    public = _sodium.ed25519_public_key(seed)
    return jwt.PyJWS().encode(
        msgspec.json.encode(claims),
        private,
        algorithm="EdDSA",
        headers={"typ": CONSENT_TOKEN_TYPE, "kid": key_id(public)},
    )


def verify_consent_token(
    token: str, issuer_identity_key: bytes, *, at: int, leeway: int = 0
) -> ConsentClaims:
    """Verify a consent token under the issuer's Ed25519 identity public key at time ``at``.

    Checks, in order: size, header (exactly alg/kid/typ, our ``typ``, ``kid`` of this key),
    signature with EdDSA only, strict claims, then ``nbf - leeway <= at < exp + leeway``.
    Raises VerificationError: ``consent_expired`` for the time window, ``consent_invalid`` for
    everything else. Policy (revocation, purpose, recipients) is :func:`check_consent`.
    """
    header = _header(token, invalid=VerificationError)
    try:
        public = _sodium.jws_public_key(issuer_identity_key)
    except VerificationError as exc:
        raise VerificationError(f"bad issuer key: {exc}", code=ErrorCode.CONSENT_INVALID) from None
    if header.get("kid") != key_id(issuer_identity_key):
        raise VerificationError("kid names another key", code=ErrorCode.CONSENT_INVALID)
    try:
        payload = jwt.PyJWS().decode_complete(token, public, algorithms=["EdDSA"])["payload"]
    except jwt.PyJWTError as exc:
        raise VerificationError(f"JWS: {exc}", code=ErrorCode.CONSENT_INVALID) from None
    claims = _claims(payload, invalid=VerificationError)
    if not claims.nbf - leeway <= at < claims.exp + leeway:
        raise VerificationError("outside nbf/exp", code=ErrorCode.CONSENT_EXPIRED)
    return claims


def peek_consent_token_unverified(token: str) -> ConsentClaims:
    """Decode a consent token's claims WITHOUT verifying its signature or times.

    Only for finding the issuer (``iss``) whose key will verify it; never act on the result
    before :func:`verify_consent_token`. Strict like verification (header and claims); raises
    DecodeError(consent_invalid).
    """
    _header(token, invalid=DecodeError)
    try:
        payload = jwt.PyJWS().decode_complete(token, options={"verify_signature": False})["payload"]
    except jwt.PyJWTError as exc:
        raise DecodeError(f"JWS: {exc}", code=ErrorCode.CONSENT_INVALID) from None
    return _claims(payload, invalid=DecodeError)


def _header(token: str, *, invalid: type[VerificationError] | type[DecodeError]) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > MAX_CONSENT_TOKEN:
        raise invalid("not a consent token", code=ErrorCode.CONSENT_INVALID)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise invalid(f"header: {exc}", code=ErrorCode.CONSENT_INVALID) from None
    if set(header) != _ALLOWED_HEADER:
        raise invalid("header must hold exactly alg, kid, typ", code=ErrorCode.CONSENT_INVALID)
    if header["typ"] != CONSENT_TOKEN_TYPE or header["alg"] != "EdDSA":
        raise invalid("not a lightbox consent token", code=ErrorCode.CONSENT_INVALID)
    return header


def _claims(
    payload: bytes, *, invalid: type[VerificationError] | type[DecodeError]
) -> ConsentClaims:
    try:
        return msgspec.json.decode(payload, type=ConsentClaims)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise invalid(f"claims: {exc}", code=ErrorCode.CONSENT_INVALID) from None


# --- policy --------------------------------------------------------------------------------------


def check_consent(
    claims: ConsentClaims,
    *,
    purpose: Purpose,
    sender: UserCertificate,
    recipient: UserCertificate,
    policy: ConsentPolicy = DEFAULT_CONSENT_POLICY,
    revoked: bool,
    at: int,
    images: Sequence[str] = (),
    recipient_oncall_roles: Sequence[str] = (),
) -> None:
    """Refuse, with PolicyDenied, a delivery the consent does not cover (docs/ARCHITECTURE.md §5).

    ``claims`` must come from :func:`verify_consent_token`; ``sender`` and ``recipient`` from
    verified certificates. Checks, first failure wins:

    1. ``revoked`` -> consent_revoked (a withdrawn consent is withdrawn, whatever else holds);
    2. ``nbf - clock_skew <= at < min(exp, nbf + max_validity) + clock_skew``
       -> else consent_expired;
    3. decision "agreed" -> else consent_refused;
    4. ``purpose`` listed in the token, and, unless the policy lets treatment attestation
       cover it, basis "written" -> else consent_purpose (teaching, publication, research and
       external consult always need the patient's written consent naming them);
    5. the sender is the issuer or within the consent's recipients (forwarding: whoever passes
       the image on must have received it under this consent) -> else
       consent_recipient_out_of_scope;
    6. the recipient: the issuer always; the issuer organisation's record gateway (a service
       account with the gateway role) for the filing purposes; otherwise, if it is in another
       organisation than the issuer's, basis "written", purpose external_consult and
       ``recipients.external`` -> else consent_external_requires_written; then named by user
       id, by organisation, or (same organisation only) by one of its roles, held in its
       certificate or, on the relay, through ``recipient_oncall_roles`` (the on-call ladders
       the recipient is on when the message is sent) -> else consent_recipient_out_of_scope;
    7. every image hash in ``images`` is named in the token -> else consent_image_mismatch.
    """
    skew = policy.clock_skew
    end = claims.exp
    if policy.max_validity is not None:
        end = min(end, claims.nbf + policy.max_validity)
    if revoked:
        _deny(ErrorCode.CONSENT_REVOKED, "consent revoked")
    if not claims.nbf - skew <= at < end + skew:
        _deny(ErrorCode.CONSENT_EXPIRED, "consent outside its validity period")
    if claims.decision is not ConsentDecision.AGREED:
        _deny(ErrorCode.CONSENT_REFUSED, "the patient refused consent")
    if purpose not in claims.purposes:
        _deny(ErrorCode.CONSENT_PURPOSE, f"purpose {purpose} not named")
    if purpose not in policy.attestation_purposes and claims.basis is not ConsentBasis.WRITTEN:
        _deny(ErrorCode.CONSENT_PURPOSE, f"purpose {purpose} needs written consent")
    if sender.user_id != claims.iss:
        _check_recipient(claims, sender, "sender")
    if recipient.user_id == claims.iss:
        pass
    elif _is_gateway(claims, recipient, policy) and purpose in policy.filing_purposes:
        pass
    else:
        _check_recipient(claims, recipient, "recipient", recipient_oncall_roles)
    named = set(claims.images)
    for digest in images:
        if digest not in named:
            _deny(ErrorCode.CONSENT_IMAGE_MISMATCH, "image not named by the consent")


def _is_gateway(claims: ConsentClaims, cert: UserCertificate, policy: ConsentPolicy) -> bool:
    return (
        cert.account_kind is AccountKind.SERVICE
        and policy.gateway_role in cert.roles
        and cert.org_id == claims.org
    )


def _check_recipient(claims: ConsentClaims, cert: UserCertificate, who: str,
                     oncall_roles: Sequence[str] = ()) -> None:
    scope = claims.recipients
    external = cert.org_id != claims.org
    if external and not (
        claims.basis is ConsentBasis.WRITTEN
        and Purpose.EXTERNAL_CONSULT in claims.purposes
        and scope.external
    ):
        _deny(ErrorCode.CONSENT_EXTERNAL_REQUIRES_WRITTEN, f"external {who}")
    covered = (
        cert.user_id in scope.users
        or cert.org_id in scope.orgs
        # A role name only means something inside the organisation that defines it.
        or (not external and any(role in scope.roles for role in cert.roles))
        # A role also covers everyone on its on-call ladder (PROTOCOL.md §16), whatever their
        # certificate says: the rota, not the certificate, decides who answers the role.
        or (not external and any(role in scope.roles for role in oncall_roles))
    )
    if not covered:
        _deny(ErrorCode.CONSENT_RECIPIENT_OUT_OF_SCOPE, f"{who} not covered")


def _deny(code: ErrorCode, detail: str) -> None:
    raise PolicyDenied(detail, code=code)


# --- FHIR ----------------------------------------------------------------------------------------

_V3_PURPOSE: Final[dict[Purpose, str]] = {
    Purpose.DIRECT_CARE: "TREAT",
    Purpose.EXTERNAL_CONSULT: "TREAT",
    Purpose.RESEARCH: "HRESCH",
}
_V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_V3_PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_URI: Final = "urn:ietf:rfc:3986"


def _fhir_time(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ident(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}


def to_fhir_consent(
    claims: ConsentClaims, *, system_base: str = FHIR_SYSTEM_BASE,
    patient_identifier: tuple[str, str] | None = None
) -> dict[str, Any]:
    """Map consent claims field by field to a FHIR R4 ``Consent`` resource (as a JSON dict).

    Validated in the tests against ``fhir.resources.R4B.consent.Consent``: R4B is the
    R4-family model shipped by fhir.resources 8 (whose default is R5), and its Consent is
    unchanged from R4. The mapping:

    ==================================  ======================================================
    jti                                 ``id``, ``identifier`` (urn:uuid) and
                                        ``sourceReference.identifier`` (the signed token)
    decision agreed / refused           ``status`` active / rejected, ``provision.type``
                                        permit / deny
    basis                               ``policyRule`` (Lightbox code system consent-basis)
    form_version                        ``policy[0].uri``
    patient (opaque reference)          ``patient.identifier`` (no resource, no PHI)
    iat                                 ``dateTime``
    iss / org                           ``performer`` (Practitioner) / ``organization``
    purposes                            ``provision.purpose`` (Lightbox codes, plus HL7
                                        v3-ActReason TREAT / HRESCH where one exists)
    recipients users/roles/orgs         ``provision.actor`` with role IRCP (information
                                        recipient) referencing Practitioner /
                                        PractitionerRole / Organization by identifier
    recipients.external                 extension external-recipients on ``provision``
    images                              ``provision.data`` (meaning instance), each an
                                        identifier in the image-sha256 system
    nbf / exp                           ``provision.period`` start / end
    the two statements shown            extensions permanence-statement-shown and
                                        no-effect-on-care-statement-shown
    ==================================  ======================================================

    ``scope`` is patient-privacy and ``category`` LOINC 59284-0 (patient consent).

    ``patient_identifier`` (system, value): for the copy filed *in the patient's record*
    (the record gateway, which reads the patient's id from the sealed body), ``patient``
    names the patient by that identifier (a logical reference, FHIR R4 references.html
    §2.3.0.3, so the record can find every consent of a patient with the ``:identifier``
    search modifier) and the opaque reference moves to the patient-ref extension. Never for
    anything the relay sees.
    """
    sys = system_base.rstrip("/")
    agreed = claims.decision is ConsentDecision.AGREED
    urn = f"urn:uuid:{claims.jti}"

    def ref(kind: str, system: str, value: str) -> dict[str, Any]:
        return {"type": kind, "identifier": _ident(f"{sys}/{system}", value)}

    def actor(reference: dict[str, Any]) -> dict[str, Any]:
        role = {"coding": [{"system": _V3_PARTICIPATION, "code": "IRCP"}]}
        return {"role": role, "reference": reference}

    purposes: list[dict[str, str]] = []
    for purpose in claims.purposes:
        purposes.append({"system": f"{sys}/CodeSystem/purpose", "code": purpose.value})
        v3 = _V3_PURPOSE.get(purpose)
        if v3 and not any(p["code"] == v3 for p in purposes):
            purposes.append({"system": _V3_ACT_REASON, "code": v3})
    recipients = claims.recipients
    actors = (
        [actor(ref("Practitioner", "user-id", u)) for u in recipients.users]
        + [actor(ref("PractitionerRole", "role", r)) for r in recipients.roles]
        + [actor(ref("Organization", "org-id", o)) for o in recipients.orgs]
    )
    provision: dict[str, Any] = {
        "type": "permit" if agreed else "deny",
        "period": {"start": _fhir_time(claims.nbf), "end": _fhir_time(claims.exp)},
        "purpose": purposes,
        "extension": [
            {
                "url": f"{sys}/StructureDefinition/external-recipients",
                "valueBoolean": recipients.external,
            }
        ],
    }
    if actors:
        provision["actor"] = actors
    if claims.images:
        provision["data"] = [
            {"meaning": "instance", "reference": {"identifier": _ident(f"{sys}/image-sha256", h)}}
            for h in claims.images
        ]
    extensions: list[dict[str, Any]] = [
        {
            "url": f"{sys}/StructureDefinition/permanence-statement-shown",
            "valueBoolean": claims.permanence_statement_shown,
        },
        {
            "url": f"{sys}/StructureDefinition/no-effect-on-care-statement-shown",
            "valueBoolean": claims.no_effect_on_care_statement_shown,
        },
    ]
    patient: dict[str, Any] = {"identifier": _ident(f"{sys}/patient-ref", claims.patient)}
    if patient_identifier is not None:
        extensions.append({"url": f"{sys}/StructureDefinition/patient-ref",
                           "valueIdentifier": patient["identifier"]})
        patient = {"type": "Patient", "identifier": _ident(*patient_identifier)}
    return {
        "resourceType": "Consent",
        "id": claims.jti,
        "extension": extensions,
        "identifier": [_ident(_URI, urn)],
        "status": "active" if agreed else "rejected",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Consent"}]}
        ],
        "patient": patient,
        "dateTime": _fhir_time(claims.iat),
        "performer": [ref("Practitioner", "user-id", claims.iss)],
        "organization": [ref("Organization", "org-id", claims.org)],
        "sourceReference": {
            "type": "DocumentReference",
            "identifier": _ident(_URI, urn),
            "display": "Lightbox consent token (compact JWS, EdDSA)",
        },
        "policy": [{"uri": f"{sys}/consent-form/{claims.form_version}"}],
        "policyRule": {
            "coding": [{"system": f"{sys}/CodeSystem/consent-basis", "code": claims.basis.value}]
        },
        "provision": provision,
    }


# --- test vectors --------------------------------------------------------------------------------

_VECTOR_SEED: Final = bytes(range(32))
_VECTOR_TIME: Final = 1_767_225_600  # 2026-01-01T00:00:00Z


def _vector_claims() -> ConsentClaims:
    return ConsentClaims(
        jti="6f1c2a44-5a8e-4f0b-9d53-1c2e3f4a5b6c",
        iss="0b7e2c1d-3f4a-4b5c-8d6e-7f8091a2b3c4",
        org="st-elsewhere.example",
        patient="pt-3c9d2e71b0a84f56",
        purposes=[Purpose.DIRECT_CARE],
        recipients=ConsentRecipients(
            users=[], roles=["orthopaedics_oncall"], orgs=[], external=False
        ),
        images=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
        form_version="2026.1",
        decision=ConsentDecision.AGREED,
        basis=ConsentBasis.TREATMENT_ATTESTATION,
        permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True,
        iat=_VECTOR_TIME,
        nbf=_VECTOR_TIME,
        exp=_VECTOR_TIME + 30 * 86400,
    )


def consent_vectors() -> dict[str, Any]:
    """Deterministic consent-token test vectors (fixed key and times) for protocol/vectors.py.

    Ed25519 signatures are deterministic (RFC 8032 §5.1.6), so ``token`` is the same on every
    run; a compatible implementation must verify it and reject the negative cases.
    """
    claims = _vector_claims()
    public = _sodium.ed25519_public_key(_VECTOR_SEED)
    token = issue_consent_token(claims, _VECTOR_SEED)
    header_b64, payload_b64, signature_b64 = token.split(".")
    other_seed = bytes(range(32, 64))
    return {
        "description": "Consent token: compact JWS, EdDSA (RFC 8037), typ lightbox-consent+jwt",
        "issuer_seed": _VECTOR_SEED.hex(),
        "issuer_public": public.hex(),
        "kid": key_id(public),
        "claims": msgspec.to_builtins(claims),
        "header": jwt.get_unverified_header(token),
        "signing_input": f"{header_b64}.{payload_b64}",
        "signature_b64url": signature_b64,
        "token": token,
        "valid_at": _VECTOR_TIME + 3600,
        "fhir": to_fhir_consent(claims),
        "invalid": [
            {"case": "expired", "at": claims.exp, "code": ErrorCode.CONSENT_EXPIRED.value},
            {"case": "not_yet_valid", "at": claims.nbf - 1, "code": "consent_expired"},
            {
                "case": "wrong_key",
                "issuer_public": _sodium.ed25519_public_key(other_seed).hex(),
                "at": _VECTOR_TIME + 3600,
                "code": ErrorCode.CONSENT_INVALID.value,
            },
            {
                "case": "tampered_payload",
                "token": f"{header_b64}.{payload_b64[:-2]}{'A' if payload_b64[-2] != 'A' else 'B'}"
                f"{payload_b64[-1]}.{signature_b64}",
                "at": _VECTOR_TIME + 3600,
                "code": ErrorCode.CONSENT_INVALID.value,
            },
        ],
    }
