"""Attachment throughput: upload and download of a 5 MiB image through the relay, in MB/s,
beside the raw Postgres bytea write and read rate measured in the same run (ARCHITECTURE.md §5).

    .venv/bin/python -m bench.attachments [--size-mib 5] [--runs 5] [--out FILE]

What is measured (medians over ``--runs``, MB = 10^6 bytes of ciphertext):

* ``relay_upload``: the SDK's resumable upload (create, 1 MiB chunks over HTTP with device
  proofs, finalise with the relay re-hashing every byte) of the encrypted image;
* ``relay_download``: the SDK's streaming download by the recipient device (after a message
  with valid consent referenced the attachment, so the relay checks access);
* ``postgres_write`` / ``postgres_read``: the same bytes in the same chunk size inserted into and
  selected from a bytea table over one asyncpg connection: the floor the relay builds on.

It starts an embedded Postgres and a real relay on a loopback port (the test suite's helpers:
tests/identity_world.py), prints a table and writes JSON to bench/results/attachments.json.
Encryption is timed separately (``encrypt``), since it runs on the device, not the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from clients.sdk import attachments as sdk_attachments
from protocol.model import Purpose
from server import migrations
from server.embedded import EmbeddedPostgres
from tests.consent_world import consent, image_body, sdk, seal_with
from tests.helpers import with_database
from tests.identity_world import identity_world
from tests.relay_world import connect, peer, thread

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
CHUNK = 1024 * 1024


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds if seconds > 0 else float("inf")


async def _raw_postgres(dsn: str, blob: bytes, runs: int) -> tuple[list[float], list[float]]:
    conn = await asyncpg.connect(dsn)
    writes, reads = [], []
    try:
        await conn.execute("CREATE TABLE bench_bytea (k int, off bigint, data bytea, "
                           "PRIMARY KEY (k, off))")
        for k in range(runs):
            t0 = time.perf_counter()
            for off in range(0, len(blob), CHUNK):
                await conn.execute("INSERT INTO bench_bytea VALUES ($1, $2, $3)", k, off,
                                   blob[off:off + CHUNK])
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = b"".join(bytes(r["data"]) for r in await conn.fetch(
                "SELECT data FROM bench_bytea WHERE k = $1 ORDER BY off", k))
            reads.append(time.perf_counter() - t0)
            assert got == blob
        await conn.execute("DROP TABLE bench_bytea")
    finally:
        await conn.close()
    return writes, reads


async def _through_relay(dsn: str, tmp: Path, image: bytes, runs: int) -> dict[str, Any]:
    async with identity_world(dsn, tmp, attachment_chunk_bytes=CHUNK,
                              attachment_quota_bytes=10 * 1024 * 1024 * 1024,
                              rate_bytes_per_minute=10**12) as world:
        alice = await peer(world, "alice", roles=("intern",))
        bob = await peer(world, "bob")
        tid = await thread(world, alice, bob)
        token, cid = consent(world, alice, [image], roles=("orthopaedics_oncall",))
        a_http, b_http = await sdk(world, alice), await sdk(world, bob)
        sock = await connect(world, alice)
        ups, downs, encs = [], [], []
        size = 0
        try:
            await a_http.register_consent(token)
            for _ in range(runs):
                t0 = time.perf_counter()
                enc = await sdk_attachments.encrypt(image)
                encs.append(time.perf_counter() - t0)
                size = len(enc.ciphertext)
                t0 = time.perf_counter()
                aid = await sdk_attachments.upload(a_http, enc.ciphertext)
                ups.append(time.perf_counter() - t0)
                await sock.send(seal_with(alice, tid, [bob], image_body("bench", enc.descriptor(
                    aid, "image/png")), consent_id=cid, attachment_ids=[aid],
                    purpose=Purpose.DIRECT_CARE))
                t0 = time.perf_counter()
                got = await sdk_attachments.download(b_http, aid)
                downs.append(time.perf_counter() - t0)
                assert got == enc.ciphertext
        finally:
            await sock.close()
            await a_http.aclose()
            await b_http.aclose()
        return {"size": size, "upload": ups, "download": downs, "encrypt": encs}


async def run(size_mib: float, runs: int) -> dict[str, Any]:
    (ROOT / ".data").mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="bench-att-", dir=ROOT / ".data"))
    pg = EmbeddedPostgres(data / "pg")
    try:
        uri = pg.start()
        conn = await asyncpg.connect(uri)
        try:
            await conn.execute('CREATE DATABASE "bench_attachments"')
        finally:
            await conn.close()
        dsn = with_database(uri, "bench_attachments")
        await asyncio.to_thread(migrations.upgrade, dsn)
        image = os.urandom(int(size_mib * 1024 * 1024))  # incompressible, like a photo
        relay = await _through_relay(dsn, data, image, runs)
        writes, reads = await _raw_postgres(dsn, image, runs)
    finally:
        pg.stop(mode="immediate")
        shutil.rmtree(data, ignore_errors=True)
    n = relay["size"]
    med = statistics.median
    return {
        "image_bytes": len(image), "ciphertext_bytes": n, "chunk_bytes": CHUNK, "runs": runs,
        "mb_per_s": {
            "relay_upload": round(_rate(n, med(relay["upload"])), 2),
            "relay_download": round(_rate(n, med(relay["download"])), 2),
            "postgres_write": round(_rate(len(image), med(writes)), 2),
            "postgres_read": round(_rate(len(image), med(reads)), 2),
            "encrypt": round(_rate(len(image), med(relay["encrypt"])), 2),
        },
        "seconds": {"relay_upload": relay["upload"], "relay_download": relay["download"],
                    "postgres_write": writes, "postgres_read": reads},
        "at": int(time.time()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.attachments", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attachments.json")
    args = p.parse_args(argv)
    result = asyncio.run(run(args.size_mib, args.runs))
    print(f"attachment of {result['ciphertext_bytes']} ciphertext bytes, "
          f"{CHUNK // 1024} KiB chunks, median of {result['runs']} runs")
    for name, rate in result["mb_per_s"].items():
        print(f"  {name:<16} {rate:>9.2f} MB/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
