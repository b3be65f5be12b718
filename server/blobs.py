"""Where attachment ciphertext lives: a small blob-store interface and its Postgres default.

Why an interface (ARCHITECTURE.md §5): the relay stores attachments in Postgres by default, so that
a fresh machine needs nothing else (docs/ARCHITECTURE.md §3), but a deployment may prefer an object
store. The
callers (server/attachments.py) only use :class:`BlobStore`; nothing else touches the blob
tables. Every byte given to a blob store is secretstream ciphertext (docs/PROTOCOL.md §6): the
relay never holds a key.

A blob is written once, in order, at increasing offsets, up to the size declared at creation,
then finalised with the SHA-256 of all its bytes. The rules (each refusal with its code):

* a chunk must start exactly at the committed size: earlier is ``chunk_overlap`` (those bytes
  are already stored and are never overwritten), later is ``chunk_out_of_order`` (a gap);
* a chunk must end at or before the declared size: ``chunk_beyond_size``;
* finalising checks that every declared byte is there and that the SHA-256 matches:
  ``hash_mismatch``; finalising again with the same hash is a no-op.

The Postgres store keeps one row per uploaded chunk in ``attachment_chunks`` (bytea, at most
the chunk limit each) and the blob's size, committed offset and hash in ``blobs``. Writes to
one blob are serialised by a row lock, so two racing PUTs at the same offset cannot both land.
Reads are paged (a few chunks per query, a fresh pooled connection per page), so a slow
download never pins a connection or buffers the whole blob.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from protocol.errors import ErrorCode
from server.db import Database
from server.errors import Conflict, InvalidInput, NotFound, RelayError

__all__ = ["BlobStore", "PostgresBlobStore"]


class BlobStore(Protocol):
    """Storage of write-once, append-only byte strings (attachment ciphertext)."""

    async def create(self, blob_id: str, size: int) -> None:
        """Declare a blob of exactly ``size`` bytes (Conflict if the id exists)."""
        ...

    async def write(self, blob_id: str, offset: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` (== committed size); returns the new committed size.
        NotFound(upload_not_found), Conflict(chunk_overlap / chunk_out_of_order),
        RelayError(chunk_beyond_size)."""
        ...

    async def committed(self, blob_id: str) -> int:
        """Bytes stored so far (NotFound(upload_not_found) for an unknown id)."""
        ...

    async def finalise(self, blob_id: str, sha256: bytes) -> None:
        """Seal the blob after checking it is complete and its SHA-256 (hash_mismatch)."""
        ...

    def read(self, blob_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of a blob, in pieces, in order."""
        ...

    async def delete(self, blob_id: str) -> None:
        """Forget the blob and its bytes (no error if it is already gone)."""
        ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PostgresBlobStore:
    """:class:`BlobStore` in chunked bytea rows of the relay's own database."""

    def __init__(self, db: Database, *, page: int = 4,
                 now: Callable[[], dt.datetime] = _now) -> None:
        self.db, self.page, self.now = db, page, now

    async def create(self, blob_id: str, size: int) -> None:
        if size < 0:
            raise InvalidInput(ErrorCode.VALIDATION_FAILED, "negative size")
        async with self.db.pool.acquire() as conn:
            done = await conn.execute(
                "INSERT INTO blobs (blob_id, size, created_at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING", blob_id, size, self.now())
        if done.split()[-1] != "1":
            raise Conflict(ErrorCode.CONFLICT, "a blob with this id exists")

    async def write(self, blob_id: str, offset: int, data: bytes) -> int:
        if not data:
            raise InvalidInput(ErrorCode.VALIDATION_FAILED, "empty chunk")
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT size, committed FROM blobs WHERE blob_id = $1 FOR UPDATE", blob_id)
            if row is None:
                raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "no such upload")
            size, committed = int(row["size"]), int(row["committed"])
            end = offset + len(data)
            if end > size:
                raise RelayError(ErrorCode.CHUNK_BEYOND_SIZE,
                                 f"chunk ends at {end}, beyond the declared {size} bytes",
                                 extra={"committed": committed, "size": size})
            if offset < committed:
                raise Conflict(ErrorCode.CHUNK_OVERLAP,
                               f"bytes before {committed} are already committed",
                               extra={"committed": committed})
            if offset > committed:
                raise Conflict(ErrorCode.CHUNK_OUT_OF_ORDER,
                               f"the next chunk must start at {committed}",
                               extra={"committed": committed})
            await conn.execute(
                'INSERT INTO attachment_chunks (blob_id, "offset", data) VALUES ($1, $2, $3)',
                blob_id, offset, data)
            await conn.execute("UPDATE blobs SET committed = $2 WHERE blob_id = $1",
                               blob_id, end)
        return end

    async def committed(self, blob_id: str) -> int:
        async with self.db.pool.acquire() as conn:
            value = await conn.fetchval("SELECT committed FROM blobs WHERE blob_id = $1",
                                        blob_id)
        if value is None:
            raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "no such upload")
        return int(value)

    async def finalise(self, blob_id: str, sha256: bytes) -> None:
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT size, committed, sha256 FROM blobs WHERE blob_id = $1", blob_id)
        if row is None:
            raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "no such upload")
        if row["sha256"] is not None:
            if not hmac.compare_digest(bytes(row["sha256"]), sha256):
                raise RelayError(ErrorCode.HASH_MISMATCH, "finalised with another hash")
            return
        size, committed = int(row["size"]), int(row["committed"])
        if committed != size:
            raise RelayError(ErrorCode.HASH_MISMATCH,
                             f"only {committed} of {size} bytes were uploaded",
                             extra={"committed": committed, "size": size})
        digest = hashlib.sha256()
        async for piece in self.read(blob_id, 0, size):
            digest.update(piece)
        if not hmac.compare_digest(digest.digest(), sha256):
            raise RelayError(ErrorCode.HASH_MISMATCH,
                             "the SHA-256 of the uploaded bytes differs")
        async with self.db.pool.acquire() as conn:
            await conn.execute(
                "UPDATE blobs SET sha256 = $2, finalised_at = $3 WHERE blob_id = $1 "
                "AND sha256 IS NULL", blob_id, sha256, self.now())

    async def read(self, blob_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        pos = start
        while pos < end:
            async with self.db.pool.acquire() as conn:
                rows = await conn.fetch(
                    'SELECT "offset", data FROM attachment_chunks WHERE blob_id = $1 '
                    'AND "offset" + length(data) > $2 AND "offset" < $3 '
                    'ORDER BY "offset" LIMIT $4', blob_id, pos, end, self.page)
            if not rows:
                raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "blob bytes missing")
            for r in rows:
                first, data = int(r["offset"]), bytes(r["data"])
                if first > pos:
                    raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "blob bytes missing")
                piece = data[pos - first:end - first]
                pos += len(piece)
                yield piece

    async def delete(self, blob_id: str) -> None:
        async with self.db.pool.acquire() as conn:
            await conn.execute("DELETE FROM blobs WHERE blob_id = $1", blob_id)
