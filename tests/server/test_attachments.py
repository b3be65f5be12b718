"""Attachments over HTTP against a real relay: resumable chunked uploads of ciphertext,
finalisation by hash, ranged downloads for permitted devices only, and every kind of bad input
with its code; the blob store and the sweep of unreferenced uploads, tested directly."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from clients.sdk import attachments as sdk_attachments
from clients.sdk.errors import RelayRequestError, RelayUnavailable
from protocol.attachments import encrypt_attachment
from server.attachments import AttachmentLimits, AttachmentService
from server.blobs import PostgresBlobStore
from server.db import Database
from tests.consent_world import sdk
from tests.helpers import eventually, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, peer

CHUNK = 64 * 1024


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, attachment_chunk_bytes=CHUNK,
                              attachment_max_bytes=1_000_000,
                              attachment_quota_bytes=2_500_000) as w:
        yield w


@pytest.fixture
async def pair(world: World) -> tuple[Peer, Peer]:
    return await peer(world, "alice"), await peer(world, "mallory")


async def create(world: World, p: Peer, size: int) -> httpx.Response:
    return await world.call(p.device, "POST", "/v1/attachments", json={"size": size})


async def _put(world: World, p: Peer, aid: str, offset: int, data: bytes,
               content_type: str = "application/octet-stream") -> httpx.Response:
    return await world.http.send(world.signed(
        p.device, "PUT", f"/v1/attachments/{aid}/upload", params={"offset": offset},
        content=data, headers={"content-type": content_type}))


async def finalise(world: World, p: Peer, aid: str, digest: bytes) -> httpx.Response:
    return await world.call(p.device, "POST", f"/v1/attachments/{aid}/finalise",
                            json={"sha256": digest.hex()})


async def status(world: World, p: Peer, aid: str) -> httpx.Response:
    return await world.call(p.device, "GET", f"/v1/attachments/{aid}/upload")


async def get(world: World, p: Peer, aid: str, range_: str | None = None) -> httpx.Response:
    assert p.device.access_token is not None
    path = f"/v1/attachments/{aid}"
    headers = p.device.proof("GET", path, p.device.access_token)
    if range_:
        headers["range"] = range_
    return await world.http.get(path, headers=headers)


def code(r: httpx.Response) -> str:
    return str(r.json()["code"])


async def uploaded(world: World, p: Peer, blob: bytes) -> str:
    r = await create(world, p, len(blob))
    assert r.status_code == 201, r.text
    aid = str(r.json()["attachment_id"])
    for off in range(0, len(blob), CHUNK):
        r = await _put(world, p, aid, off, blob[off:off + CHUNK])
        assert r.status_code == 200, r.text
    r = await finalise(world, p, aid, hashlib.sha256(blob).digest())
    assert r.status_code == 200, r.text
    return aid


# --- the happy path ---------------------------------------------------------------------------


async def test_chunked_upload_then_ranged_download_by_the_uploader(
        world: World, pair: tuple[Peer, Peer]) -> None:
    alice = pair[0]
    blob = encrypt_attachment(os.urandom(200_000)).ciphertext
    r = await create(world, alice, len(blob))
    assert r.status_code == 201
    info = r.json()
    assert info["chunk_size"] == CHUNK and info["committed"] == 0 and not info["finalised"]
    assert uuid.UUID(info["attachment_id"]).version == 4
    aid = info["attachment_id"]
    for off in range(0, len(blob), CHUNK):
        r = await _put(world, alice, aid, off, blob[off:off + CHUNK])
        assert r.json()["committed"] == min(len(blob), off + CHUNK)
    assert (await finalise(world, alice, aid, hashlib.sha256(blob).digest())).json()["finalised"]
    whole = await get(world, alice, aid)
    assert whole.status_code == 200 and whole.content == blob
    assert whole.headers["accept-ranges"] == "bytes"
    part = await get(world, alice, aid, "bytes=1000-70999")
    assert part.status_code == 206 and part.content == blob[1000:71000]
    assert part.headers["content-range"] == f"bytes 1000-70999/{len(blob)}"
    tail = await get(world, alice, aid, "bytes=-10")
    assert tail.content == blob[-10:]


async def test_finalising_twice_with_the_same_hash_is_a_no_op(
        world: World, pair: tuple[Peer, Peer]) -> None:
    blob = os.urandom(5000)
    aid = await uploaded(world, pair[0], blob)
    r = await finalise(world, pair[0], aid, hashlib.sha256(blob).digest())
    assert r.status_code == 200
    r = await finalise(world, pair[0], aid, hashlib.sha256(b"other").digest())
    assert code(r) == "hash_mismatch"


# --- bad input ---------------------------------------------------------------------------------


async def test_chunks_out_of_order_overlapping_or_beyond_the_size_are_refused(
        world: World, pair: tuple[Peer, Peer]) -> None:
    alice = pair[0]
    blob = os.urandom(2 * CHUNK + 100)
    aid = (await create(world, alice, len(blob))).json()["attachment_id"]
    r = await _put(world, alice, aid, CHUNK, blob[CHUNK:2 * CHUNK])  # a gap
    assert (r.status_code, code(r)) == (409, "chunk_out_of_order")
    assert r.json()["extra"]["committed"] == 0
    assert (await _put(world, alice, aid, 0, blob[:CHUNK])).status_code == 200
    r = await _put(world, alice, aid, 100, blob[100:CHUNK + 100])  # overlaps committed bytes
    assert (r.status_code, code(r)) == (409, "chunk_overlap")
    r = await _put(world, alice, aid, 0, blob[:10])  # a replay of the first chunk
    assert code(r) == "chunk_overlap"
    r = await _put(world, alice, aid, CHUNK, blob[CHUNK:2 * CHUNK] + b"x" * (CHUNK + 1))
    assert r.status_code == 413  # more than one chunk in one PUT: the route's body limit
    r = await _put(world, alice, aid, 2 * CHUNK, blob[:50])  # out of order again
    assert code(r) == "chunk_out_of_order"
    await _put(world, alice, aid, CHUNK, blob[CHUNK:2 * CHUNK])
    r = await _put(world, alice, aid, 2 * CHUNK, blob[2 * CHUNK:] + b"!")
    assert (r.status_code, code(r)) == (416, "chunk_beyond_size")
    assert (await status(world, alice, aid)).json()["committed"] == 2 * CHUNK  # unharmed
    r = await _put(world, alice, aid, 2 * CHUNK, b"")
    assert code(r) == "validation_failed"
    r = await _put(world, alice, aid, 2 * CHUNK, blob[2 * CHUNK:], content_type="text/plain")
    assert code(r) == "unsupported_media_type"
    for bad in ("-1", "x", ""):
        r = await _put(world, alice, aid, bad, b"x")  # type: ignore[arg-type]
        assert code(r) == "validation_failed", bad


async def test_a_wrong_final_hash_or_an_incomplete_upload_is_hash_mismatch(
        world: World, pair: tuple[Peer, Peer]) -> None:
    alice = pair[0]
    blob = os.urandom(CHUNK + 10)
    aid = (await create(world, alice, len(blob))).json()["attachment_id"]
    await _put(world, alice, aid, 0, blob[:CHUNK])
    r = await finalise(world, alice, aid, hashlib.sha256(blob).digest())
    assert (r.status_code, code(r)) == (422, "hash_mismatch")  # 10 bytes missing
    await _put(world, alice, aid, CHUNK, blob[CHUNK:])
    r = await finalise(world, alice, aid, hashlib.sha256(blob + b"x").digest())
    assert code(r) == "hash_mismatch"
    r = await world.call(alice.device, "POST", f"/v1/attachments/{aid}/finalise",
                         json={"sha256": "00" * 31})
    assert code(r) == "validation_failed"
    r = await get(world, alice, aid)
    assert code(r) == "upload_not_found"  # not finalised: nothing to download


async def test_size_limit_and_quota(world: World, pair: tuple[Peer, Peer]) -> None:
    alice = pair[0]
    r = await create(world, alice, 1_000_001)
    assert (r.status_code, code(r)) == (413, "attachment_too_large")
    for _ in range(2):
        assert (await create(world, alice, 1_000_000)).status_code == 201
    r = await create(world, alice, 500_001)
    assert (r.status_code, code(r)) == (507, "quota_exceeded")
    assert (await create(world, pair[1], 1_000_000)).status_code == 201  # per user
    r = await world.call(alice.device, "POST", "/v1/attachments", json={"size": 0})
    assert code(r) == "validation_failed"


async def test_another_device_can_neither_upload_to_nor_download_an_attachment(
        world: World, pair: tuple[Peer, Peer]) -> None:
    alice, mallory = pair
    blob = os.urandom(CHUNK + 1)
    aid = (await create(world, alice, len(blob))).json()["attachment_id"]
    guessed = str(uuid.uuid4())
    for target in (aid, guessed, "not-a-uuid"):
        r = await _put(world, mallory, target, 0, blob[:CHUNK])
        assert (r.status_code, code(r)) == (404, "upload_not_found"), target
        assert code(await status(world, mallory, target)) == "upload_not_found"
        assert code(await finalise(world, mallory, target, b"\0" * 32)) == "upload_not_found"
    await _put(world, alice, aid, 0, blob[:CHUNK])
    await _put(world, alice, aid, CHUNK, blob[CHUNK:])
    await finalise(world, alice, aid, hashlib.sha256(blob).digest())
    # Same answer for an existing attachment and a guessed id: ids cannot be probed.
    for target in (aid, guessed, "not-a-uuid"):
        r = await get(world, mallory, target)
        assert (r.status_code, code(r)) == (403, "attachment_forbidden"), target
    assert (await status(world, alice, aid)).json()["committed"] == len(blob)
    r = await world.http.get(f"/v1/attachments/{aid}")
    assert r.status_code == 401  # no credentials at all


async def test_bad_ranges_are_refused(world: World, pair: tuple[Peer, Peer]) -> None:
    blob = os.urandom(1000)
    aid = await uploaded(world, pair[0], blob)
    assert code(await get(world, pair[0], aid, "bytes=1000-")) == "chunk_beyond_size"
    assert code(await get(world, pair[0], aid, "bytes=5-1")) == "bad_request"
    assert code(await get(world, pair[0], aid, "bytes=0-1,5-6")) == "bad_request"
    assert code(await get(world, pair[0], aid, "items=0-1")) == "bad_request"
    r = await get(world, pair[0], aid, "bytes=990-5000")
    assert r.status_code == 206 and r.content == blob[990:]


# --- resume -------------------------------------------------------------------------------------


async def test_upload_resumes_after_the_connection_is_cut_mid_chunk(
        world: World, pair: tuple[Peer, Peer], caplog: pytest.LogCaptureFixture) -> None:
    alice = pair[0]
    caplog.set_level(logging.INFO, logger="lightbox.http")  # its line for each request
    blob = encrypt_attachment(os.urandom(3 * CHUNK)).ciphertext
    aid = (await create(world, alice, len(blob))).json()["attachment_id"]
    assert (await _put(world, alice, aid, 0, blob[:CHUNK])).status_code == 200

    class Cut(Exception):
        pass

    async def half_then_cut() -> AsyncIterator[bytes]:
        yield blob[CHUNK:CHUNK + 1000]
        await asyncio.sleep(0.05)
        raise Cut

    path = f"/v1/attachments/{aid}/upload"
    assert alice.device.access_token is not None
    # A valid proof for the whole chunk the client means to send; the body is then cut.
    headers = alice.device.proof("PUT", f"{path}?offset={CHUNK}", alice.device.access_token,
                                 body=blob[CHUNK:2 * CHUNK])
    headers.update({"content-type": "application/octet-stream",
                    "content-length": str(CHUNK)})
    with pytest.raises((Cut, httpx.HTTPError)):
        await world.http.put(path, params={"offset": CHUNK}, content=half_then_cut(),
                             headers=headers)

    async def relay_done_with_the_cut() -> bool:  # 499: the client went away mid-request
        return any(r.name == "lightbox.http" and getattr(r, "status", None) == 499
                   for r in caplog.records)
    await eventually(relay_done_with_the_cut)
    st = (await status(world, alice, aid)).json()
    assert st["committed"] == CHUNK  # the cut chunk was not stored, not even in part
    # A client that goes away is not a fault of the relay's: no "unhandled error" logged.
    assert not [r for r in caplog.records if r.getMessage() == "unhandled error"]
    relay = await sdk(world, alice)
    try:
        assert await sdk_attachments.upload(relay, blob, attachment_id=aid) == aid
        assert await sdk_attachments.download(relay, aid) == blob
    finally:
        await relay.aclose()


class _Flaky(httpx.AsyncBaseTransport):
    """A transport that breaks the 2nd and 3rd chunk PUTs after they reached the relay (the
    client never hears the answer) and the first download after some bytes."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.puts, self.gets = inner, 0, 0

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "PUT":
            self.puts += 1
            if self.puts in (2, 3):
                await response.aclose()
                raise httpx.ReadError("connection reset", request=request)
        if request.method == "GET" and not request.url.path.endswith("/upload"):
            self.gets += 1
            if self.gets == 1:
                return httpx.Response(response.status_code, headers=response.headers,
                                      stream=_Truncated(response), request=request)
        return response


class _Truncated(httpx.AsyncByteStream):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        async for piece in self.response.aiter_raw():
            yield piece
            sent += len(piece)
            if sent > 5000:
                raise httpx.RemoteProtocolError("peer closed connection")

    async def aclose(self) -> None:
        await self.response.aclose()


async def test_sdk_upload_and_download_survive_dropped_connections(
        world: World, pair: tuple[Peer, Peer]) -> None:
    alice = pair[0]
    blob = encrypt_attachment(os.urandom(5 * CHUNK)).ciphertext
    flaky = _Flaky(httpx.AsyncHTTPTransport())
    relay = await sdk(world, alice)
    await relay.aclose()
    relay._client = httpx.AsyncClient(transport=flaky)
    try:
        aid = await sdk_attachments.upload(relay, blob, backoff=0.01)
        assert flaky.puts >= 6
        assert await sdk_attachments.download(relay, aid, backoff=0.01) == blob
        assert flaky.gets == 2  # the second one resumed with a Range
    finally:
        await relay._client.aclose()


async def test_sdk_upload_gives_up_after_repeated_failures(
        world: World, pair: tuple[Peer, Peer]) -> None:
    relay = await sdk(world, pair[0])
    try:
        aid = (await relay.create_upload(100)).attachment_id
        relay.base_url = "http://127.0.0.1:9"  # nothing listens there
        with pytest.raises(RelayUnavailable):
            await sdk_attachments.upload(relay, b"x" * 100, attachment_id=aid, retries=2,
                                         backoff=0.01)
        relay.base_url = world.relay.base_url
        with pytest.raises(RelayRequestError) as err:
            await sdk_attachments.upload(relay, b"x" * 101, attachment_id=aid)
        assert err.value.code == "chunk_beyond_size"
    finally:
        await relay.aclose()


# --- blob store and sweep, directly ------------------------------------------------------------


async def test_blob_store_contract(db_dsn: str) -> None:
    db = Database(db_dsn, min_size=1, max_size=2)
    await db.open()
    try:
        store = PostgresBlobStore(db, page=2)
        bid = str(uuid.uuid4())
        await store.create(bid, 25)
        assert await store.write(bid, 0, b"a" * 10) == 10
        assert await store.write(bid, 10, b"b" * 10) == 20
        assert await store.write(bid, 20, b"c" * 5) == 25
        got = b"".join([p async for p in store.read(bid, 5, 22)])
        assert got == b"a" * 5 + b"b" * 10 + b"c" * 2
        await store.finalise(bid, hashlib.sha256(b"a" * 10 + b"b" * 10 + b"c" * 5).digest())
        await store.delete(bid)
        with pytest.raises(Exception) as err:
            await store.committed(bid)
        assert getattr(err.value, "code", None) is not None
        assert err.value.code.value == "upload_not_found"  # type: ignore[attr-defined]
    finally:
        await db.close()


async def test_sweep_deletes_only_old_unreferenced_uploads(db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path) as world:
        alice = await peer(world, "alice")
        old = await uploaded_any(world, alice, os.urandom(100))
        fresh_at = dt.datetime.now(dt.UTC)
        db = Database(db_dsn, min_size=1, max_size=2)
        await db.open()
        try:
            conn = await world.db()
            try:  # pretend the first upload was made two days ago; mark one referenced
                await conn.execute("UPDATE attachments SET created_at = $2 "
                                   "WHERE attachment_id = $1", old, fresh_at - dt.timedelta(2))
                kept = await uploaded_any(world, alice, os.urandom(100))
                referenced = await uploaded_any(world, alice, os.urandom(100))
                await conn.execute("UPDATE attachments SET created_at = $2, referenced_at = $2 "
                                   "WHERE attachment_id = $1", referenced,
                                   fresh_at - dt.timedelta(3))
            finally:
                await conn.close()
            service = AttachmentService(db=db, blobs=PostgresBlobStore(db), limits=AttachmentLimits(
                max_bytes=10**6, chunk_bytes=CHUNK, quota_bytes=10**7, unreferenced_ttl=86400,
                janitor_interval=60))
            assert await service.sweep(now=fresh_at) == [old]
            assert await service.sweep(now=fresh_at) == []
            assert set(await service.sweep(now=fresh_at + dt.timedelta(days=2))) == {kept}
            conn = await world.db()
            try:
                assert await conn.fetchval("SELECT count(*) FROM blobs") == 1
                assert await conn.fetchval("SELECT count(*) FROM attachment_chunks") == 1
            finally:
                await conn.close()
        finally:
            await db.close()


async def uploaded_any(world: World, p: Peer, blob: bytes) -> str:
    return await asyncio.wait_for(uploaded(world, p, blob), seconds(10))
