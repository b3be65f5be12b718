"""Attachment routes (docs/PROTOCOL.md §12): create an upload, PUT ciphertext chunks at
offsets, ask where to resume, finalise with the SHA-256, and download with ranges.

Every route needs a device (access token + proof). Uploads answer ``upload_not_found`` to any
device but the uploader; downloads answer ``attachment_forbidden`` to any device that neither
uploaded the attachment nor was sent a message referencing it, whether the id exists or not,
so ids cannot be probed; and ``attachment_expired`` (410) to a device whose expiry order for it
was issued, or once the relay deleted the ciphertext (docs/PROTOCOL.md §15). The logic is in
server/attachments.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from protocol.api import UploadCreate, UploadFinalise, UploadStatus
from protocol.errors import ErrorCode
from server.api import Endpoint, QueryParameter, json_response, read_body, read_json
from server.attachments import AttachmentService
from server.authn import DEVICE_AUTH_ERRORS, Principal
from server.errors import InvalidInput, NotFound, RelayError
from server.store.attachments import AttachmentRecord

__all__ = ["AttachmentRoutes", "parse_range"]

E = ErrorCode
_AUTH = list(DEVICE_AUTH_ERRORS)
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")
RequireDevice = Callable[[Request], Awaitable[Principal]]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` (RFC 9110 §14.1.2; one range only)
    as a half-open ``(start, end)``, or None for the whole body. A malformed header is
    bad_request; a range starting at or after the end is chunk_beyond_size (416)."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise RelayError(E.BAD_REQUEST, "Range must be one bytes=a-b range")
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0:
            raise RelayError(E.CHUNK_BEYOND_SIZE, "empty suffix range")
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        raise RelayError(E.BAD_REQUEST, "Range ends before it starts")
    if start >= size:
        raise RelayError(E.CHUNK_BEYOND_SIZE, f"the attachment has {size} bytes",
                         extra={"size": size})
    return start, end


def _attachment_id(request: Request) -> str:
    value = request.path_params["attachment_id"]
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(E.UPLOAD_NOT_FOUND, "no such upload") from None


class AttachmentRoutes:
    def __init__(self, *, service: AttachmentService, require_device: RequireDevice,
                 max_body: int) -> None:
        self.service, self.require_device, self.max_body = service, require_device, max_body

    def endpoints(self) -> list[Endpoint]:
        upload = [*_AUTH, E.UPLOAD_NOT_FOUND]
        return [
            Endpoint("POST", "/v1/attachments", self.create,
                     "Start a resumable upload of attachment ciphertext.",
                     request=UploadCreate, response=UploadStatus, status=201, auth="device",
                     tag="attachments",
                     errors=[*_AUTH, E.ATTACHMENT_TOO_LARGE, E.QUOTA_EXCEEDED]),
            Endpoint("GET", "/v1/attachments/{attachment_id}/upload", self.status,
                     "Where an upload stands: resume at the committed offset.",
                     response=UploadStatus, auth="device", tag="attachments", errors=upload),
            Endpoint("PUT", "/v1/attachments/{attachment_id}/upload", self.put,
                     "Store the chunk at ?offset= (which must be the committed offset).",
                     response=UploadStatus, auth="device", tag="attachments",
                     request_media_type="application/octet-stream",
                     body_limit=self.service.limits.chunk_bytes,
                     query=[QueryParameter("offset", {"type": "integer", "minimum": 0,
                                                      "maximum": 10**15 - 1}, required=True)],
                     errors=[*upload, E.CHUNK_OUT_OF_ORDER, E.CHUNK_OVERLAP,
                             E.CHUNK_BEYOND_SIZE, E.UNSUPPORTED_MEDIA_TYPE,
                             E.VALIDATION_FAILED]),
            Endpoint("POST", "/v1/attachments/{attachment_id}/finalise", self.finalise,
                     "Seal the upload after checking the SHA-256 of every byte.",
                     request=UploadFinalise, response=UploadStatus, auth="device",
                     tag="attachments", errors=[*upload, E.HASH_MISMATCH]),
            Endpoint("GET", "/v1/attachments/{attachment_id}", self.download,
                     "Download the ciphertext (Range: bytes=a-b supported, 206).",
                     auth="device", tag="attachments", media_type="application/octet-stream",
                     errors=[*_AUTH, E.ATTACHMENT_FORBIDDEN, E.UPLOAD_NOT_FOUND,
                             E.CONSENT_REVOKED, E.ATTACHMENT_EXPIRED, E.BAD_REQUEST,
                             E.CHUNK_BEYOND_SIZE]),
        ]

    def _status(self, record: AttachmentRecord, committed: int,
                finalised: bool | None = None) -> UploadStatus:
        return UploadStatus(attachment_id=record.attachment_id, size=record.size,
                            committed=committed, chunk_size=self.service.limits.chunk_bytes,
                            finalised=record.finalised if finalised is None else finalised)

    async def create(self, request: Request) -> Response:
        me = await self.require_device(request)
        body = await read_json(request, UploadCreate, self.max_body)
        attachment_id = await self.service.create(me, body.size)
        return json_response(UploadStatus(
            attachment_id=attachment_id, size=body.size, committed=0,
            chunk_size=self.service.limits.chunk_bytes, finalised=False), status=201)

    async def status(self, request: Request) -> Response:
        me = await self.require_device(request)
        record, committed = await self.service.status(me, _attachment_id(request))
        return json_response(self._status(record, committed))

    async def put(self, request: Request) -> Response:
        me = await self.require_device(request)
        attachment_id = _attachment_id(request)
        offset = request.query_params.get("offset", "")
        if not offset.isdigit() or len(offset) > 15:
            raise InvalidInput(E.VALIDATION_FAILED, "?offset= must be a byte offset")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/octet-stream":
            raise RelayError(E.UNSUPPORTED_MEDIA_TYPE, "expected application/octet-stream")
        data = await read_body(request, self.service.limits.chunk_bytes)
        record, committed = await self.service.put_chunk(me, attachment_id, int(offset), data)
        return json_response(self._status(record, committed))

    async def finalise(self, request: Request) -> Response:
        me = await self.require_device(request)
        attachment_id = _attachment_id(request)
        body = await read_json(request, UploadFinalise, self.max_body)
        record = await self.service.finalise(me, attachment_id, bytes.fromhex(body.sha256))
        return json_response(self._status(record, record.size, finalised=True))

    async def download(self, request: Request) -> Response:
        me = await self.require_device(request)
        try:
            attachment_id = str(uuid.UUID(request.path_params["attachment_id"]))
        except ValueError:
            attachment_id = ""
        dl = await self.service.authorise_download(me, attachment_id)
        span = parse_range(request.headers.get("range"), dl.size)
        start, end = span or (0, dl.size)
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start),
                   "Cache-Control": "no-store"}
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{dl.size}"

        async def body() -> AsyncIterator[bytes]:
            handed = start
            try:
                async for piece in self.service.read(dl, start, end):
                    handed += len(piece)
                    yield piece
            finally:
                # The last byte went out: record it even when the client hangs up at once
                # (which cancels this generator at its final yield).
                if end == dl.size and handed == end:
                    self.service.fetched_soon(me, dl)

        return StreamingResponse(body(), status_code=206 if span else 200, headers=headers,
                                 media_type="application/octet-stream")
