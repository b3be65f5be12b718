"""``lightbox-gateway``: the record gateway that files images into PACS (DICOMweb STOW-RS).

Why (docs/ARCHITECTURE.md §6, PROTOCOL.md §15): guidance for clinical images says to save the image
in the patient's record, then delete it from the device. The gateway is a credentialed service
device (a service account with the role ``record_gateway``, device kind ``gateway``) that every
direct-care image
is also sealed to. For each image it receives it:

1. opens the message (the sender's chain verified against the pinned organisation key), checks
   the image against the consent it was sent under, and takes the patient and study data from
   the SEALED body only (never from anything the relay can read);
2. builds the DICOM object (Secondary Capture for a photo of a film or monitor, VL Photographic
   for a clinical photo) with UIDs derived from the consult and attachment ids, so a retry
   stores the same object again rather than a second one;
3. stores it with STOW-RS and proves it by reading it back (QIDO-RS + WADO-RS, pixel data
   compared byte for byte): :meth:`clients.gateway.pacs.PacsClient.verify_stored`;
4. files the consent with it (CLINICAL_SAFETY.md): the human-readable consent form (copy for the
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
then is the delivery acknowledged. A consult handed over at a shift change (a copy naming its
original in ``handover_of``) is passed over, silently: its original is what is filed. The
gateway keeps no copy: the image lives in memory for the duration of one filing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from clients.gateway import dicom, identity
from clients.gateway.checks import original_studies, verified_consent
from clients.gateway.connection import GatewayConnection
from clients.gateway.errors import AlreadyFiled, FilingFailed, FilingHeld, FilingUnproven
from clients.gateway.fhir import FhirAuthError, FhirClient, FhirError, FhirUnavailable
from clients.gateway.pacs import (
    InstanceRef,
    PacsAuthError,
    PacsClient,
    PacsError,
    PacsUnavailable,
)
from clients.gateway.records import (
    CONSENT_IDENTIFIER_SYSTEM,
    CONSENT_STUDY,
    UID_NAMESPACE,
    build_consent_form,
    build_instance,
    dicom_code,
    dicom_uid,
    fhir_consent_json,
    image_uids,
    iso_date,
    pacs_code,
    patient_id_system,
)
from clients.sdk import attachments as sdk_attachments
from clients.sdk.errors import (
    FlowError,
    RelayRequestError,
    RelayUnavailable,
    SessionEnded,
)
from clients.sdk.http import RelayHTTP
from clients.sdk.identity import (
    forget_one_time_prekey,
    replenish_one_time_prekeys,
)
from clients.sdk.keystore import DeviceState
from clients.sdk.session import SESSION_ENDED, Session
from clients.sdk.socket import SendRefused
from clients.sdk.trust import Trust
from protocol import api, certs, envelope, statements
from protocol.attachments import AttachmentDescriptor
from protocol.body import (
    Body,
    BodyKind,
    ConsentFiling,
    FiledDocument,
    FilingReceipt,
    HandoverOf,
    RecordData,
    decode_body,
    encode_body,
)
from protocol.consent import (
    ConsentClaims,
    peek_consent_token_unverified,
    to_fhir_consent,
)
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.frames import Deliver, Error, FiledNotice, Filing, Frame, KeysLow, Revoked
from protocol.model import DeviceKind, MessageHeader, Priority, Purpose, SealedMessage
from protocol.statements import FilingStatement

__all__ = [
    "LOGGED_IN_AGAIN",
    "AlreadyFiled",
    "FilingFailed",
    "FilingHeld",
    "FilingUnproven",
    "GatewayConfig",
    "RecordGateway",
    "documents_filed",
]

log = logging.getLogger("lightbox.gateway")

LOGGED_IN_AGAIN = ("the relay refused the gateway's refresh token (it expired, or its session "
                   "ended): logged in again with the gateway's password and device key")


def _may_pass(exc: BaseException) -> bool:
    """A failure to fetch an image that may pass: the relay out of reach, busy or failing
    (429, 5xx), or the gateway's session ended (its connection stops the gateway); not a
    refusal that another try would meet again (the attachment gone, a ciphertext that does not
    decrypt)."""
    if isinstance(exc, RelayUnavailable | TimeoutError | ConnectionError | SessionEnded):
        return True
    return isinstance(exc, RelayRequestError) and (
        exc.status == 429 or exc.status >= 500 or exc.code in SESSION_ENDED)


class StateStore(Protocol):
    @property
    def state(self) -> DeviceState: ...

    def save(self, state: DeviceState) -> None: ...

    def update(self, change: Callable[[DeviceState], DeviceState]) -> DeviceState: ...


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    retry_base: float = 1.0  # seconds before the first retry of an unreachable PACS
    retry_max: float = 300.0  # longest wait between retries
    issuer_of_patient_id: str = ""  # default Issuer of Patient ID when the body names none
    statement_timeout: float = 30.0
    # Where a clinician views a study: a URL template with {study_instance_uid} (the PACS
    # viewer, LIGHTBOX_PACS_VIEWER_URL); empty: the study's DICOMweb retrieve URL.
    viewer_url: str = ""
    # Days before the photo's date searched for the original study it shows (CLINICAL_SAFETY.md).
    original_lookback_days: int = 2
    # The wrong-patient check before filing (clients/gateway/identity.py; --patient-check,
    # LIGHTBOX_PATIENT_CHECK): the typed identity must be one the PACS (and the FHIR server,
    # when configured) already knows, by name and birth date.
    patient_check: bool = False


def _close_reason(code: int | None, reason: str) -> str:
    """Why a relay connection ended, for the log: the close code and its name, never the
    relay's free text."""
    if code is None:
        return "no close from the relay: the relay or the network went away" \
            if reason != "client error" else "an error while handling a frame"
    try:
        return f"closed by the relay: {code} {CloseCode(code).name.lower()}"
    except ValueError:
        return f"closed by the relay: {code}"


def documents_filed(documents: Sequence[FiledDocument]) -> str:
    """What was filed beside an image or a refusal, for the log: the consent form, and a FHIR
    Consent only when a FHIR server took it (``location``); without one the FHIR Consent is
    only inside the form (clients/gateway/records.py ``consent_attachments``)."""
    if not any(d.kind == "consent_form" for d in documents):
        return "no consent documents"
    if any(d.kind == "fhir_consent" and d.location for d in documents):
        return "the consent form and the FHIR Consent on the FHIR server"
    return "the consent form (no FHIR server: the FHIR Consent is only inside the form)"


class RecordGateway:
    """One gateway device's filing loop (``await start()``, then it runs until ``stop()``)."""

    def __init__(self, store: StateStore, pacs: PacsClient, *, password: str | None = None,
                 relay: RelayHTTP | None = None, ws_url: str | None = None,
                 config: GatewayConfig | None = None, clock: Callable[[], float] = time.time,
                 backoff_base: float = 0.2, backoff_max: float = 10.0,
                 fhir: FhirClient | None = None) -> None:
        self.store, self.pacs, self.clock, self.fhir = store, pacs, clock, fhir
        self.config = config or GatewayConfig()
        st = store.state
        # The same session and trust checks as every client (clients/sdk/session.py,
        # clients/sdk/trust.py): rotated refresh tokens are kept (a restarted gateway
        # presenting the one it replaced would be taken for a stolen copy), revocation lists
        # are rollback-checked, claimed prekeys verified.
        self.session = Session(store, password=password, clock=clock)
        self.relay = relay or RelayHTTP(
            st.server_url, device=st.device_keys().signing, tokens=st.session,
            on_tokens=self.session.save_tokens, now=clock,
            login_again=self._log_in_again if password is not None else None)
        self.session.relay = self.relay
        self.trust = Trust(self.relay, store, clock=clock)
        base = st.server_url.rstrip("/")
        self.ws_url = ws_url or ("ws" + base[len("http"):] + "/v1/ws")
        self._backoff = (backoff_base, backoff_max)
        self.connection: GatewayConnection | None = None
        self._relay_watch: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[FiledNotice]] = {}
        self.filed: list[FilingReceipt] = []
        self.consents_filed: list[ConsentFiling] = []
        self.failed: list[tuple[str, str]] = []  # (attachment id, reason)

    # -- lifecycle ---------------------------------------------------------------------------

    async def _log_in_again(self) -> api.TokenPair:
        """In place of a refresh the relay refused (the refresh token expired: a gateway idle
        for ``LIGHTBOX_REFRESH_TOKEN_TTL``; or its session ended): a login with the password and
        the device key's signature over the relay's nonce (docs/PROTOCOL.md §11
        ``/v1/auth/login``), at once, so that the request that met the refusal goes on
        (clients/sdk/transport.py) and no filing waits for the relay to deliver it again. A
        login refused in turn stops the gateway (clients/gateway/connection.py)."""
        tokens = await self.session.login_again()
        log.info(LOGGED_IN_AGAIN, extra={"device_id": tokens.device_id})
        return tokens

    async def _access_token(self) -> str:
        return await self.session.access_token()

    async def start(self) -> None:
        keys = self.store.state.device_keys()
        await self._access_token()
        self.connection = GatewayConnection(
            self.ws_url, device_id=keys.device_id, access_token=self._access_token,
            sign=keys.sign, on_message=self.handle, on_event=self._on_event,
            backoff_base=self._backoff[0], backoff_max=self._backoff[1])
        await self.connection.start()
        self._relay_watch = asyncio.create_task(self._watch_relay(self.connection),
                                                name="gateway-relay-watch")
        st = self.store.state
        log.info("record gateway %s (device %s) started: relay %s, %r, FHIR Consents %s",
                 st.login, st.device_id, st.server_url, self.pacs,
                 "to the FHIR server" if self.fhir is not None else "named in receipts only",
                 extra={"device_id": st.device_id})

    async def stop(self) -> None:
        if self._relay_watch is not None:  # stopping here is no lost connection to log
            self._relay_watch.cancel()
        if self.connection is not None:
            await self.connection.stop()
        await self.relay.aclose()

    async def _watch_relay(self, conn: GatewayConnection) -> None:
        """One log line when the relay connection is lost (why, by close code: never a
        message's content) and one when it is back (docs/USER_GUIDE.md, "The record gateway"
        §4). The first connection is not told: the start line is."""
        loop = asyncio.get_running_loop()
        lost_at: float | None = None
        while not conn.stopped.done():
            if not await conn.wait_or_stopped(conn.connected):
                return
            if lost_at is not None:
                log.info("relay connection back after %.0f s: deliveries held at the relay "
                         "meanwhile come now", loop.time() - lost_at)
            # Connection exposes no "disconnected" event (clients/sdk/client.py polls too).
            while conn.connected.is_set() and not conn.stopped.done():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.sleep(0)  # a close for good is told as the gateway's stop instead
            if conn.stopped.done():
                return
            lost_at = loop.time()
            log.info("relay connection lost (%s); reconnecting, and the relay holds deliveries "
                     "meanwhile", _close_reason(*conn.last_close))

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
        elif isinstance(frame, Revoked):  # chains verified before may now be revoked
            self.trust.forget()
            await self.trust.revocations(force=True)

    async def _replenish(self, count: int) -> None:
        await replenish_one_time_prekeys(self.relay, self.store, count, now=int(self.clock()))

    # -- certificates ------------------------------------------------------------------------

    async def _revocations(self) -> certs.RevocationSet:
        """The newest organisation-signed list, never older than the one held: a bad or
        older list from the relay raises, and the delivery is tried again later."""
        return await self.trust.revocations()

    async def _chain(self, user_id: str, device_id: str,
                     revocations: certs.RevocationSet) -> tuple[certs.VerifiedDevice, str]:
        try:
            chain = await self.trust.device_chain(user_id, device_id)
        except FlowError as exc:
            raise FilingFailed("the sender's device is not a current device of the sender",
                               code="sender_not_current") from exc
        return chain.verified, chain.user_certificate

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
        await self._handle_body(h, body, sender, sender_user_cert, revocations)
        # Only now, the delivery done (filed, or failed for good and the sender told): a
        # filing interrupted before this point is tried again, or delivered again, and must
        # still open (clients/gateway/connection.py). Forward secrecy (PROTOCOL §5.5) waits
        # for the record to hold the image, as a clinician's device waits for its vault.
        forget_one_time_prekey(self.store, sealed)

    async def _handle_body(self, h: MessageHeader, body: Body, sender: certs.VerifiedDevice,
                           sender_user_cert: str, revocations: certs.RevocationSet) -> None:
        """What one opened delivery asks of the gateway (:meth:`handle`)."""
        if body.kind is BodyKind.CONSENT_RECORD:
            await self._file_consent_record(h, body, sender, sender_user_cert, revocations)
            return
        if body.kind is not BodyKind.TEXT or not body.attachments:
            return  # nothing to file (text, receipts of other gateways)
        if not isinstance(body.handover_of, msgspec.UnsetType):
            self._pass_over_copy(h, body.handover_of, len(body.attachments))
            return
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
            except AlreadyFiled as exc:
                self.failed.append((aid, str(exc)))
                log.warning("attachment %s of message %s is already in the PACS from another "
                            "message: not stored again; the sender is told", aid,
                            h.message_id, extra={"attachment_id": aid,
                                                 "message_id": h.message_id, "code": exc.code})
                await self._tell_thread(h, Body(
                    text=f"The record gateway did not file the image {aid} again: {exc}.",
                    reply_to=h.message_id), revocations)
            except FilingFailed as exc:
                self.failed.append((aid, str(exc)))
                log.warning("could not file attachment %s of message %s: %s; the sender is "
                            "told, and nothing expires before the hard limit", aid,
                            h.message_id, exc.code, extra={
                                "attachment_id": aid, "message_id": h.message_id,
                                "code": exc.code})
                text = (f"The record gateway HELD the image {descriptor.attachment_id}: "
                        f"{exc}. Nothing was filed, and nothing expires until the hard limit. "
                        f"Check the patient's identity; the sender corrects it with: lightbox "
                        f"correct-patient {h.thread_id} {h.message_id} --patient-id ID "
                        f"--patient-name FAMILY^GIVEN --birth-date YYYY-MM-DD"
                        if isinstance(exc, FilingHeld) else
                        f"The record gateway could not prove the filing of the image "
                        f"{descriptor.attachment_id}: {exc}. The PACS accepted it, so it may "
                        f"be in the patient's record: the records team checks it in the PACS. "
                        f"Nothing will expire until the hard limit."
                        if isinstance(exc, FilingUnproven) else
                        f"The record gateway could not file the image "
                        f"{descriptor.attachment_id}: {exc}. It was NOT saved to the "
                        f"patient's record; nothing will expire until the hard limit.")
                await self._tell_thread(h, Body(text=text, reply_to=h.message_id), revocations)
            else:
                self.filed.append(receipt)

    def _pass_over_copy(self, h: MessageHeader, original: HandoverOf, images: int) -> None:
        """A consult handed over at a shift change is never filed, and nothing is said of it
        in the thread: its original is what is filed (docs/PROTOCOL.md §16.4, §14
        ``handover_of``). The copy is the same consult sealed again by a device that held it:
        the same body and the same images (the same attachment ids, their keys wrapped again),
        in a new message signed by the resealing device at the moment of the reseal. The
        original, an image for a filing purpose, went to every record gateway of the
        organisation (the relay refuses it otherwise, ``filing_gateway_missing``,
        docs/PROTOCOL.md §15), so it was filed, held or refused from there, and its sender was
        told. Filing the copy would find it already filed and alarm the thread at every shift
        change, or file it as the resealer's at the time of the reseal. This holds also for a
        gateway that never received the original (enrolled after it was sent): the relay
        files an image once, whichever gateway of the organisation filed it. An image that
        was never filed expires at the hard limit, its sender told (docs/PROTOCOL.md §15)."""
        log.info("message %s is a copy of message %s handed over at a shift change: its %d "
                 "image(s) are filed from the original, not from the copy; nothing filed, "
                 "nothing said in the thread", h.message_id, original.message_id, images,
                 extra={"message_id": h.message_id, "thread_id": h.thread_id})

    async def _file_one(self, h: MessageHeader, body: Body, descriptor: AttachmentDescriptor,
                        sender: certs.VerifiedDevice, sender_user_cert: str,
                        revocations: certs.RevocationSet) -> FilingReceipt:
        if body.record is None:
            raise FilingFailed("the message carries no patient data for the record",
                               code="no_record_data")
        # Before the patient check: a filed image is never filed again, whatever identity a
        # correction or a stale message names (the check would otherwise hold, or pass, it).
        waited = await self._not_filed_elsewhere(h, descriptor)
        if self.config.patient_check:
            verdict = await self._patient_verdict(body.record, h)
            if verdict.holds:
                raise FilingHeld(verdict.reason, code=verdict.code)
        try:
            image = await sdk_attachments.decrypt(
                await sdk_attachments.download(self.relay, descriptor.attachment_id),
                descriptor)
        except Exception as exc:
            if _may_pass(exc):
                # The relay out of reach or failing for a moment, or the session to renew: the
                # filing is tried again (clients/gateway/connection.py), and the sender is not
                # told the image is lost.
                raise
            raise FilingFailed(f"the image could not be fetched or decrypted "
                               f"({type(exc).__name__})", code="image_unavailable") from exc
        claims: ConsentClaims | None = None
        if body.consent_token is None and h.emergency is not None:
            # Break-glass (docs/PROTOCOL.md §17): direct care without a consent, declared in
            # the signed header; filed like any image, without a consent form (there is none
            # yet), by a clinician of this organisation only.
            if sender.user.org_id != self.store.state.org_id:
                raise FilingFailed("an emergency image without consent came from another "
                                   "organisation", code="break_glass_other_org")
        elif body.consent_token is None or h.consent_id is None:
            raise FilingFailed("the image was sent without a consent", code="no_consent")
        else:
            try:
                claims = peek_consent_token_unverified(body.consent_token)
                issuer_cert = (sender_user_cert if claims.iss == sender.user_id
                               else (await self.relay.user_devices(claims.iss)
                                     ).user_certificate)
                sdk_attachments.check_image_consent(
                    hashlib.sha256(image).digest(), body.consent_token,
                    issuer_certificate=issuer_cert,
                    trusted_orgs=self.store.state.trusted_orgs(), consent_id=h.consent_id)
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
                               code=dicom_code(exc)) from exc
        ref = await self._store(instance, f"attachment {descriptor.attachment_id} of message "
                                          f"{h.message_id}", failed=waited)
        documents = [] if claims is None or body.consent_token is None else \
            await self._file_consent(claims, body.consent_token, body.record, h,
                                     instance.study_instance_uid, sender)
        originals, searched = await original_studies(
            self.pacs, body.record, h, instance.study_instance_uid,
            lookback_days=self.config.original_lookback_days, viewer_url=self.config.viewer_url)
        filed_at = int(self.clock())
        receipt = FilingReceipt(
            attachment_id=descriptor.attachment_id, message_id=h.message_id,
            study_instance_uid=instance.study_instance_uid,
            series_instance_uid=instance.series_instance_uid,
            sop_instance_uid=instance.sop_instance_uid, filed_at=filed_at,
            retrieve_url=(ref.retrieve_url or "")[:1024],
            record_ref=instance.study_instance_uid, documents=documents,
            original_studies=originals, original_search=searched)
        sealed_receipt = await self._tell_thread(
            h, Body(kind=BodyKind.FILING_RECEIPT, filing=receipt), revocations)
        notice = await self._statement(
            h, descriptor.attachment_id, filed_at,
            hashlib.sha256(envelope.encode_sealed(sealed_receipt)).digest())
        # The SOP Instance UID derives from the attachment id alone (build_instance); the Study
        # Instance UID derives from the patient id, so it stays out of the log.
        log.info("filed attachment %s of message %s: SOP Instance %s stored and read back, "
                 "%s, receipt sealed to the thread; the relay expires the copies at %s",
                 descriptor.attachment_id, h.message_id, instance.sop_instance_uid,
                 documents_filed(documents), iso_date(notice.expires_at),
                 extra={"attachment_id": descriptor.attachment_id,
                        "message_id": h.message_id})
        return receipt

    async def _not_filed_elsewhere(self, h: MessageHeader,
                                   descriptor: AttachmentDescriptor) -> int:
        """Raise :class:`AlreadyFiled` when the PACS holds this image (its SOP Instance UID
        derives from the attachment alone) under another message's series: a
        ``correct-patient`` of a filed image, or a stale copy. The same series is this message
        filed before a crash or a lost statement: storing it again is idempotent, so it goes
        on. An unreachable PACS is waited for like a filing (nothing expires meanwhile);
        returns the failed attempts, for the log of the store that follows."""
        series, sop = image_uids(h, descriptor)
        attempt = 0
        while True:
            try:
                held = await self.pacs.find_instances(sop)
                break
            except (PacsUnavailable, PacsAuthError) as exc:
                attempt += 1
                await self._pause(attempt, "PACS unavailable", exc,
                                  f"attachment {descriptor.attachment_id} of message "
                                  f"{h.message_id}")
            except PacsError as exc:  # a refused search must not let it be filed twice
                raise FilingFailed(f"the PACS could not be searched for the image: {exc}",
                                   code=pacs_code(exc)) from exc
        elsewhere = [ref for ref in held if ref.series_instance_uid != series]
        if elsewhere:
            raise AlreadyFiled(elsewhere[0].study_instance_uid)
        return attempt

    async def _patient_verdict(self, record: RecordData, h: MessageHeader) -> identity.Verdict:
        """What the record says of the typed Patient ID (clients/gateway/identity.py): its
        PACS studies (QIDO-RS) and FHIR Patients. An unreachable PACS or FHIR server is waited
        for like a filing (nothing expires meanwhile); one that refuses the search holds."""
        issuer = record.issuer_of_patient_id or None
        known: list[identity.Known] = []
        attempt = 0
        while True:
            try:
                studies = await self.pacs.find_studies(
                    record.patient_id, issuer_of_patient_id=issuer, limit=50)
                known = [identity.Known("PACS", s.patient_name, s.patient_birth_date)
                         for s in studies]
                if self.fhir is not None:
                    system = patient_id_system(issuer or self.config.issuer_of_patient_id
                                               or self.store.state.org_id)
                    for resource in await self.fhir.find_patients(record.patient_id,
                                                                  system=system):
                        known += identity.from_fhir_patient(resource)
                break
            except (PacsUnavailable, PacsAuthError, FhirUnavailable, FhirAuthError) as exc:
                attempt += 1
                await self._pause(attempt, "record unavailable for the patient check", exc,
                                  f"the patient check of message {h.message_id}")
            except (PacsError, FhirError, ValueError) as exc:
                return identity.Verdict("patient_check_failed", "the record could not be "
                                        f"searched for this patient ({type(exc).__name__})")
        verdict = identity.judge(record, known)
        log.info("patient check of message %s: %s", h.message_id, verdict.code,
                 extra={"message_id": h.message_id, "code": verdict.code})
        return verdict

    async def _file_consent_record(self, h: MessageHeader, body: Body,
                                   sender: certs.VerifiedDevice, sender_user_cert: str,
                                   revocations: certs.RevocationSet) -> None:
        """File a consent that comes without images (CLINICAL_SAFETY.md: "a refusal is filed as
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
            claims = await verified_consent(body.consent_token, sender, sender_user_cert,
                                            relay=self.relay, state=self.store.state,
                                            now=int(self.clock()))
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
        log.info("filed consent %s (%s) of message %s: %s, receipt sealed to the thread",
                 claims.jti, claims.decision.value, h.message_id, documents_filed(documents),
                 extra={"consent_id": claims.jti, "message_id": h.message_id})

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

    async def _store(self, instance: dicom.DicomInstance, held: str, *,
                     failed: int = 0) -> InstanceRef:
        """STOW-RS then read back; an unreachable PACS is retried until it answers. ``held``
        names what waits, for the log (ids only); ``failed`` counts attempts already failed
        (the filed-already check before it)."""
        attempt = failed
        while True:
            stored = False
            try:
                await self.pacs.store([instance], study_instance_uid=instance.study_instance_uid)
                stored = True
                ref = await self.pacs.verify_stored(instance)
            except (PacsUnavailable, PacsAuthError) as exc:
                attempt += 1
                await self._pause(attempt, "PACS unavailable", exc, held)
                continue
            except PacsError as exc:  # rejected (400/409), verification failed, protocol
                if stored and await self._held_twice(instance):
                    # What was sent IS in the PACS, unreadable beside another copy: never
                    # "NOT saved". (A different object kept under our UIDs is NOT ours saved.)
                    raise FilingUnproven(f"reading it back failed: {exc}",
                                         code=pacs_code(exc)) from exc
                raise FilingFailed(f"the PACS refused it: {exc}",
                                   code=pacs_code(exc)) from exc
            if attempt:
                log.info("PACS answered again: %s stored after %d failed attempt(s)", held,
                         attempt, extra={"count": attempt})
            return ref

    async def _held_twice(self, instance: dicom.DicomInstance) -> bool:
        """Whether the PACS holds the SOP Instance UID more than once (Orthanc's WADO-RS then
        returns neither copy); False when that cannot be told."""
        try:
            return len(await self.pacs.find_instances(instance.sop_instance_uid)) > 1
        except PacsError:
            return False

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
                            "sending it again", attachment_id,
                            "it did not answer in time" if isinstance(exc, TimeoutError)
                            else "the connection to the relay was lost",
                            extra={"attachment_id": attachment_id,
                                   "error_type": type(exc).__name__})
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
        if not device_ids:
            return []
        try:
            claimed = await self.trust.claim(device_ids)
        except FlowError as exc:
            raise FilingFailed("a device of the thread does not verify",
                               code=f"thread_refused ({exc.code})") from exc
        return [b for _, b in sorted(claimed.items())
                if b.device.device.kind is not DeviceKind.GATEWAY]
