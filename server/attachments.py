"""Attachments on the relay (docs/PROTOCOL.md §12): resumable uploads of ciphertext, downloads
for the devices a message referencing them was addressed to, and the sweep of uploads no message
ever referenced.

Metadata and permissions are in :mod:`server.store.attachments`; bytes in a
:class:`server.blobs.BlobStore`. Nothing here speaks HTTP (server/routes/attachments.py does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from protocol.errors import ErrorCode
from server import audit
from server.authn import Principal
from server.blobs import BlobStore
from server.db import Database
from server.errors import LimitError
from server.store import attachments

__all__ = ["AttachmentLimits", "AttachmentService", "Download"]

log = logging.getLogger("lightbox.attachments")


@dataclasses.dataclass(frozen=True)
class AttachmentLimits:
    max_bytes: int
    chunk_bytes: int
    quota_bytes: int
    unreferenced_ttl: int
    janitor_interval: float


@dataclasses.dataclass(frozen=True)
class Download:
    attachment_id: str
    size: int


class AttachmentService:
    # Told (attachment id, device id) after a device downloaded a whole attachment, so the
    # ciphertext can go once every recipient has it (server/expiry.py, PROTOCOL.md §15).
    on_fetched: Callable[[str, str], Awaitable[None]] | None = None

    def __init__(self, *, db: Database, blobs: BlobStore, limits: AttachmentLimits,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.blobs, self.limits, self.clock = db, blobs, limits, clock
        self._recording: set[asyncio.Task[None]] = set()

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    async def create(self, me: Principal, size: int) -> str:
        """A new upload of ``size`` ciphertext bytes; returns its id (uuid4: unguessable)."""
        if size > self.limits.max_bytes:
            raise LimitError(ErrorCode.ATTACHMENT_TOO_LARGE,
                             f"attachments are limited to {self.limits.max_bytes} bytes")
        attachment_id = str(uuid.uuid4())
        async with self.db.pool.acquire() as conn, conn.transaction():
            await attachments.create(conn, attachment_id=attachment_id, user_id=me.user_id,
                                     device_id=me.device_id, size=size,
                                     quota=self.limits.quota_bytes, now=self._now())
        await self.blobs.create(attachment_id, size)
        return attachment_id

    async def status(self, me: Principal, attachment_id: str
                     ) -> tuple[attachments.AttachmentRecord, int]:
        async with self.db.pool.acquire() as conn:
            record = await attachments.get_owned(conn, attachment_id, me.device_id)
        return record, await self.blobs.committed(record.attachment_id)

    async def put_chunk(self, me: Principal, attachment_id: str, offset: int, data: bytes
                        ) -> tuple[attachments.AttachmentRecord, int]:
        async with self.db.pool.acquire() as conn:
            record = await attachments.get_owned(conn, attachment_id, me.device_id)
        return record, await self.blobs.write(record.attachment_id, offset, data)

    async def finalise(self, me: Principal, attachment_id: str, sha256: bytes
                       ) -> attachments.AttachmentRecord:
        async with self.db.pool.acquire() as conn:
            record = await attachments.get_owned(conn, attachment_id, me.device_id)
        await self.blobs.finalise(record.attachment_id, sha256)
        async with self.db.pool.acquire() as conn:
            await attachments.mark_finalised(conn, record.attachment_id, self._now())
        return dataclasses.replace(record, finalised=True)

    async def authorise_download(self, me: Principal, attachment_id: str) -> Download:
        async with self.db.pool.acquire() as conn:
            record = await attachments.require_download(conn, attachment_id, me.device_id)
        return Download(record.attachment_id, record.size)

    def read(self, download: Download, start: int, end: int) -> AsyncIterator[bytes]:
        return self.blobs.read(download.attachment_id, start, end)

    def fetched_soon(self, me: Principal, download: Download) -> None:
        """:meth:`fetched` in a task of its own (callable from a cancelled download)."""
        task = asyncio.ensure_future(self.fetched(me, download))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def fetched(self, me: Principal, download: Download) -> None:
        """The device received the attachment's last byte (a whole or a resumed download)."""
        if self.on_fetched is None:
            return
        try:
            await self.on_fetched(download.attachment_id, me.device_id)
        except Exception as exc:  # the download succeeded; bookkeeping must not fail it
            log.warning("recording a download failed", extra={"error_type": type(exc).__name__})

    # -- the sweep ---------------------------------------------------------------------------

    async def sweep(self, now: dt.datetime | None = None) -> list[str]:
        """Delete uploads older than the TTL that no message references (metadata first, in
        one transaction, then their blobs); returns their ids."""
        now = now or self._now()
        older_than = now - dt.timedelta(seconds=self.limits.unreferenced_ttl)
        async with self.db.pool.acquire() as conn, conn.transaction():
            gone = await attachments.delete_unreferenced(conn, older_than=older_than)
            if gone:
                await audit.append(conn, "attachment.swept", subject_kind="attachment",
                                   details={"count": len(gone), "ids": gone[:64]})
        for attachment_id in gone:
            await self.blobs.delete(attachment_id)
        return gone

    async def janitor(self) -> None:
        """Sweep every ``janitor_interval`` seconds, for the relay's lifetime."""
        while True:
            try:
                gone = await self.sweep()
                if gone:
                    log.info("unreferenced uploads deleted", extra={"count": len(gone)})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed sweep is retried; it must not stop the relay
                log.warning("attachment sweep failed",
                            extra={"error_type": type(exc).__name__})
            await asyncio.sleep(self.limits.janitor_interval)
