"""The Postgres blob store (server/blobs.py) on a real database: write-once, in-order chunks up
to the declared size, each refusal with its code and the committed offset to resume at, a
finalise that checks completeness and SHA-256, and paged reads of any range."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest

from protocol.errors import ErrorCode
from server.blobs import PostgresBlobStore
from server.db import Database
from server.errors import RelayError

AT = dt.datetime(2026, 12, 3, 9, 30, tzinfo=dt.UTC)
DATA = bytes(range(256)) * 4  # 1 KiB


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[PostgresBlobStore]:
    db = Database(db_dsn, min_size=1, max_size=2)
    await db.open()
    try:
        yield PostgresBlobStore(db, page=2, now=lambda: AT)
    finally:
        await db.close()


async def refused(call: object) -> RelayError:
    with pytest.raises(RelayError) as info:
        await call  # type: ignore[misc]
    return info.value


async def uploaded(store: PostgresBlobStore, data: bytes = DATA, chunk: int = 100) -> str:
    blob_id = str(uuid.uuid4())
    await store.create(blob_id, len(data))
    for offset in range(0, len(data), chunk):
        assert await store.write(blob_id, offset, data[offset:offset + chunk]) == min(
            offset + chunk, len(data))
    return blob_id


async def read_all(store: PostgresBlobStore, blob_id: str, start: int, end: int) -> bytes:
    return b"".join([piece async for piece in store.read(blob_id, start, end)])


async def test_chunks_in_order_then_finalise_then_any_range_reads_back(
        store: PostgresBlobStore) -> None:
    blob_id = await uploaded(store)
    assert await store.committed(blob_id) == len(DATA)
    await store.finalise(blob_id, hashlib.sha256(DATA).digest())
    await store.finalise(blob_id, hashlib.sha256(DATA).digest())  # again: a no-op
    assert await read_all(store, blob_id, 0, len(DATA)) == DATA
    assert await read_all(store, blob_id, 150, 777) == DATA[150:777]  # across pages of 2


async def test_a_chunk_out_of_place_is_refused_with_the_offset_to_resume_at(
        store: PostgresBlobStore) -> None:
    blob_id = str(uuid.uuid4())
    await store.create(blob_id, 300)
    await store.write(blob_id, 0, b"a" * 100)
    overlap = await refused(store.write(blob_id, 50, b"b" * 100))
    assert (overlap.code, overlap.extra["committed"]) == (ErrorCode.CHUNK_OVERLAP, 100)
    gap = await refused(store.write(blob_id, 150, b"b" * 100))
    assert (gap.code, gap.extra["committed"]) == (ErrorCode.CHUNK_OUT_OF_ORDER, 100)
    beyond = await refused(store.write(blob_id, 100, b"b" * 201))
    assert beyond.code is ErrorCode.CHUNK_BEYOND_SIZE
    assert (await refused(store.write(blob_id, 100, b""))).code is ErrorCode.VALIDATION_FAILED
    assert await store.committed(blob_id) == 100  # nothing of the refused chunks stored
    assert await read_all(store, blob_id, 0, 100) == b"a" * 100


async def test_unknown_duplicate_and_negative_blobs_are_refused(
        store: PostgresBlobStore) -> None:
    unknown = str(uuid.uuid4())
    assert (await refused(store.committed(unknown))).code is ErrorCode.UPLOAD_NOT_FOUND
    assert (await refused(store.write(unknown, 0, b"x"))).code is ErrorCode.UPLOAD_NOT_FOUND
    assert (await refused(store.finalise(unknown, bytes(32)))).code is ErrorCode.UPLOAD_NOT_FOUND
    blob_id = str(uuid.uuid4())
    await store.create(blob_id, 10)
    assert (await refused(store.create(blob_id, 10))).code is ErrorCode.CONFLICT
    assert (await refused(store.create(str(uuid.uuid4()), -1))).code is \
        ErrorCode.VALIDATION_FAILED


async def test_finalise_refuses_a_short_upload_a_wrong_hash_and_a_second_hash(
        store: PostgresBlobStore) -> None:
    blob_id = str(uuid.uuid4())
    await store.create(blob_id, len(DATA))
    await store.write(blob_id, 0, DATA[:500])
    short = await refused(store.finalise(blob_id, hashlib.sha256(DATA).digest()))
    assert (short.code, short.extra) == (ErrorCode.HASH_MISMATCH,
                                         {"committed": 500, "size": len(DATA)})
    await store.write(blob_id, 500, DATA[500:])
    wrong = await refused(store.finalise(blob_id, hashlib.sha256(b"other").digest()))
    assert wrong.code is ErrorCode.HASH_MISMATCH
    await store.finalise(blob_id, hashlib.sha256(DATA).digest())
    again = await refused(store.finalise(blob_id, hashlib.sha256(b"other").digest()))
    assert again.code is ErrorCode.HASH_MISMATCH


async def test_a_deleted_blob_is_gone(store: PostgresBlobStore) -> None:
    blob_id = await uploaded(store)
    await store.delete(blob_id)
    assert (await refused(store.committed(blob_id))).code is ErrorCode.UPLOAD_NOT_FOUND
    missing = await refused(read_all(store, blob_id, 0, 10))
    assert missing.code is ErrorCode.UPLOAD_NOT_FOUND
