"""``lightbox-gateway``: the record gateway that files images into PACS (DICOMweb STOW-RS).

Why (docs/ARCHITECTURE.md §6, issue 7): guidance for clinical images says to save the image in the
patient's record, then delete it from the device. The gateway is a credentialed service device (a
service account with the role ``record_gateway``, device kind ``gateway``) that every direct-care
image
is also sealed to. For each image it receives it:

1. opens the message (the sender's chain verified against the pinned organisation key), checks
   the image against the consent it was sent under, and takes the patient and study data from
   the SEALED body only (never from anything the relay can read);
2. builds the DICOM object (Secondary Capture for a photo of a film or monitor, VL Photographic
   for a clinical photo) with UIDs derived from the consult and attachment ids, so a retry
   stores the same object again rather than a second one;
3. stores it with STOW-RS and proves it by reading it back (QIDO-RS + WADO-RS, pixel data
   compared byte for byte): :meth:`clients.gateway.pacs.PacsClient.verify_stored`;
4. files the consent with it (issue 10 item 1): the human-readable consent form (copy for the
   record) as a DICOM Encapsulated PDF in the same study, once per consent and study (its UIDs
   derive from the consent id and the study), read back like the image; and the FHIR R4
   Consent, POSTed to ``LIGHTBOX_FHIR_URL`` when one is configured (conditional create on the
   consent's identifier, so a retry does not duplicate it) and otherwise only named in the
   receipt by the SHA-256 of its JSON;
5. seals the full receipt (Study/Series/SOP Instance UIDs, retrieve URL, the documents filed
   with the image) to the thread's
   participants (body kind ``filing_receipt``), then sends the relay a ``filing`` statement
   signed by its device key naming the SHA-256 of that sealed receipt; the relay answers
   ``filed_notice`` and starts the grace period after which every copy expires.

Failures: PACS unreachable (or its credentials refused) -> retry with exponential backoff, for
as long as it takes, without acknowledging the delivery (nothing expires meanwhile; a crash
re-delivers it); PACS rejects the object (400/409) or the image fails its checks -> no filing
statement, and the sender is alerted with the reason in a sealed message to the thread. Only
then is the delivery acknowledged. The gateway keeps no copy: the image lives in memory for the
duration of one filing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import getpass
import hashlib
import io
import json
import logging
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO
from urllib.parse import quote, urlsplit

import msgspec
from PIL import Image

from clients.gateway import dicom
from clients.gateway.fhir import FhirAuthError, FhirClient, FhirError, FhirSettings, FhirUnavailable
from clients.gateway.pacs import (
    InstanceRef,
    PacsAuthError,
    PacsClient,
    PacsError,
    PacsSettings,
    PacsUnavailable,
    StudyRef,
)
from clients.sdk import attachments as sdk_attachments
from clients.sdk.connection import Connection
from clients.sdk.consent_pdf import (
    Attachment,
    ConsentFormDisplay,
    FormCopy,
    patient_label,
    render_consent_pdf,
)
from clients.sdk.errors import FlowError, KeyStoreError, RelayRequestError, RelayResponseError
from clients.sdk.failures import run_command
from clients.sdk.http import RelayHTTP
from clients.sdk.identity import (
    forget_one_time_prekey,
    login,
    org_revocation_lists,
    replenish_one_time_prekeys,
)
from clients.sdk.keystore import DeviceState, KeyStore, default_profile, lightbox_home
from clients.sdk.socket import RelaySocket, SendRefused, SocketClosed
from protocol import api, certs, envelope, statements
from protocol.attachments import AttachmentDescriptor
from protocol.body import (
    Body,
    BodyKind,
    CaptureKind,
    ConsentFiling,
    FiledDocument,
    FilingReceipt,
    OriginalStudy,
    RecordData,
    decode_body,
    encode_body,
)
from protocol.consent import (
    FHIR_SYSTEM_BASE,
    ConsentClaims,
    peek_consent_token_unverified,
    to_fhir_consent,
    verify_consent_token,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import Deliver, Error, FiledNotice, Filing, Frame, KeysLow
from protocol.model import DeviceKind, MessageHeader, Priority, Purpose, SealedMessage
from protocol.statements import FilingStatement

__all__ = [
    "FilingFailed",
    "GatewayConfig",
    "RecordGateway",
    "configure_logging",
    "main",
    "patient_id_system",
]

VERSION = "0.1.0"
log = logging.getLogger("lightbox.gateway")
UID_NAMESPACE = uuid.UUID("7b0f3c1e-2a54-4c8e-9a61-5d2f8e0c4b17")
CONSENT_STUDY = "Consent for clinical images"  # a consent filed without images: its study
CONSENT_IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"  # to_fhir_consent's identifier: urn:uuid:<jti>


def patient_id_system(issuer: str) -> str:
    """The FHIR identifier system of a patient id from the sealed record data: the issuer
    (DICOM Issuer of Patient ID, default the gateway's ``--issuer`` or the organisation id)
    under the Lightbox system base, so the privacy office can find a patient's consents in the
    record (``lightbox-admin consent find --patient-id``)."""
    return f"{FHIR_SYSTEM_BASE}/patient-id/{quote(issuer, safe='')}"
CLOCK_SKEW = 300  # seconds a consent's iat may lead the gateway's clock
# Objects that are not an acquisition (PS3.3 C.7.3.1.1.1): a study holding only these is not
# an original imaging study (OT: our Secondary Capture, XC: photos, DOC: consent forms).
NON_ACQUISITION_MODALITIES = frozenset({"OT", "XC", "DOC", "SR", "KO", "PR", "SC", "REG"})
_MODALITY = re.compile(r"[A-Z0-9]{1,16}")


class FilingFailed(Exception):
    """This image cannot be filed as it is (the PACS refused it, or it fails a check): the
    sender is told why (``str()``, in the sealed thread) and nothing expires until the hard
    limit. ``code`` is what the log says: a fixed word, never the reason's text, which may
    quote the PACS's answer or the record data."""

    def __init__(self, reason: str, *, code: str) -> None:
        super().__init__(reason)
        self.code = code


class StateStore(Protocol):
    @property
    def state(self) -> DeviceState: ...

    def save(self, state: DeviceState) -> None: ...


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    retry_base: float = 1.0  # seconds before the first retry of an unreachable PACS
    retry_max: float = 300.0  # longest wait between retries
    issuer_of_patient_id: str = ""  # default Issuer of Patient ID when the body names none
    statement_timeout: float = 30.0
    # Where a clinician views a study: a URL template with {study_instance_uid} (the PACS
    # viewer, LIGHTBOX_PACS_VIEWER_URL); empty: the study's DICOMweb retrieve URL.
    viewer_url: str = ""
    # Days before the photo's date searched for the original study it shows (issue 10 item 7).
    original_lookback_days: int = 2


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _where(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised: enough to find a bug, without its message."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "?" if tb is None else f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:" \
        f"{tb.tb_lineno}"


def _dicom_code(exc: dicom.DicomBuildError) -> str:
    """What the log says of a DICOM build failure: the field's name, never its value."""
    if isinstance(exc, dicom.RecordDataInvalid):
        return f"record_data_invalid ({exc.field_name})"
    return f"dicom_invalid ({type(exc).__name__})"


def _pacs_code(exc: PacsError) -> str:
    """What the log says of a PACS refusal: its kind and HTTP status, never its message (it may
    quote the object)."""
    status = getattr(exc, "status", None)
    return f"pacs_refused ({type(exc).__name__}{f', HTTP {status}' if status else ''})"


def dicom_uid(*parts: str) -> str:
    """A UUID-derived UID (PS3.5 §B.2, root 2.25) that is the same for the same inputs, so a
    retried filing stores the same object rather than a duplicate."""
    return "2.25." + str(uuid.uuid5(UID_NAMESPACE, "/".join(parts)).int)


def dicom_record(record: RecordData, header: MessageHeader, *, operator: str,
                 default_issuer: str) -> dicom.RecordData:
    """The DICOM patient/study data, from the sealed body's record data (never from server-
    visible fields: the header only contributes ids and the time the image was sent)."""
    region = None
    if record.anatomic_region:
        region = dicom.CodedConcept(record.anatomic_region[:16], "99LBX",
                                    record.anatomic_region[:64])
    try:
        op = dicom.RecordData(  # validate the operator's name alone first
            patient_name="X", patient_id="X", issuer_of_patient_id="X", birth_date=None,
            sex=dicom.Sex.UNKNOWN, accession_number="", study_description="",
            acquisition_datetime=dt.datetime.now(dt.UTC), operator_name=operator,
            consult_reference="x").operator_name
    except dicom.DicomBuildError:
        op = ""
    try:
        birth_date = dt.date.fromisoformat(record.birth_date) if record.birth_date else None
    except ValueError:  # its message quotes the date: a RecordDataInvalid names the field only
        raise dicom.RecordDataInvalid("birth_date", "not a date (YYYY-MM-DD)") from None
    return dicom.RecordData(
        patient_name=record.patient_name, patient_id=record.patient_id,
        issuer_of_patient_id=record.issuer_of_patient_id or default_issuer,
        birth_date=birth_date,
        sex=dicom.Sex(record.sex.value), accession_number=record.accession_number,
        study_description=record.study_description or "Lightbox consult",
        acquisition_datetime=dt.datetime.fromtimestamp(header.sent_at, dt.UTC),
        operator_name=op, consult_reference=header.thread_id,
        study_instance_uid=dicom_uid("study", header.thread_id, record.patient_id),
        anatomic_region=region)


def build_instance(image: bytes, record: RecordData, header: MessageHeader,
                   descriptor: AttachmentDescriptor, *, operator: str,
                   default_issuer: str) -> dicom.DicomInstance:
    data = dicom_record(record, header, operator=operator, default_issuer=default_issuer)
    pixels: bytes | Image.Image = image
    if not image.startswith(b"\xff\xd8"):  # not JPEG (a PNG from a desktop): decode it
        try:
            pixels = Image.open(io.BytesIO(image))
            pixels.load()
        except (OSError, ValueError) as exc:
            raise dicom.DicomBuildError(f"not a readable image: {exc}") from exc
    series = dicom_uid("series", header.message_id)
    sop = iter([dicom_uid("sop", descriptor.attachment_id)])

    def new_uid() -> str:
        return next(sop)

    if record.capture is CaptureKind.CLINICAL:
        return dicom.build_vl_photographic(pixels, data, series_instance_uid=series,
                                           new_uid=new_uid)
    return dicom.build_secondary_capture(pixels, data, captured_from=dicom.CapturedFrom.FILM,
                                         series_instance_uid=series, new_uid=new_uid)


def build_consent_form(claims: ConsentClaims, token: str, record: RecordData,
                       header: MessageHeader, *, study_instance_uid: str, clinician_name: str,
                       operator: str, default_issuer: str) -> dicom.DicomInstance:
    """The consent form (copy for the record) as Encapsulated PDF in the images' study, with
    the consent itself embedded in the PDF: the signed token (anyone holding the issuer's
    certificate can verify it, RFC 7515 §5.2) and the FHIR R4 Consent. Its UIDs and content
    depend only on the consent and the study, so every image of the study that the consent
    covers, and every retry, files the same object once."""
    pdf = render_consent_pdf(claims, ConsentFormDisplay(
        patient_label=patient_label(record.patient_name), clinician_name=clinician_name),
        copy=FormCopy.RECORD, attachments=consent_attachments(claims, token))
    data = dataclasses.replace(
        dicom_record(record, header, operator=operator, default_issuer=default_issuer),
        acquisition_datetime=dt.datetime.fromtimestamp(claims.iat, dt.UTC))
    uid = iter([dicom_uid("consent-form", claims.jti, study_instance_uid)])
    return dicom.build_encapsulated_pdf(
        pdf, data, study_instance_uid=study_instance_uid,
        series_instance_uid=dicom_uid("consent-series", claims.jti, study_instance_uid),
        new_uid=lambda: next(uid))


def consent_attachments(claims: ConsentClaims, token: str) -> list[Attachment]:
    """What the record's form carries besides its text: the consent, machine-readable."""
    return [
        Attachment(f"consent-{claims.jti}.jws", token.encode(), "application/jose",
                   "The signed consent token (JWS, EdDSA; Lightbox PROTOCOL.md section 7)"),
        Attachment(f"consent-{claims.jti}.fhir.json", fhir_consent_json(claims),
                   "application/fhir+json", "The consent as a FHIR R4 Consent resource"),
    ]


def fhir_consent_json(claims: ConsentClaims) -> bytes:
    """The FHIR R4 Consent as canonical-enough JSON (sorted keys), hashed into the receipt."""
    return json.dumps(to_fhir_consent(claims), sort_keys=True, separators=(",", ":")).encode()


class _GatewayConnection(Connection):
    """A Connection that files deliveries beside the read loop rather than inside it, so the
    relay's answer to a filing statement (``filed_notice`` or ``error``) reaches the gateway
    while the filing waits for it. Each delivery is still acknowledged only after its filing
    finished (filed, or failed for good); one that is interrupted is delivered again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy: set[tuple[str, str]] = set()
        self._jobs: set[asyncio.Task[None]] = set()

    async def _handle(self, sock: RelaySocket, frame: Frame) -> None:
        if not isinstance(frame, Deliver):
            await super()._handle(sock, frame)
            return
        h = frame.message.header
        key = (h.sender_device_id, h.message_id)
        if self.dedupe.seen(*key):
            await sock.ack([frame.delivery_id])
            return
        if key in self._busy:
            return  # redelivered while its filing is still running
        self._busy.add(key)
        job = asyncio.create_task(self._file(sock, frame, key))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _file(self, sock: RelaySocket, frame: Deliver, key: tuple[str, str]) -> None:
        try:
            await self._on_message(frame)
            self.dedupe.add(*key)
            with contextlib.suppress(SocketClosed, ConnectionError):
                await sock.ack([frame.delivery_id])
        except Exception as exc:  # not acknowledged: the relay delivers it again
            # The type and the place, not the message or the traceback's values: an
            # exception's text may quote the record data.
            log.warning("filing of message %s interrupted (%s at %s); the relay will deliver "
                        "it again", key[1], type(exc).__name__, _where(exc),
                        extra={"message_id": key[1], "error_type": type(exc).__name__})
        finally:
            self._busy.discard(key)

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        await super().stop()


class RecordGateway:
    """One gateway device's filing loop (``await start()``, then it runs until ``stop()``)."""

    def __init__(self, store: StateStore, pacs: PacsClient, *, password: str | None = None,
                 relay: RelayHTTP | None = None, ws_url: str | None = None,
                 config: GatewayConfig | None = None, clock: Callable[[], float] = time.time,
                 backoff_base: float = 0.2, backoff_max: float = 10.0,
                 fhir: FhirClient | None = None) -> None:
        self.store, self.pacs, self.clock, self.fhir = store, pacs, clock, fhir
        self.config = config or GatewayConfig()
        self._password = password
        st = store.state
        self.relay = relay or RelayHTTP(st.server_url, device=st.device_keys().signing,
                                        tokens=st.session, on_tokens=self._save_tokens)
        base = st.server_url.rstrip("/")
        self.ws_url = ws_url or ("ws" + base[len("http"):] + "/v1/ws")
        self._backoff = (backoff_base, backoff_max)
        self.connection: _GatewayConnection | None = None
        self._waiting: dict[str, asyncio.Future[FiledNotice]] = {}
        self.filed: list[FilingReceipt] = []
        self.consents_filed: list[ConsentFiling] = []
        self.failed: list[tuple[str, str]] = []  # (attachment id, reason)

    # -- lifecycle ---------------------------------------------------------------------------

    def _save_tokens(self, tokens: api.TokenPair) -> None:
        """Keep the rotated refresh token: a restarted gateway presenting the one it replaced
        would be taken for a stolen copy and lose its session."""
        self.store.save(msgspec.structs.replace(self.store.state, session=tokens))

    async def _access_token(self) -> str:
        tokens = self.relay.tokens
        if tokens is not None and tokens.refresh_expires_at > self.clock() + 60 \
                and self.clock() >= tokens.expires_at - 60:
            try:  # one refresh shared with any other caller (clients/sdk/http.py)
                tokens = await self.relay.refresh_if_stale(tokens)
            except RelayRequestError:  # the session ended: log in again with the password
                tokens = None
        if tokens is None or tokens.refresh_expires_at <= self.clock() + 60:
            if self._password is None:
                raise FlowError("the gateway's session expired: give its password",
                                code=ErrorCode.UNAUTHENTICATED.value)
            self.relay.tokens = None
            await login(self.relay, self.store.state, self._password)
        assert self.relay.tokens is not None
        return self.relay.tokens.access_token

    async def start(self) -> None:
        keys = self.store.state.device_keys()
        await self._access_token()
        self.connection = _GatewayConnection(
            self.ws_url, device_id=keys.device_id, access_token=self._access_token,
            sign=keys.sign, on_message=self.handle, on_event=self._on_event,
            backoff_base=self._backoff[0], backoff_max=self._backoff[1])
        await self.connection.start()
        st = self.store.state
        log.info("record gateway %s (device %s) started: relay %s, %r, FHIR Consents %s",
                 st.login, st.device_id, st.server_url, self.pacs,
                 "to the FHIR server" if self.fhir is not None else "named in receipts only",
                 extra={"device_id": st.device_id})

    async def stop(self) -> None:
        if self.connection is not None:
            await self.connection.stop()
        await self.relay.aclose()

    async def _on_event(self, frame: Frame) -> None:
        if isinstance(frame, FiledNotice):
            fut = self._waiting.pop(frame.attachment_id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif isinstance(frame, Error) and frame.req_id is not None:
            fut = self._waiting.pop(frame.req_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(SendRefused(frame.code.value, frame.detail))
        elif isinstance(frame, KeysLow):
            await self._replenish(frame.target - frame.remaining)

    async def _replenish(self, count: int) -> None:
        await replenish_one_time_prekeys(self.relay, self.store, count, now=int(self.clock()))

    # -- certificates ------------------------------------------------------------------------

    async def _revocations(self) -> certs.RevocationSet:
        st = self.store.state
        held = certs.RevocationSet()
        for token in await org_revocation_lists(self.relay, st.org_id):
            with contextlib.suppress(ProtocolError):
                held.add(certs.verify_revocation_list(token, trusted_orgs=st.trusted_orgs()))
        return held

    async def _chain(self, user_id: str, device_id: str,
                     revocations: certs.RevocationSet) -> tuple[certs.VerifiedDevice, str]:
        answer = await self.relay.user_devices(user_id)
        for bundle in answer.devices:
            verified = certs.verify_chain(
                answer.user_certificate, bundle.device_certificate,
                trusted_orgs=self.store.state.trusted_orgs(), at=int(self.clock()),
                revocations=revocations)
            if verified.device_id == device_id and verified.user_id == user_id:
                return verified, answer.user_certificate
        raise FilingFailed("the sender's device is not a current device of the sender",
                           code="sender_not_current")

    # -- one delivery ------------------------------------------------------------------------

    async def handle(self, frame: Deliver) -> None:
        """File every image of one delivery; returns (and the delivery is acknowledged) only
        once each is filed or has failed for good."""
        sealed = frame.message
        h = sealed.header
        st = self.store.state
        revocations = await self._revocations()
        try:
            sender, sender_user_cert = await self._chain(h.sender_user_id, h.sender_device_id,
                                                         revocations)
            plain = await asyncio.to_thread(
                envelope.open_message, sealed, me=st.device_keys(), prekeys=st.prekey_store(),
                sender=sender, seen=envelope.MemorySeenSet())
            body = decode_body(plain)
        except (ProtocolError, FilingFailed) as exc:
            why = exc.code if isinstance(exc, FilingFailed) else type(exc).__name__
            log.warning("message %s from device %s could not be opened (%s) and is dropped",
                        h.message_id, h.sender_device_id, why,
                        extra={"message_id": h.message_id, "device_id": h.sender_device_id,
                               "error_type": type(exc).__name__})
            return
        forget_one_time_prekey(self.store, sealed)
        if body.kind is BodyKind.CONSENT_RECORD:
            await self._file_consent_record(h, body, sender, sender_user_cert, revocations)
            return
        if body.kind is not BodyKind.TEXT or not body.attachments:
            return  # nothing to file (text, receipts of other gateways)
        if h.purpose not in (Purpose.DIRECT_CARE, Purpose.EXTERNAL_CONSULT):
            log.info("message %s: %d image(s) for %s, not for the record; nothing to file",
                     h.message_id, len(body.attachments), h.purpose.value,
                     extra={"message_id": h.message_id})
            return  # teaching and research images are not the patient's record
        log.info("message %s in thread %s: %d image(s) to file", h.message_id, h.thread_id,
                 len(body.attachments), extra={"message_id": h.message_id,
                                               "thread_id": h.thread_id})
        for descriptor in body.attachments:
            aid = descriptor.attachment_id
            try:
                receipt = await self._file_one(h, body, descriptor, sender, sender_user_cert,
                                               revocations)
            except FilingFailed as exc:
                self.failed.append((aid, str(exc)))
                log.warning("could not file attachment %s of message %s: %s; the sender is "
                            "told, and nothing expires before the hard limit", aid,
                            h.message_id, exc.code, extra={
                                "attachment_id": aid, "message_id": h.message_id,
                                "code": exc.code})
                await self._tell_thread(h, Body(
                    text=f"The record gateway could not file the image "
                         f"{descriptor.attachment_id}: {exc}. It was NOT saved to the "
                         f"patient's record; nothing will expire until the hard limit.",
                    reply_to=h.message_id), revocations)
            else:
                self.filed.append(receipt)

    async def _file_one(self, h: MessageHeader, body: Body, descriptor: AttachmentDescriptor,
                        sender: certs.VerifiedDevice, sender_user_cert: str,
                        revocations: certs.RevocationSet) -> FilingReceipt:
        if body.record is None:
            raise FilingFailed("the message carries no patient data for the record",
                               code="no_record_data")
        try:
            image = await sdk_attachments.decrypt(
                await sdk_attachments.download(self.relay, descriptor.attachment_id),
                descriptor)
        except (ProtocolError, Exception) as exc:
            raise FilingFailed(f"the image could not be fetched or decrypted "
                               f"({type(exc).__name__})", code="image_unavailable") from exc
        if body.consent_token is None or h.consent_id is None:
            raise FilingFailed("the image was sent without a consent", code="no_consent")
        try:
            claims = peek_consent_token_unverified(body.consent_token)
            issuer_cert = (sender_user_cert if claims.iss == sender.user_id
                           else (await self.relay.user_devices(claims.iss)).user_certificate)
            sdk_attachments.check_image_consent(
                hashlib.sha256(image).digest(), body.consent_token,
                issuer_certificate=issuer_cert, trusted_orgs=self.store.state.trusted_orgs(),
                consent_id=h.consent_id)
        except Exception as exc:
            raise FilingFailed("the image is not one its consent names",
                               code="consent_mismatch") from exc
        try:
            instance = await asyncio.to_thread(
                build_instance, image, body.record, h, descriptor,
                operator=sender.user.display_name,
                default_issuer=self.config.issuer_of_patient_id or self.store.state.org_id)
        except dicom.DicomBuildError as exc:
            raise FilingFailed(f"no valid DICOM object can be made: {exc}",
                               code=_dicom_code(exc)) from exc
        ref = await self._store(instance, f"attachment {descriptor.attachment_id} of message "
                                          f"{h.message_id}")
        documents = await self._file_consent(claims, body.consent_token, body.record, h,
                                             instance.study_instance_uid, sender)
        originals = await self._original_studies(body.record, h, instance.study_instance_uid)
        filed_at = int(self.clock())
        receipt = FilingReceipt(
            attachment_id=descriptor.attachment_id, message_id=h.message_id,
            study_instance_uid=instance.study_instance_uid,
            series_instance_uid=instance.series_instance_uid,
            sop_instance_uid=instance.sop_instance_uid, filed_at=filed_at,
            retrieve_url=(ref.retrieve_url or "")[:1024],
            record_ref=instance.study_instance_uid, documents=documents,
            original_studies=originals)
        sealed_receipt = await self._tell_thread(
            h, Body(kind=BodyKind.FILING_RECEIPT, filing=receipt), revocations)
        notice = await self._statement(
            h, descriptor.attachment_id, filed_at,
            hashlib.sha256(envelope.encode_sealed(sealed_receipt)).digest())
        # The SOP Instance UID derives from the attachment id alone (build_instance); the Study
        # Instance UID derives from the patient id, so it stays out of the log.
        log.info("filed attachment %s of message %s: SOP Instance %s stored and read back, "
                 "%d consent document(s), receipt sealed to the thread; the relay expires "
                 "the copies at %s", descriptor.attachment_id, h.message_id,
                 instance.sop_instance_uid, len(documents), _iso(notice.expires_at),
                 extra={"attachment_id": descriptor.attachment_id,
                        "message_id": h.message_id})
        return receipt

    async def _file_consent_record(self, h: MessageHeader, body: Body,
                                   sender: certs.VerifiedDevice, sender_user_cert: str,
                                   revocations: certs.RevocationSet) -> None:
        """File a consent that comes without images (issue 10 item 1: "a refusal is filed as
        well, without images"): the form as Encapsulated PDF in a study of its own (its UIDs
        derive from the consent, so a retry files the same object), and the FHIR Consent;
        then seal a ``consent_filed`` receipt to the thread. A consent that does not verify,
        or names another organisation, is not filed and the sender is told why."""
        assert body.consent_token is not None
        assert body.record is not None
        record = body.record
        if not record.study_description:
            record = msgspec.structs.replace(record, study_description=CONSENT_STUDY)
        try:
            claims = await self._verified_consent(body.consent_token, sender, sender_user_cert)
            study_uid = dicom_uid("consent-study", claims.jti, record.patient_id)
            documents = await self._file_consent(claims, body.consent_token, record, h,
                                                 study_uid, sender)
        except FilingFailed as exc:
            self.failed.append((h.message_id, str(exc)))
            log.warning("could not file the consent of message %s: %s; the sender is told",
                        h.message_id, exc.code, extra={"message_id": h.message_id,
                                                       "code": exc.code})
            await self._tell_thread(h, Body(
                text=f"The record gateway could not file the consent: {exc}. It was NOT "
                     "saved to the patient's record.", reply_to=h.message_id), revocations)
            return
        filing = ConsentFiling(consent_id=claims.jti, message_id=h.message_id,
                               decision=claims.decision.value, study_instance_uid=study_uid,
                               filed_at=int(self.clock()), documents=documents)
        self.consents_filed.append(filing)  # filed: before the thread hears of it
        await self._tell_thread(h, Body(kind=BodyKind.CONSENT_FILED, consent_filing=filing),
                                revocations)
        log.info("filed consent %s (%s) of message %s: %d document(s), receipt sealed to the "
                 "thread", claims.jti, claims.decision.value, h.message_id, len(documents),
                 extra={"consent_id": claims.jti, "message_id": h.message_id})

    async def _verified_consent(self, token: str, sender: certs.VerifiedDevice,
                                sender_user_cert: str) -> ConsentClaims:
        """The token's claims once its signature verifies under its issuer's certificate
        (RFC 7515 §5.2 via protocol.consent), issued in the gateway's organisation. Checked
        at the moment it was issued: the filing records a decision made then, and a token's
        validity period limits sharing, not keeping the evidence; a token claiming to be
        issued in the future (beyond the skew) is refused."""
        try:
            claims = peek_consent_token_unverified(token)
            issuer_cert = (sender_user_cert if claims.iss == sender.user_id
                           else (await self.relay.user_devices(claims.iss)).user_certificate)
            now = int(self.clock())
            issuer = certs.verify_user_certificate(
                issuer_cert, trusted_orgs=self.store.state.trusted_orgs(), at=now)
            verified = verify_consent_token(token, issuer.identity_key, at=claims.iat,
                                            leeway=0)
        except (ProtocolError, RelayRequestError, RelayResponseError) as exc:
            # Not filed: a forged or malformed token, an issuer the directory does not know.
            # (The relay being unreachable is not this: RelayUnavailable propagates and the
            # delivery is tried again.)
            raise FilingFailed("the consent does not verify", code="consent_invalid") from exc
        if verified.iss != issuer.user_id or verified.org != self.store.state.org_id:
            raise FilingFailed("the consent was issued by someone outside this organisation",
                               code="consent_other_org")
        if verified.iat > now + CLOCK_SKEW:
            raise FilingFailed("the consent claims to be issued in the future",
                               code="consent_from_the_future")
        return verified

    async def _original_studies(self, record: RecordData, h: MessageHeader,
                                photo_study_uid: str) -> list[OriginalStudy]:
        """For a photo of a film or monitor, the studies it may stand for (issue 10 item 7:
        a photo of an x-ray is not the study itself): QIDO-RS by the patient's ID (and
        issuer) and the days around the photo (PS3.18 §10.6), leaving out the studies
        Lightbox itself files and any study with only non-acquisition objects (photos,
        documents, secondary captures). Best effort: a failed search only means no link."""
        if record.capture is not CaptureKind.FILM:
            return []
        sent = dt.datetime.fromtimestamp(h.sent_at, dt.UTC).date()
        window = (sent - dt.timedelta(days=self.config.original_lookback_days),
                  sent + dt.timedelta(days=1))  # a day after: the PACS's local date may lead
        try:
            found = await self.pacs.find_studies(
                record.patient_id,
                issuer_of_patient_id=record.issuer_of_patient_id or None,
                study_dates=window, limit=50)
        except (PacsError, ValueError) as exc:
            log.warning("original study search for message %s failed (%s); its receipt has no "
                        "link to the original", h.message_id, type(exc).__name__,
                        extra={"message_id": h.message_id, "error_type": type(exc).__name__})
            return []
        originals = [s for s in found if s.study_instance_uid != photo_study_uid
                     and set(s.modalities) - NON_ACQUISITION_MODALITIES]
        originals.sort(key=lambda s: (s.study_date or dt.date.min,
                                      s.study_time or dt.time.min), reverse=True)
        return [self._original(s) for s in originals[:4]]

    def _original(self, study: StudyRef) -> OriginalStudy:
        url = (self.config.viewer_url.replace("{study_instance_uid}", study.study_instance_uid)
               if self.config.viewer_url else (study.retrieve_url or ""))
        if urlsplit(url).scheme.lower() not in {"http", "https"} or any(c.isspace() for c in url) \
                or len(url) > 1024:
            url = ""
        return OriginalStudy(
            study_instance_uid=study.study_instance_uid,
            study_date=study.study_date.isoformat() if study.study_date else None,
            modalities=[m for m in study.modalities if _MODALITY.fullmatch(m)][:16],
            description=(study.study_description or "")[:64], url=url)

    async def _file_consent(self, claims: ConsentClaims, token: str, record: RecordData,
                            h: MessageHeader, study_instance_uid: str,
                            sender: certs.VerifiedDevice) -> list[FiledDocument]:
        """File the consent: the form in the images' study (stored and read back like the
        image; a form that cannot be filed fails the image's filing, so nothing expires
        without its consent on record), and the FHIR Consent."""
        clinician = sender.user.display_name if claims.iss == sender.user_id else ""
        try:
            form = await asyncio.to_thread(
                build_consent_form, claims, token, record, h,
                study_instance_uid=study_instance_uid, clinician_name=clinician,
                operator=sender.user.display_name,
                default_issuer=self.config.issuer_of_patient_id or self.store.state.org_id)
        except Exception as exc:  # DicomBuildError, ConsentPdfError
            raise FilingFailed(f"the consent form cannot be filed: {exc}",
                               code="consent_form_invalid") from exc
        await self._store(form, f"the consent form of consent {claims.jti} (message "
                                f"{h.message_id})")
        fhir = fhir_consent_json(claims)
        return [
            FiledDocument(kind="consent_form", consent_id=claims.jti,
                          series_instance_uid=form.series_instance_uid,
                          sop_instance_uid=form.sop_instance_uid,
                          sop_class_uid=form.sop_class_uid),
            FiledDocument(kind="fhir_consent", consent_id=claims.jti,
                          sha256=hashlib.sha256(fhir).hexdigest(),
                          location=(await self._post_fhir(claims, record))[:1024]),
        ]

    async def _post_fhir(self, claims: ConsentClaims, record: RecordData) -> str:
        """File the FHIR Consent on the configured server (gateway/fhir.py: conditional create
        on the consent's identifier, so a retry finds the one already there); returns its
        URL, or "" when no server is configured. An unreachable server (or its credentials
        refused) is retried like the PACS; a refusal fails the filing."""
        if self.fhir is None:
            return ""
        attempt = 0
        while True:
            try:
                issuer = record.issuer_of_patient_id or self.config.issuer_of_patient_id or \
                    self.store.state.org_id
                return await self.fhir.create_consent(
                    to_fhir_consent(claims, patient_identifier=(
                        patient_id_system(issuer), record.patient_id)),
                    identifier_system=CONSENT_IDENTIFIER_SYSTEM,
                    identifier_value=f"urn:uuid:{claims.jti}")
            except (FhirUnavailable, FhirAuthError) as exc:
                attempt += 1
                await self._pause(attempt, "FHIR server unavailable", exc,
                                  f"the FHIR Consent of consent {claims.jti}")
            except FhirError as exc:
                raise FilingFailed(f"the FHIR server refused the Consent: {exc}",
                                   code=f"fhir_refused ({type(exc).__name__})") from exc

    async def _pause(self, attempt: int, what: str, exc: Exception, held: str) -> None:
        """Exponential backoff with jitter before trying an unreachable server again."""
        ceiling = min(self.config.retry_max, self.config.retry_base * 2 ** min(attempt, 16))
        delay = random.uniform(ceiling / 2, ceiling)
        log.warning("%s (%s): holding %s, attempt %d failed, next in %.1f s; nothing expires "
                    "meanwhile", what, type(exc).__name__, held, attempt, delay,
                    extra={"count": attempt, "error_type": type(exc).__name__})
        await asyncio.sleep(delay)

    async def _store(self, instance: dicom.DicomInstance, held: str) -> InstanceRef:
        """STOW-RS then read back; an unreachable PACS is retried until it answers. ``held``
        names what waits, for the log (ids only)."""
        attempt = 0
        while True:
            try:
                await self.pacs.store([instance], study_instance_uid=instance.study_instance_uid)
                ref = await self.pacs.verify_stored(instance)
            except (PacsUnavailable, PacsAuthError) as exc:
                attempt += 1
                await self._pause(attempt, "PACS unavailable", exc, held)
                continue
            except PacsError as exc:  # rejected (400/409), verification failed, protocol
                raise FilingFailed(f"the PACS refused it: {exc}",
                                   code=_pacs_code(exc)) from exc
            if attempt:
                log.info("PACS answered again: %s stored after %d failed attempt(s)", held,
                         attempt, extra={"count": attempt})
            return ref

    async def _statement(self, h: MessageHeader, attachment_id: str, filed_at: int,
                         receipt_sha256: bytes) -> FiledNotice:
        st = self.store.state
        body = FilingStatement(
            v=statements.STATEMENT_VERSION,
            statement_id=str(uuid.uuid5(UID_NAMESPACE, f"filing/{attachment_id}")),
            device_id=st.device_id, attachment_id=attachment_id, message_id=h.message_id,
            thread_id=h.thread_id, filed_at=filed_at, receipt_sha256=receipt_sha256)
        token = statements.issue_filing_statement(body, st.device_keys().signing)
        assert self.connection is not None
        while True:
            req_id = uuid.uuid4().hex
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[FiledNotice] = loop.create_future()
            self._waiting[attachment_id] = fut
            self._waiting[req_id] = fut
            try:
                await self.connection.send_frame(Filing(req_id=req_id, statement=token))
                async with asyncio.timeout(self.config.statement_timeout):
                    return await fut
            except SendRefused as refused:
                raise FilingFailed(f"the relay refused the filing ({refused.code})",
                                   code=f"relay_refused ({refused.code})") from refused
            except (TimeoutError, ConnectionError) as exc:
                log.warning("no answer from the relay to the filing of attachment %s (%s); "
                            "sending it again", attachment_id, type(exc).__name__,
                            extra={"attachment_id": attachment_id})
                await asyncio.sleep(self._backoff[0])  # reconnecting: send it again
            finally:
                self._waiting.pop(attachment_id, None)
                self._waiting.pop(req_id, None)

    # -- answering into the thread -----------------------------------------------------------

    async def _tell_thread(self, h: MessageHeader, body: Body,
                           revocations: certs.RevocationSet) -> SealedMessage:
        """Seal ``body`` to the thread's participants (those the image went to, corrected by
        the relay's device-set answer) and send it; returns the sealed message."""
        st = self.store.state
        plain = encode_body(body)
        wanted = {h.sender_device_id, *h.recipient_devices} - {st.device_id}
        assert self.connection is not None
        for _ in range(4):
            bundles = await self._bundles(sorted(wanted), revocations)
            header = MessageHeader(
                v=1, message_id=str(uuid.uuid4()), thread_id=h.thread_id,
                sender_user_id=st.user_id, sender_device_id=st.device_id,
                sent_at=int(self.clock()), purpose=Purpose.DIRECT_CARE,
                priority=Priority.ROUTINE, consent_id=None, attachment_ids=[],
                recipient_devices=[b.device.device_id for b in bundles])
            sealed = await asyncio.to_thread(envelope.seal_message, header, plain,
                                             sender=st.device_keys(), recipients=bundles)
            try:
                await self.connection.send(sealed)
                return sealed
            except SendRefused as refused:
                if refused.code != ErrorCode.DEVICE_SET_MISMATCH.value:
                    raise FilingFailed(f"the thread refused the message ({refused.code})",
                                       code=f"thread_refused ({refused.code})") from refused
                wanted = (wanted | set(refused.missing or [])) - set(refused.extra or []) \
                    - set(refused.stale or [])
        raise FilingFailed("the thread's devices kept changing", code="thread_unsettled")

    async def _bundles(self, device_ids: Sequence[str], revocations: certs.RevocationSet
                       ) -> list[envelope.RecipientBundle]:
        out: list[envelope.RecipientBundle] = []
        if not device_ids:
            return out
        claimed = await self.relay.claim_keys(list(device_ids))
        for key in claimed.keys:
            verified = certs.verify_chain(key.user_certificate, key.device_certificate,
                                          trusted_orgs=self.store.state.trusted_orgs(),
                                          at=int(self.clock()), revocations=revocations)
            if verified.device_id in device_ids and verified.device.kind.value != "gateway":
                out.append(envelope.RecipientBundle.from_tokens(
                    verified, key.signed_prekey, key.one_time_prekey))
        return out


# --- the program ---------------------------------------------------------------------------


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """The gateway's log: a line per event with ids and codes, never patient data (what it
    says: docs/USER_GUIDE.md, "Record gateway"). ``level`` applies to Lightbox's own loggers;
    libraries log warnings only, whatever the level: httpx logs every request's URL (a QIDO-RS
    URL carries the Patient ID) and fontTools the glyphs of the consent form it subsets."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("lightbox").setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lightbox-gateway", description="Lightbox record gateway: files every image it "
        "receives into PACS (DICOMweb STOW-RS), confirms it by reading it back, and reports "
        "the filing so device copies expire. PACS settings: LIGHTBOX_PACS_URL, "
        "LIGHTBOX_PACS_USERNAME, LIGHTBOX_PACS_PASSWORD_FILE (docs/OPERATIONS.md).")
    p.add_argument("--version", action="version", version=f"lightbox-gateway {VERSION}")
    p.add_argument("--profile", default=default_profile(DeviceKind.GATEWAY),
                   help="the gateway device's key store profile, as `lightbox enroll --kind "
                   "gateway` made it (default: $LIGHTBOX_PROFILE, else 'gateway')")
    p.add_argument("--issuer", default=os.environ.get("LIGHTBOX_GATEWAY_ISSUER", ""),
                   help="Issuer of Patient ID when a message names none (default: the org id)")
    p.add_argument("--fhir-url", default=os.environ.get("LIGHTBOX_FHIR_URL", ""),
                   help="FHIR R4 base URL to file each Consent on (optional; without it the "
                   "Consent is only named in the receipt by its SHA-256); credentials: "
                   "LIGHTBOX_FHIR_TOKEN_FILE or LIGHTBOX_FHIR_USERNAME + "
                   "LIGHTBOX_FHIR_PASSWORD_FILE (docs/OPERATIONS.md)")
    p.add_argument("--viewer-url", default=os.environ.get("LIGHTBOX_PACS_VIEWER_URL", ""),
                   help="where clinicians view a study: an http(s) URL template holding "
                   "{study_instance_uid} (default: the study's DICOMweb URL)")
    p.add_argument("--original-lookback-days", type=int, default=int(
        os.environ.get("LIGHTBOX_ORIGINAL_LOOKBACK_DAYS", "2")),
                   help="days before a photo of a film searched for its original study")
    p.add_argument("--retry-max", type=float, default=300.0,
                   help="longest wait between retries of an unreachable PACS or FHIR "
                   "server, in seconds")
    args = p.parse_args(argv)
    if args.viewer_url and (urlsplit(args.viewer_url).scheme not in {"http", "https"}
                            or "{study_instance_uid}" not in args.viewer_url):
        p.error("--viewer-url must be an http(s) URL holding {study_instance_uid}")
    if not 0 <= args.original_lookback_days <= 30:
        p.error("--original-lookback-days must be between 0 and 30")
    return run_command("lightbox-gateway", lambda: _serve(args), failure=2,
                       details_dir=lightbox_home(),
                       login_hint="enrol the gateway again, or give its password")


def _serve(args: argparse.Namespace) -> int:
    """Run the gateway until it is stopped (Ctrl-C: 0) or the relay ends its access (the
    reason is raised, for main's one sentence)."""
    try:
        settings = PacsSettings.from_env()
        fhir_settings = FhirSettings.from_env(url=args.fhir_url) if args.fhir_url else None
    except (ValueError, OSError) as exc:
        print(f"lightbox-gateway: {exc}", file=sys.stderr)
        return 2
    keystore = KeyStore.for_profile(args.profile)
    if not keystore.exists():
        print(f"lightbox-gateway: profile {args.profile!r} holds no device ({keystore.directory})"
              f": enrol the gateway first with `lightbox enroll --kind gateway --server URL "
              f"--code CODE`", file=sys.stderr)
        return 2
    password = os.environ.get("LIGHTBOX_PASSWORD") or getpass.getpass("Gateway password: ")
    try:
        store = keystore.open(password)
    except KeyStoreError as exc:
        print(f"lightbox-gateway: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            pacs = await stack.enter_async_context(PacsClient(settings))
            fhir = None if fhir_settings is None else await stack.enter_async_context(
                FhirClient(fhir_settings))
            gw = RecordGateway(store, pacs, password=password, fhir=fhir, config=GatewayConfig(
                retry_max=args.retry_max, issuer_of_patient_id=args.issuer,
                viewer_url=args.viewer_url, original_lookback_days=args.original_lookback_days))
            await gw.start()
            assert gw.connection is not None
            try:
                stopped = await gw.connection.stopped
            finally:
                await gw.stop()
            raise stopped

    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))  # only once it runs for real
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
