"""Consent capture on the clinician's device (docs/ARCHITECTURE.md §5; docs/PROTOCOL.md §7,
§13).

Before an image can be sent, the capturing clinician records the patient's decision: the
purposes (direct-care consult, external consult, teaching, publication, research), who may
receive it (users, roles, organisations, external or not), the images the patient was shown
(by SHA-256 of exactly those bytes), the form version, agreed or refused, and that the two
statements were shown: images filed in the record are kept, and refusing does not change care.
The result is a consent token signed with the user's **identity key**, which only the device
that enrolled with the code holds (clients/sdk/keystore.py); it is registered with the relay
(``POST /v1/consents``), a refusal as well as an agreement.

Consent is separate from consent to treatment: this records only the sharing of images.
The patient reference in the token is opaque (a random id by default): the relay reads the
token, so it must never hold a name, MRN or date of birth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from clients.sdk.errors import FlowError
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import DeviceState
from protocol import api
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    ConsentRecipients,
    issue_consent_token,
    peek_consent_token_unverified,
    to_fhir_consent,
)
from protocol.model import Purpose

__all__ = [
    "DEIDENTIFIED_PURPOSES",
    "FORM_VERSION",
    "NO_EFFECT_ON_CARE_STATEMENT",
    "PERMANENCE_STATEMENT",
    "ConsentCapture",
    "capture_consent",
    "ensure_sendable",
    "fhir_consent",
    "image_hash",
    "new_patient_reference",
    "register_consent",
]

# Purposes whose image must be de-identified before it leaves the phone (docs/CLINICAL_SAFETY.md):
# the SDK refuses to send a patient record with them, the CLI redacts for them.
DEIDENTIFIED_PURPOSES: frozenset[Purpose] = frozenset({Purpose.TEACHING, Purpose.PUBLICATION,
                                                       Purpose.RESEARCH})
FORM_VERSION = "2026.1"
PERMANENCE_STATEMENT = (
    "Images shared for your care are filed in your medical record and kept there like any "
    "other part of the record; they cannot be taken back once filed.")
NO_EFFECT_ON_CARE_STATEMENT = (
    "You may say no. Refusing does not change the care you receive in any way.")
DEFAULT_VALIDITY = 30 * 86400


def image_hash(image: bytes) -> str:
    """The SHA-256 (lowercase hex) a consent names an image by: of exactly the bytes shown,
    which are the bytes encrypted and sent (after metadata stripping)."""
    return hashlib.sha256(image).hexdigest()


def new_patient_reference() -> str:
    """An opaque patient reference for a token: random, so it identifies nobody (the record
    gateway links it to the patient from the sealed body, never from the relay)."""
    return "pt-" + secrets.token_hex(12)


@dataclasses.dataclass(frozen=True)
class ConsentCapture:
    """What the patient was asked and answered. ``images`` are SHA-256 hex digests."""

    purposes: Sequence[Purpose]
    images: Sequence[str]
    decision: ConsentDecision
    basis: ConsentBasis
    recipient_users: Sequence[str] = ()
    recipient_roles: Sequence[str] = ()
    recipient_orgs: Sequence[str] = ()
    external: bool = False
    permanence_statement_shown: bool = False
    no_effect_on_care_statement_shown: bool = False
    form_version: str = FORM_VERSION
    valid_for: int = DEFAULT_VALIDITY
    patient_ref: str | None = None


def _check(capture: ConsentCapture) -> None:
    if not capture.purposes:
        raise FlowError("name at least one purpose", code="validation_failed")
    if not capture.images:
        raise FlowError("a consent must name the images the patient was shown",
                        code="validation_failed")
    if not (capture.permanence_statement_shown and capture.no_effect_on_care_statement_shown):
        raise FlowError("both statements (permanence, no effect on care) must be shown to the "
                        "patient before recording a decision", code="validation_failed")
    written_only = set(capture.purposes) - {Purpose.DIRECT_CARE}
    if written_only and capture.basis is not ConsentBasis.WRITTEN \
            and capture.decision is ConsentDecision.AGREED:
        raise FlowError(f"{', '.join(sorted(written_only))} need the patient's written consent",
                        code="consent_purpose")
    if capture.external and Purpose.EXTERNAL_CONSULT not in capture.purposes:
        raise FlowError("external recipients need the external_consult purpose",
                        code="consent_external_requires_written")


def capture_consent(state: DeviceState, capture: ConsentCapture, *, now: int | None = None,
                    consent_id: str | None = None) -> tuple[str, ConsentClaims]:
    """Sign the capture with the user's identity key; returns (token, claims)."""
    _check(capture)
    identity = state.identity_key()
    if identity is None:
        raise FlowError("only the device that enrolled with the code holds the identity key "
                        "that signs consent: capture it there", code="forbidden")
    t = int(time.time()) if now is None else now
    claims = ConsentClaims(
        jti=consent_id or str(uuid.uuid4()), iss=state.user_id, org=state.org_id,
        patient=capture.patient_ref or new_patient_reference(),
        purposes=list(dict.fromkeys(capture.purposes)),
        recipients=ConsentRecipients(users=list(capture.recipient_users),
                                     roles=list(capture.recipient_roles),
                                     orgs=list(capture.recipient_orgs),
                                     external=capture.external),
        images=list(dict.fromkeys(capture.images)), form_version=capture.form_version,
        decision=capture.decision, basis=capture.basis,
        permanence_statement_shown=capture.permanence_statement_shown,
        no_effect_on_care_statement_shown=capture.no_effect_on_care_statement_shown,
        iat=t, nbf=t, exp=t + capture.valid_for)
    return issue_consent_token(claims, identity.seed), claims


async def register_consent(relay: RelayHTTP, token: str) -> api.ConsentInfo:
    """Register a token (agreed or refused) with the relay; idempotent."""
    return await relay.register_consent(token)


def fhir_consent(token: str) -> dict[str, Any]:
    """The token as a FHIR R4 Consent resource, to file with the image."""
    return to_fhir_consent(peek_consent_token_unverified(token))


def ensure_sendable(claims: ConsentClaims, purpose: Purpose, images: Iterable[str]) -> None:
    """The sender's own check before an image leaves the device: the patient agreed, to this
    purpose, and was shown each of these images (FlowError with the consent_* code)."""
    if claims.decision is not ConsentDecision.AGREED:
        raise FlowError("the patient refused: these images cannot be sent",
                        code="consent_refused")
    if purpose not in claims.purposes:
        raise FlowError(f"the consent does not cover {purpose.value}", code="consent_purpose")
    for digest in images:
        if digest not in claims.images:
            raise FlowError("an image was not shown to the patient under this consent",
                            code="consent_image_mismatch")
