"""Image attachments on the device: encrypt, upload resumably, download with resume, decrypt,
and refuse to show an image its consent does not name (docs/PROTOCOL.md §6, §12, §13).

Why each step is here:

* encryption and decryption (libsodium secretstream, :mod:`protocol.attachments`) run in a
  worker thread: a 25 MiB image must never block the event loop that keeps the websocket alive;
* the upload sends only ciphertext, in chunks at increasing offsets; after a dropped connection
  it asks the relay for the committed offset and continues from there (never re-sending bytes
  the relay has, which it would refuse as ``chunk_overlap``);
* the download streams and, when the transfer breaks, resumes with ``Range: bytes=n-``;
* **recipient-side consent enforcement** (docs/ARCHITECTURE.md §2): after decrypting, the image's
  SHA-256 must be one the consent token names, and the token's signature must verify under the
  issuer's identity key from a certificate that verifies against the pinned organisation keys.
  Otherwise :class:`~clients.sdk.errors.ConsentImageMismatch` is raised, the image is not
  returned, and the relay is told (``POST /v1/consents/{id}/mismatch``, audited there).

The :class:`~protocol.attachments.AttachmentDescriptor` (with the key) travels only inside the
sealed message body; nothing here sends it anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping

from clients.sdk.errors import ConsentImageMismatch, RelayRequestError, RelayUnavailable
from clients.sdk.http import RelayHTTP
from protocol import api
from protocol.attachments import (
    AttachmentDescriptor,
    EncryptedAttachment,
    decrypt_attachment,
    encrypt_attachment,
)
from protocol.certs import verify_user_certificate
from protocol.consent import (
    ConsentClaims,
    ConsentDecision,
    peek_consent_token_unverified,
    verify_consent_token,
)
from protocol.errors import ProtocolError

__all__ = [
    "check_image_consent",
    "decrypt",
    "download",
    "encrypt",
    "receive_image",
    "upload",
]

log = logging.getLogger("lightbox.sdk.attachments")
_RESUMABLE = frozenset({"chunk_overlap", "chunk_out_of_order"})


async def encrypt(image: bytes) -> EncryptedAttachment:
    """Encrypt under a fresh key, off the event loop."""
    return await asyncio.to_thread(encrypt_attachment, image)


async def decrypt(ciphertext: bytes, descriptor: AttachmentDescriptor) -> bytes:
    """Decrypt and check size and SHA-256 against the sealed descriptor, off the event loop
    (VerificationError on any failure)."""
    return await asyncio.to_thread(decrypt_attachment, ciphertext, descriptor.key,
                                   expected_sha256=descriptor.sha256,
                                   expected_size=descriptor.size)


async def upload(relay: RelayHTTP, ciphertext: bytes, *, attachment_id: str | None = None,
                 chunk_size: int | None = None, retries: int = 5,
                 backoff: float = 0.2) -> str:
    """Upload ``ciphertext`` (new upload, or resume ``attachment_id``), finalise it with its
    SHA-256, and return the attachment id. A dropped connection (RelayUnavailable) or a chunk
    the relay placed differently (overlap / out of order: an earlier attempt did land) makes
    it ask for the committed offset and continue; ``retries`` consecutive failures give up."""
    if attachment_id is None:
        status = await relay.create_upload(len(ciphertext))
        attachment_id = status.attachment_id
    else:
        status = await relay.upload_status(attachment_id)
    step = min(chunk_size or status.chunk_size, status.chunk_size)
    committed, failures = status.committed, 0
    while committed < len(ciphertext):
        try:
            status = await relay.put_chunk(attachment_id, committed,
                                           ciphertext[committed:committed + step])
            committed, failures = status.committed, 0
            continue
        except RelayUnavailable:
            pass
        except RelayRequestError as exc:
            if exc.code not in _RESUMABLE:
                raise
        failures += 1
        if failures > retries:
            raise RelayUnavailable(f"upload of {attachment_id} failed {failures} times")
        await asyncio.sleep(backoff * failures)
        try:
            committed = (await relay.upload_status(attachment_id)).committed
        except RelayUnavailable:
            continue  # counted at the next failure
    await relay.finalise_upload(attachment_id, hashlib.sha256(ciphertext).hexdigest())
    return attachment_id


async def download(relay: RelayHTTP, attachment_id: str, *, retries: int = 5,
                   backoff: float = 0.2, max_bytes: int = 64 * 1024 * 1024) -> bytes:
    """The attachment's ciphertext; a broken transfer resumes with a Range request."""
    received = bytearray()
    failures = 0
    while True:
        try:
            async with relay.download_stream(attachment_id, start=len(received)) as response:
                async for piece in response.aiter_bytes():
                    received += piece
                    if len(received) > max_bytes:
                        raise RelayUnavailable("attachment larger than expected")
            return bytes(received)
        except RelayUnavailable:
            failures += 1
            if failures > retries:
                raise
            await asyncio.sleep(backoff * failures)


def check_image_consent(image_sha256: bytes, token: str, *, issuer_certificate: str,
                        trusted_orgs: Mapping[str, bytes], consent_id: str | None = None,
                        at: int | None = None) -> ConsentClaims:
    """The recipient's check before showing an image (PROTOCOL §7.4, last paragraph).

    The token must verify under the identity key of ``issuer_certificate`` (which must verify
    against ``trusted_orgs`` and be the token's issuer), be the consent the message named,
    record an agreement, and name ``image_sha256``. Raises ConsentImageMismatch otherwise."""
    now = int(time.time()) if at is None else at
    try:
        issuer = verify_user_certificate(issuer_certificate, trusted_orgs=trusted_orgs, at=now)
        claims = verify_consent_token(token, issuer.identity_key, at=now, leeway=60)
    except ProtocolError as exc:
        raise ConsentImageMismatch(f"the consent does not verify ({exc.code.value})") from exc
    if claims.iss != issuer.user_id or claims.org != issuer.org_id:
        raise ConsentImageMismatch("the consent was not issued by this certificate's holder")
    if consent_id is not None and claims.jti != consent_id:
        raise ConsentImageMismatch("the message names another consent than this token")
    if claims.decision is not ConsentDecision.AGREED:
        raise ConsentImageMismatch("the patient refused consent for these images")
    if image_sha256.hex() not in claims.images:
        raise ConsentImageMismatch("the image is not one the patient was shown and agreed to",
                                   reason="image_not_named")
    return claims


async def receive_image(relay: RelayHTTP, descriptor: AttachmentDescriptor, *, consent_id: str,
                        message_id: str, sender_user_id: str, sender_certificate: str,
                        trusted_orgs: Mapping[str, bytes], at: int | None = None) -> bytes:
    """Download, decrypt and consent-check an image received in a message; the plaintext only
    if every check passes. ``sender_certificate`` is the sender's verified user certificate
    (the message's chain); when someone else issued the consent (a forward), the issuer's
    certificate is fetched from the key directory and verified against ``trusted_orgs``."""
    ciphertext = await download(relay, descriptor.attachment_id)
    image = await decrypt(ciphertext, descriptor)
    info = await relay.get_consent(consent_id)
    try:
        try:
            issuer_id = peek_consent_token_unverified(info.token).iss
        except ProtocolError as exc:
            raise ConsentImageMismatch("the consent token is malformed") from exc
        issuer_cert = sender_certificate if issuer_id == sender_user_id else (
            await relay.user_devices(issuer_id)).user_certificate
        check_image_consent(hashlib.sha256(image).digest(), info.token,
                            issuer_certificate=issuer_cert, trusted_orgs=trusted_orgs,
                            consent_id=consent_id, at=at)
    except ConsentImageMismatch as exc:
        try:
            await relay.report_consent_mismatch(consent_id, api.ConsentMismatch(
                message_id=message_id, attachment_id=descriptor.attachment_id, reason=exc.reason))
        except (RelayRequestError, RelayUnavailable) as report_error:
            log.warning("could not report a consent mismatch",
                        extra={"error": type(report_error).__name__})
        raise
    return image
