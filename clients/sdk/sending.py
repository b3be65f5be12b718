"""Sending: every send is kept in the vault's outbox from before anything of it leaves the
device until the relay stores it or refuses it for good (docs/PROTOCOL.md §3.5 "Outbox").

Each send is sealed for the thread's current devices, every certificate and claimed prekey
verified first (clients/sdk/trust.py); ``device_set_mismatch`` (someone joined or left
meanwhile) refreshes the recipients and seals again once. Images for direct care are also
sealed to the organisation's record gateway(s) (clients/sdk/filing.py), and recipients in
another organisation get the sealed clinical-necessity statement (clients/sdk/external.py).
Sealing and image encryption run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec

from clients.sdk import attachments as sdk_attachments
from clients.sdk import imaging
from clients.sdk.breakglass import MIN_REASON, Emergency, check_emergency
from clients.sdk.connection import ConnectionStopped
from clients.sdk.consent import DEIDENTIFIED_PURPOSES, ensure_sendable, image_hash
from clients.sdk.errors import FlowError, RelayRequestError, RelayUnavailable, SDKError, flow_error
from clients.sdk.events import MessageEvent, OutboxEvent, SentMessage
from clients.sdk.external import apply_external
from clients.sdk.filing import gateway_bundles, needs_gateway
from clients.sdk.http import RelayHTTP
from clients.sdk.hub import Hub
from clients.sdk.keystore import DeviceStore
from clients.sdk.socket import SendRefused
from clients.sdk.threads import ThreadBook
from clients.sdk.trust import Trust
from clients.sdk.vault import (
    ImageShredded,
    ItemNotFound,
    OutboxImage,
    OutboxRecord,
    Vault,
    VaultMessage,
)
from protocol import api
from protocol.attachments import AttachmentDescriptor
from protocol.body import (
    Body,
    BodyKind,
    BurnedInIdentifiers,
    ConsentFiling,
    IdentifierKind,
    RecordData,
    decode_body,
    encode_body,
)
from protocol.consent import peek_consent_token_unverified
from protocol.envelope import decode_sealed, encode_sealed, seal_message
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import Accepted
from protocol.model import EmergencyCategory, MessageHeader, Priority, Purpose, SealedMessage

__all__ = ["RESEND_TIMEOUT", "WILL_RESEND", "Progress", "Sender", "UnreadableSend",
           "check_readable"]

Progress = Callable[[int, int], None]
RESEND_TIMEOUT = 60.0  # seconds a pending send waits for "accepted" when resent
# Failures a pending send outlives (it stays in the outbox): the session must be renewed,
# the relay is busy or timed out. Anything else below 500 is a refusal of this message.
_PASSING_STATUS = frozenset({401, 408, 429})
_PASSING_FLOW = frozenset({ErrorCode.UNAUTHENTICATED.value, ErrorCode.NOT_READY.value})
WILL_RESEND = ("it is kept on this device and sent again the next time this device connects "
               "(lightbox inbox, watch or send; the desktop and the record gateway as soon as "
               "they reach the relay again)")


class UnreadableSend(FlowError):
    """A send in the outbox whose body cannot be read or sealed (written by an older client,
    or before its fields were checked): it is kept, nothing of it goes on the wire, and the
    user decides (``lightbox outbox --drop ID``; docs/PROTOCOL.md §3.5 "Outbox")."""

    def __init__(self, message_id: str, reason: str) -> None:
        self.message_id = message_id
        self.reason = reason
        super().__init__(f"message {message_id} in the outbox cannot be read or sealed "
                         f"({reason})", code="outbox_unreadable")


def _unreadable_reason(exc: Exception) -> str:
    """Where a pending body is invalid, without its value (it may be patient data)."""
    where = str(exc).rpartition(" - at ")[2].strip("`") if " - at " in str(exc) else ""
    return f"the field {where.removeprefix('$.')} is not valid" if where else \
        "its content is not valid"


def check_readable(record: OutboxRecord) -> None:
    """UnreadableSend unless the pending body decodes as the sealed body's schema."""
    try:
        msgspec.msgpack.decode(record.body, type=Body)
    except msgspec.DecodeError as exc:  # ValidationError too (a subclass)
        raise UnreadableSend(record.message_id, _unreadable_reason(exc)) from None


def _kept(reason: str) -> RelayUnavailable:
    """The relay did not take a send, which stays in the outbox: ``reason`` is the plain
    cause (RelayUnavailable.reason), ``kept`` says what becomes of the send."""
    return RelayUnavailable(f"{reason}: {WILL_RESEND}", reason=reason, kept=WILL_RESEND)


class Sender:
    """The outbox and every kind of send of one device."""

    def __init__(self, *, relay: RelayHTTP, store: DeviceStore, vault: Vault, trust: Trust,
                 threads: ThreadBook, hub: Hub, clock: Callable[[], float]) -> None:
        self._relay, self._store, self._vault = relay, store, vault
        self._trust, self._threads, self._hub, self._clock = trust, threads, hub, clock
        self._in_flight: set[str] = set()  # outbox records being sent by this process
        # Sends this process kept in the outbox because the relay could not take them: it
        # sends them again itself once it is connected again (kept_sends). Only its own: another
        # process on the same vault (``lightbox send`` beside ``lightbox watch``) may be sending
        # one of the others at this moment, and a second sealing of it would be refused as
        # ``duplicate_conflict``.
        self._kept: set[str] = set()

    def new_send(self, thread_id: str, body: Body, *, purpose: Purpose, priority: Priority,
                  consent_id: str | None = None, attachment_ids: Sequence[str] = (),
                  necessity: str | None = None, image: OutboxImage | None = None,
                  emergency: EmergencyCategory | None = None) -> OutboxRecord:
        """Write a new send to the vault's outbox, before anything of it leaves the device."""
        self._hub.connected()
        encoded = msgspec.msgpack.encode(body)
        try:  # as its recipients will decode it: a field they would refuse is never kept
            msgspec.msgpack.decode(encoded, type=Body)
        except msgspec.DecodeError as exc:
            raise FlowError(f"the message cannot be sent: {_unreadable_reason(exc)}",
                            code=ErrorCode.VALIDATION_FAILED.value) from None
        record = OutboxRecord(
            message_id=str(uuid.uuid4()), thread_id=thread_id, created_at=self._clock(),
            purpose=purpose.value, priority=priority.value, body=encoded,
            consent_id=consent_id, necessity=necessity, attachment_ids=tuple(attachment_ids),
            image=image, stage="upload" if image is not None else "seal",
            emergency=None if emergency is None else emergency.value)
        self._vault.put_outbox(record)
        return record

    async def send_body(
        self, thread_id: str, body: Body, *, purpose: Purpose, priority: Priority,
        consent_id: str | None = None, attachment_ids: Sequence[str] = (),
        necessity: str | None = None, timeout: float | None = 60.0,
        emergency: EmergencyCategory | None = None,
    ) -> tuple[SentMessage, MessageHeader]:
        encode_body(body)  # an invalid body fails before anything is kept or sent
        record = self.new_send(thread_id, body, purpose=purpose, priority=priority,
                                consent_id=consent_id, attachment_ids=attachment_ids,
                                necessity=necessity, emergency=emergency)
        return await self.deliver(record, timeout=timeout)

    @staticmethod
    def pending_body(record: OutboxRecord) -> Body:
        """The body of a pending send, as the user wrote it (for listing it)."""
        try:
            return msgspec.msgpack.decode(record.body, type=Body)
        except msgspec.DecodeError:
            return Body(text="(unreadable message)")

    def pending_sends(self) -> list[OutboxRecord]:
        """Sends this device has not yet seen stored by the relay (oldest first): resent on
        the next start (docs/PROTOCOL.md §3.5 "Outbox")."""
        return self._vault.outbox()

    async def deliver(self, record: OutboxRecord, *, timeout: float | None,
                       progress: Progress | None = None) -> tuple[SentMessage, MessageHeader]:
        """Upload (if an image), seal and send a pending send until the relay stores it.

        Kept in the outbox (and RelayUnavailable raised) when the relay cannot be reached,
        does not answer in time, or the session must be renewed first; removed (and the error
        raised) when it is refused for good: a refusal that will not change on a resend, or a
        check on this device that failed (a certificate that does not verify)."""
        # Checked before anything of it is uploaded: an entry that cannot be read is kept for
        # the user to drop, and never stops the sends after it (docs/PROTOCOL.md §3.5).
        check_readable(record)
        self._in_flight.add(record.message_id)
        self._kept.discard(record.message_id)
        try:
            try:
                try:
                    record = await self._upload_pending(record, progress)
                    accepted, record = await self._seal_and_send(record, timeout)
                except msgspec.DecodeError as exc:  # sealed bytes or content unreadable
                    raise UnreadableSend(record.message_id, _unreadable_reason(exc)) from None
            except RelayRequestError as exc:
                if exc.status >= 500 or exc.status in _PASSING_STATUS:
                    self._kept.add(record.message_id)
                    raise _kept(f"the relay did not take it now ({exc.code})") from exc
                self._vault.drop_outbox(record.message_id)
                raise
            except RelayUnavailable as exc:
                self._kept.add(record.message_id)
                raise _kept(exc.reason) from exc
            except UnreadableSend:
                raise  # kept: the user drops it (lightbox outbox --drop ID)
            except FlowError as exc:
                if exc.code in _PASSING_FLOW:  # log in again / start the client: then sent
                    self._kept.add(record.message_id)
                    raise _kept(str(exc)) from exc
                self._vault.drop_outbox(record.message_id)
                raise
            except (SDKError, ProtocolError):
                self._vault.drop_outbox(record.message_id)
                raise
            return self._stored(record, accepted), decode_sealed(record.sealed).header
        finally:
            self._in_flight.discard(record.message_id)

    def kept_sends(self) -> list[OutboxRecord]:
        """The outbox records this process kept because the relay could not take them
        (oldest first), to send again once connected."""
        return [r for r in self._vault.outbox() if r.message_id in self._kept]

    async def _upload_pending(self, record: OutboxRecord,
                              progress: Progress | None) -> OutboxRecord:
        """Upload the image of a pending send (resuming an upload the relay still holds,
        else starting again) and put its descriptor in the body."""
        img = record.image
        if img is None or img.uploaded:
            return record
        relay = self._relay if progress is None else cast(
            RelayHTTP, _ProgressRelay(self._relay, len(img.ciphertext), progress))
        attachment_id = img.attachment_id
        if attachment_id is not None:
            try:
                await self._relay.upload_status(attachment_id)
            except RelayRequestError as exc:
                if exc.status >= 500:
                    raise
                attachment_id = None  # gone (expired, or never finished): start again
        if attachment_id is None:
            attachment_id = (await self._relay.create_upload(len(img.ciphertext))).attachment_id
            img = msgspec.structs.replace(img, attachment_id=attachment_id)
            record = msgspec.structs.replace(record, image=img)
            self._vault.put_outbox(record)
        await sdk_attachments.upload(relay, img.ciphertext, attachment_id=attachment_id)
        descriptor = AttachmentDescriptor(
            attachment_id=attachment_id, key=img.key, sha256=img.sha256, size=img.size,
            media_type=img.media_type, width=img.width, height=img.height)
        flagged = [BurnedInIdentifiers(attachment_id=attachment_id,
                                       kinds=[IdentifierKind(k) for k in img.burned_in])
                   ] if img.burned_in else []
        body = msgspec.structs.replace(msgspec.msgpack.decode(record.body, type=Body),
                                       attachments=[descriptor], burned_in_identifiers=flagged)
        record = msgspec.structs.replace(
            record, body=encode_body(body), attachment_ids=(attachment_id,), stage="seal",
            image=msgspec.structs.replace(img, uploaded=True, ciphertext=b""))
        self._vault.put_outbox(record)
        return record

    async def _seal(self, record: OutboxRecord) -> tuple[OutboxRecord, SealedMessage]:
        """Seal the pending send for the thread's current devices (verified), same id."""
        st = self._store.state
        body = msgspec.msgpack.decode(record.body, type=Body)
        purpose, priority = Purpose(record.purpose), Priority(record.priority)
        recipients = await self._trust.recipients(record.thread_id, me=st.device_id)
        if needs_gateway(purpose, len(record.attachment_ids)):
            # Images for direct care are also sealed to the organisation's record
            # gateway(s), verified like any recipient (clients/sdk/filing.py).
            known = {r.device.device_id for r in recipients}
            gateways = await gateway_bundles(
                self._relay, trusted_orgs=st.trusted_orgs(),
                revocations=await self._trust.revocations())
            recipients += [g for g in gateways if g.device.device_id not in known]
        # Recipients in another organisation (from their verified
        # certificates) need the sealed clinical-necessity statement and the header flag.
        body, external = apply_external(
            body, sender_org=st.org_id, necessity=record.necessity,
            purpose=purpose, recipient_orgs=[r.device.user.org_id for r in recipients])
        plain = encode_body(body)
        header = MessageHeader(
            v=1, message_id=record.message_id, thread_id=record.thread_id,
            sender_user_id=st.user_id, sender_device_id=st.device_id,
            sent_at=int(self._clock()), purpose=purpose, priority=priority,
            consent_id=record.consent_id, attachment_ids=list(record.attachment_ids),
            recipient_devices=[r.device.device_id for r in recipients], external=external,
            emergency=None if record.emergency is None else EmergencyCategory(record.emergency))
        sealed: SealedMessage = await asyncio.to_thread(
            seal_message, header, plain, sender=st.device_keys(),
            recipients=recipients)
        record = msgspec.structs.replace(record, stage="send", sealed=encode_sealed(sealed),
                                         content=plain, attempts=record.attempts + 1)
        return record, sealed

    async def _seal_and_send(self, record: OutboxRecord,
                             timeout: float | None) -> tuple[Accepted, OutboxRecord]:
        if record.sealed:
            # A resend: the very bytes that may already be on the relay go first, so a
            # message it stored is answered as a duplicate (docs/PROTOCOL.md "Send").
            try:
                return await self._send_sealed(decode_sealed(record.sealed), timeout), record
            except SendRefused as refused:
                if refused.code != ErrorCode.DEVICE_SET_MISMATCH.value:
                    raise FlowError(f"the relay refused the message: {refused.detail}",
                                    code=refused.code) from refused
                # Not stored (a stored one is answered first): seal again, same message id.
        for attempt in range(2):
            record, sealed = await self._seal(record)
            self._vault.put_outbox(record)  # the bytes are kept before they go on the wire
            try:
                return await self._send_sealed(sealed, timeout), record
            except SendRefused as refused:
                if refused.code == ErrorCode.DEVICE_SET_MISMATCH.value and attempt == 0:
                    continue  # someone joined or left: fetch the recipients again, once
                raise FlowError(f"the relay refused the message: {refused.detail}",
                                code=refused.code) from refused
        raise AssertionError("unreachable")

    async def _send_sealed(self, sealed: SealedMessage, timeout: float | None) -> Accepted:
        connection = self._hub.connected()
        try:
            async with asyncio.timeout(timeout):
                return await connection.send(sealed)
        except TimeoutError as exc:
            raise RelayUnavailable("the relay did not confirm the message in time") from exc
        except ConnectionStopped as exc:
            raise FlowError(f"this device can no longer send: {exc}",
                            code=ErrorCode.DEVICE_REVOKED.value) from exc

    def _stored(self, record: OutboxRecord, accepted: Accepted) -> SentMessage:
        """The relay stored it: keep the sent message (and image) and empty the slot."""
        st = self._store.state
        body = decode_body(record.content)
        self._vault.put_message(VaultMessage(
            message_id=record.message_id, thread_id=record.thread_id,
            sender_user_id=st.user_id, sender_device_id=st.device_id,
            sent_at=float(record.created_at), body=body.text,
            attachment_ids=record.attachment_ids, priority=record.priority,
            purpose=record.purpose, read=True, content=record.content, outgoing=True,
            thread_seq=accepted.thread_seq, emergency=record.emergency,
            signed_at=decode_sealed(record.sealed).header.sent_at))
        img = record.image
        if img is not None and img.attachment_id is not None:
            with contextlib.suppress(ImageShredded):
                self._vault.put_image(img.attachment_id, img.data, media_type=img.media_type,
                                     width=img.width, height=img.height,
                                     thread_id=record.thread_id, message_id=record.message_id)
        self._vault.drop_outbox(record.message_id)
        return SentMessage(record.message_id, record.thread_id, accepted.thread_seq,
                           record.attachment_ids, tuple(body.quality_warnings))

    async def resend_pending(self, records: list[OutboxRecord]) -> None:
        """Resend what an earlier run left in the outbox, or what this run kept there while
        the relay was out of reach, oldest first, once connected. A send that is on its way
        meanwhile (in flight), or that was stored since ``records`` was read, is skipped."""
        if not records:
            return
        await self._hub.connected().connected.wait()
        for record in records:
            if (record.message_id in self._in_flight
                    or record.message_id not in {r.message_id for r in self._vault.outbox()}):
                continue
            try:
                sent, _ = await self.deliver(record, timeout=RESEND_TIMEOUT)
            except RelayUnavailable as exc:
                await self._hub.emit(OutboxEvent(record.message_id, record.thread_id, "pending",
                                             str(exc)))
                return  # the relay is gone again: the next start tries again
            except UnreadableSend as exc:
                await self._hub.emit(OutboxEvent(record.message_id, record.thread_id,
                                                 "unreadable", exc.reason))
                continue  # kept for the user to drop; the sends after it go
            except (SDKError, ProtocolError) as exc:
                code = exc.code.value if isinstance(exc, ProtocolError) else getattr(
                    exc, "code", "")
                detail = f"{code}: {exc}" if code and not str(exc).startswith(code) else \
                    str(exc)
                await self._hub.emit(OutboxEvent(record.message_id, record.thread_id, "refused",
                                             detail))
                continue
            await self._hub.emit(OutboxEvent(record.message_id, record.thread_id, "sent",
                                         thread_seq=sent.thread_seq))

    async def send_text(
        self, thread_id: str, text: str, *, priority: Priority | None = None,
        purpose: Purpose = Purpose.DIRECT_CARE, reply_to: str | None = None,
        subject: str | None = None, necessity: str | None = None,
        consent_id: str | None = None, timeout: float | None = 60.0,
        emergency: Emergency | None = None,
    ) -> SentMessage:
        """Seal ``text`` for every current participant device and send it; returns once the
        relay has stored it durably. ``necessity``: the clinical-necessity statement, required
        when a recipient is in another organisation (clients/sdk/external.py). ``consent_id``: the
        registered consent a text outside direct care is sent under (the relay refuses such a
        message without one: ``consent_missing``, PROTOCOL §13). ``emergency``: break-glass
        instead of a consent (:func:`clients.sdk.breakglass.check_emergency`)."""
        prio = priority or self._threads.priority(thread_id)
        body = Body(text=text, reply_to=reply_to, subject=subject)
        if emergency is not None:
            body = check_emergency(emergency, purpose=purpose, consent=consent_id, body=body)
        sent, _ = await self.send_body(
            thread_id, body, purpose=purpose, priority=prio, necessity=necessity,
            consent_id=consent_id, timeout=timeout,
            emergency=None if emergency is None else emergency.category)
        return sent

    async def send_image(
        self, thread_id: str, image: imaging.SanitisedImage, *, consent_token: str | None,
        text: str = "", record: RecordData | None = None,
        purpose: Purpose = Purpose.DIRECT_CARE, priority: Priority | None = None,
        warnings: Sequence[str] = (), subject: str | None = None,
        progress: Progress | None = None, necessity: str | None = None,
        timeout: float | None = 120.0, burned_in: Sequence[IdentifierKind] = (),
        emergency: Emergency | None = None,
    ) -> SentMessage:
        """Send a sanitised image (:func:`clients.sdk.imaging.prepare_image`) under a registered
        consent token that names it: encrypt (worker thread), upload resumably, seal the
        descriptor (with its key) in the body. ``burned_in``: the kinds of patient identifier
        the image still shows (``phi.identifier_kinds``), told to the recipient
        in the sealed body. ``emergency`` (with ``consent_token`` None): break-glass, for an
        emergency where no consent can be asked (docs/PROTOCOL.md §17). The sender keeps a
        copy in the vault."""
        if record is not None and purpose in DEIDENTIFIED_PURPOSES:
            # A de-identified share never carries the patient's identity;
            # the record gets the identified original through file_image.
            raise FlowError(f"patient data never goes with an image shared for {purpose}: "
                            "file the original in the record instead",
                            code=ErrorCode.VALIDATION_FAILED.value)
        body = Body(text=text, consent_token=consent_token, record=record,
                    quality_warnings=list(warnings), subject=subject)
        consent_id: str | None = None
        if emergency is not None:
            body = check_emergency(emergency, purpose=purpose, consent=consent_token, body=body)
        else:
            if consent_token is None:
                raise FlowError("an image needs a consent token (or a declared emergency)",
                                code=ErrorCode.CONSENT_MISSING.value)
            try:
                claims = peek_consent_token_unverified(consent_token)
            except ProtocolError as exc:
                raise flow_error(exc, "the consent token is malformed") from exc
            ensure_sendable(claims, purpose, [image_hash(image.data)])
            consent_id = claims.jti
        encrypted = await sdk_attachments.encrypt(image.data)
        # The descriptor (with the key) goes into the body once the upload is finished, with
        # the identifiers flagged for that attachment.
        pending = self.new_send(
            thread_id, body, purpose=purpose,
            priority=priority or self._threads.priority(thread_id), consent_id=consent_id,
            emergency=None if emergency is None else emergency.category,
            necessity=necessity, image=OutboxImage(
                data=image.data, media_type=image.media_type, width=image.width,
                height=image.height, key=encrypted.key, sha256=encrypted.sha256,
                size=encrypted.size, ciphertext=encrypted.ciphertext,
                burned_in=[k.value for k in dict.fromkeys(burned_in)]))
        sent, _ = await self.deliver(pending, timeout=timeout, progress=progress)
        return sent

    async def correct_patient(self, message_id: str, *, patient_id: str,
                              patient_name: str | None = None, birth_date: str | None = None,
                              issuer: str | None = None, timeout: float | None = 120.0
                              ) -> SentMessage:
        """Send again, with the patient's identity corrected, the images of a message this
        device sent that the record gateway held (its wrong-patient check,
        docs/HAZARD_LOG.md HAZ-01): the same images, consent (or emergency declaration) and
        thread, the corrected record data, as a reply to the held message; the gateway files
        this one. Only the identity changes; the rest of the record data is kept."""
        try:
            held = self._vault.message(message_id)
        except ItemNotFound:
            raise FlowError(f"no message {message_id} on this device",
                            code=ErrorCode.NOT_FOUND.value) from None
        try:
            body = msgspec.msgpack.decode(held.content, type=Body) if held.content else None
        except msgspec.DecodeError:
            body = None
        if not held.outgoing or body is None or not body.attachments or body.record is None:
            raise FlowError("only an image this device sent with patient data can be "
                            "corrected", code=ErrorCode.VALIDATION_FAILED.value)
        record = msgspec.structs.replace(
            body.record, patient_id=patient_id,
            patient_name=body.record.patient_name if patient_name is None else patient_name,
            birth_date=body.record.birth_date if birth_date is None else birth_date,
            issuer_of_patient_id=(body.record.issuer_of_patient_id if issuer is None
                                  else issuer))
        corrected = Body(
            text=f"Patient identity corrected for the record (it replaces the identity sent "
                 f"with message {message_id}).",
            attachments=body.attachments, consent_token=body.consent_token, record=record,
            reply_to=message_id, quality_warnings=body.quality_warnings,
            emergency_reason=body.emergency_reason,
            burned_in_identifiers=body.burned_in_identifiers)
        consent_id = None if body.consent_token is None else \
            peek_consent_token_unverified(body.consent_token).jti
        sent, _ = await self.send_body(
            held.thread_id, corrected, purpose=Purpose(held.purpose or Purpose.DIRECT_CARE),
            priority=Priority(held.priority) if held.priority in {"routine", "urgent"}
            else Priority.ROUTINE, consent_id=consent_id,
            attachment_ids=[a.attachment_id for a in body.attachments], timeout=timeout,
            emergency=None if held.emergency is None else EmergencyCategory(held.emergency))
        return sent

    async def break_glass_pending(self) -> list[api.BreakGlassCase]:
        """This user's emergency messages still waiting for a consent, or a reason why none
        was possible (docs/PROTOCOL.md §17), oldest first."""
        return (await self._relay.break_glass_pending()).cases

    async def follow_up_break_glass(self, case_id: str, *, consent_token: str | None = None,
                                    no_consent: str | None = None,
                                    words: str = "") -> api.BreakGlassCase:
        """File the follow-up of an emergency message: the consent sought afterwards (it is
        registered first), or why none was possible: its category to the relay, ``words``
        (at least MIN_REASON characters) sealed into the thread, replying to the message."""
        if (consent_token is None) == (no_consent is None):
            raise FlowError("give either the consent obtained afterwards or why none was "
                            "possible", code=ErrorCode.VALIDATION_FAILED.value)
        if no_consent is not None and no_consent not in api.NO_CONSENT_REASONS:
            raise FlowError("why no consent was possible is one of "
                            f"{', '.join(api.NO_CONSENT_REASONS)}",
                            code=ErrorCode.VALIDATION_FAILED.value)
        cases = {c.case_id: c for c in await self.break_glass_pending()}
        case = cases.get(case_id)
        if case is None:
            raise FlowError(f"no emergency message of yours awaits a follow-up as {case_id}",
                            code=ErrorCode.NOT_FOUND.value)
        if consent_token is not None:
            info = await self._relay.register_consent(consent_token)
            decision = "agreed" if info.status != "refused" else "refused"
            note = (f"Break-glass follow-up: the patient's consent was sought afterwards "
                    f"({decision}; consent {info.consent_id}).")
            follow = api.BreakGlassFollowUp(consent_id=info.consent_id)
        else:
            said = " ".join(words.split())
            if len(said) < MIN_REASON:
                raise FlowError(f"say in a sentence (at least {MIN_REASON} characters) why no "
                                "consent was possible", code=ErrorCode.VALIDATION_FAILED.value)
            note = f"Break-glass follow-up: no consent was possible ({no_consent}): {said}"
            follow = api.BreakGlassFollowUp(no_consent=no_consent)
        await self.send_text(case.thread_id, note, reply_to=case.message_id)
        return await self._relay.break_glass_follow_up(case_id, follow)

    async def file_consent(self, consent_token: str, record: RecordData, *,
                           wait: float | None = None) -> tuple[SentMessage, ConsentFiling | None]:
        """File a consent that goes with no image (CLINICAL_SAFETY.md: "a refusal is filed as
        well, without images") in the patient's record: seal the token with the patient's
        record data to the organisation's record gateway(s), in this user's record thread
        (a thread whose only other members are the gateways, found or made once). With
        ``wait``, also wait that many seconds for the gateway's ``consent_filed`` receipt
        (None when it has not answered by then; it files later and the receipt arrives in
        the thread)."""
        try:
            claims = peek_consent_token_unverified(consent_token)
        except ProtocolError as exc:
            raise flow_error(exc, "the consent token is malformed") from exc
        thread_id, subject = await self._threads.record_thread()
        queue = self._hub.subscribe()
        try:
            sent, _ = await self.send_body(
                thread_id, Body(kind=BodyKind.CONSENT_RECORD, consent_token=consent_token,
                                record=record, subject=subject),
                purpose=Purpose.DIRECT_CARE, priority=Priority.ROUTINE)
            if not wait:
                return sent, None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while True:
                        event = await queue.get()
                        if isinstance(event, MessageEvent) and event.body.consent_filing is \
                                not None and event.body.consent_filing.message_id == \
                                sent.message_id and event.body.consent_filing.consent_id == \
                                claims.jti:
                            return sent, event.body.consent_filing
            return sent, None
        finally:
            self._hub.unsubscribe(queue)

    async def file_image(self, image: imaging.SanitisedImage, *, consent_token: str,
                         record: RecordData, warnings: Sequence[str] = (),
                         progress: Progress | None = None) -> SentMessage:
        """File an image in the patient's record and nowhere else: the identified original of
        a de-identified share (CLINICAL_SAFETY.md: "the redacted copy is what is shared, while
        the identified original is what the gateway files for direct care"). It goes, for
        direct care, into this user's record thread, so only the record gateway(s) and the
        user's own devices receive it; like any filed image, its copies expire once filed.
        The consent must cover direct care and name this image."""
        thread_id, subject = await self._threads.record_thread()
        return await self.send_image(
            thread_id, image, consent_token=consent_token, record=record,
            purpose=Purpose.DIRECT_CARE, warnings=warnings, progress=progress, subject=subject)


class _ProgressRelay:
    """A RelayHTTP stand-in that reports upload progress (bytes sent, total)."""

    def __init__(self, relay: RelayHTTP, total: int, progress: Progress) -> None:
        self._relay, self._total, self._progress = relay, total, progress

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relay, name)

    async def put_chunk(self, attachment_id: str, offset: int, data: bytes) -> api.UploadStatus:
        status = await self._relay.put_chunk(attachment_id, offset, data)
        self._progress(status.committed, self._total)
        return status
