"""What the record gateway checks and looks up before and beside filing: the consent verifies
under its issuer's certificate and belongs to the gateway's organisation (RFC 7515 §5.2 via
protocol.consent), and, for a photo of a film, which original imaging studies of the patient
it may stand for (a photo of an x-ray is not the study itself: docs/CLINICAL_SAFETY.md), found
by QIDO-RS (PS3.18 §10.6).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from urllib.parse import urlsplit

from clients.gateway.errors import FilingFailed
from clients.gateway.pacs import PacsClient, PacsError, StudyRef
from clients.sdk.errors import RelayRequestError, RelayResponseError
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import DeviceState
from protocol import certs
from protocol.body import CaptureKind, OriginalSearch, OriginalStudy, RecordData
from protocol.consent import ConsentClaims, peek_consent_token_unverified, verify_consent_token
from protocol.errors import ProtocolError
from protocol.model import MessageHeader

__all__ = [
    "CLOCK_SKEW",
    "NON_ACQUISITION_MODALITIES",
    "original_link",
    "original_studies",
    "verified_consent",
]

log = logging.getLogger("lightbox.gateway")
CLOCK_SKEW = 300  # seconds a consent's iat may lead the gateway's clock
# Objects that are not an acquisition (PS3.3 C.7.3.1.1.1): a study holding only these is not
# an original imaging study (OT: our Secondary Capture, XC: photos, DOC: consent forms).
NON_ACQUISITION_MODALITIES = frozenset({"OT", "XC", "DOC", "SR", "KO", "PR", "SC", "REG"})
MODALITY = re.compile(r"[A-Z0-9]{1,16}")


async def verified_consent(token: str, sender: certs.VerifiedDevice, sender_user_cert: str, *,
                           relay: RelayHTTP, state: DeviceState, now: int) -> ConsentClaims:
    """The token's claims once its signature verifies under its issuer's certificate
    (RFC 7515 §5.2 via protocol.consent), issued in the gateway's organisation. Checked
    at the moment it was issued: the filing records a decision made then, and a token's
    validity period limits sharing, not keeping the evidence; a token claiming to be
    issued in the future (beyond the skew) is refused."""
    try:
        claims = peek_consent_token_unverified(token)
        issuer_cert = (sender_user_cert if claims.iss == sender.user_id
                       else (await relay.user_devices(claims.iss)).user_certificate)
        issuer = certs.verify_user_certificate(
            issuer_cert, trusted_orgs=state.trusted_orgs(), at=now)
        verified = verify_consent_token(token, issuer.identity_key, at=claims.iat,
                                        leeway=0)
    except (ProtocolError, RelayRequestError, RelayResponseError) as exc:
        # Not filed: a forged or malformed token, an issuer the directory does not know.
        # (The relay being unreachable is not this: RelayUnavailable propagates and the
        # delivery is tried again.)
        raise FilingFailed("the consent does not verify", code="consent_invalid") from exc
    if verified.iss != issuer.user_id or verified.org != state.org_id:
        raise FilingFailed("the consent was issued by someone outside this organisation",
                           code="consent_other_org")
    if verified.iat > now + CLOCK_SKEW:
        raise FilingFailed("the consent claims to be issued in the future",
                           code="consent_from_the_future")
    return verified


async def original_studies(pacs: PacsClient, record: RecordData, h: MessageHeader,
                           photo_study_uid: str, *, lookback_days: int,
                           viewer_url: str | None
                           ) -> tuple[list[OriginalStudy], OriginalSearch]:
    """For a photo of a film or monitor, the studies it may stand for (CLINICAL_SAFETY.md:
    a photo of an x-ray is not the study itself): QIDO-RS by the patient's ID (and
    issuer) and the days around the photo (PS3.18 §10.6), leaving out the studies
    Lightbox itself files and any study with only non-acquisition objects (photos,
    documents, secondary captures); and how the search went, for the receipt's
    ``original_search`` (protocol/body.py FilingReceipt): the clinician is told whether to
    look for a study the gateway could not, or for one it did not find. Best effort: a
    failed search only means no link ("failed"), never a filing refused."""
    if record.capture is not CaptureKind.FILM:
        return [], ""
    sent = dt.datetime.fromtimestamp(h.sent_at, dt.UTC).date()
    window = (sent - dt.timedelta(days=lookback_days),
              sent + dt.timedelta(days=1))  # a day after: the PACS's local date may lead
    try:
        found = await pacs.find_studies(
            record.patient_id,
            issuer_of_patient_id=record.issuer_of_patient_id or None,
            study_dates=window, limit=50)
    except (PacsError, ValueError) as exc:
        log.warning("original study search for message %s failed (%s); its receipt has no "
                    "link to the original", h.message_id, type(exc).__name__,
                    extra={"message_id": h.message_id, "error_type": type(exc).__name__})
        return [], "failed"
    originals = [s for s in found if s.study_instance_uid != photo_study_uid
                 and set(s.modalities) - NON_ACQUISITION_MODALITIES]
    originals.sort(key=lambda s: (s.study_date or dt.date.min,
                                  s.study_time or dt.time.min), reverse=True)
    return ([original_link(s, viewer_url) for s in originals[:4]],
            "found" if originals else "none")


def original_link(study: StudyRef, viewer_url: str | None) -> OriginalStudy:
    url = (viewer_url.replace("{study_instance_uid}", study.study_instance_uid)
           if viewer_url else (study.retrieve_url or ""))
    if urlsplit(url).scheme.lower() not in {"http", "https"} or any(c.isspace() for c in url) \
            or len(url) > 1024:
        url = ""
    return OriginalStudy(
        study_instance_uid=study.study_instance_uid,
        study_date=study.study_date.isoformat() if study.study_date else None,
        modalities=[m for m in study.modalities if MODALITY.fullmatch(m)][:16],
        description=(study.study_description or "")[:64], url=url)
