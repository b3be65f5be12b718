"""The audit trail: appends chain by hash, and the verifier names the first row that was
edited, deleted, reordered or truncated directly in SQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import asyncpg
import pytest

from server import audit
from tests.helpers import ROOT, seconds


async def _fill(conn: asyncpg.Connection, n: int = 5) -> None:
    for i in range(n):
        await audit.append(conn, "test.event", subject_kind="device", subject_id=f"dev-{i}",
                           details={"i": i, "tags": ["a", "b"]})


async def _tamper(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    # The append-only trigger refuses UPDATE/DELETE; a tamperer who owns the table can still
    # disable it, which is exactly what the hash chain must catch.
    async with conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        await conn.execute(sql, *args)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update")


async def test_appends_chain_each_row_to_the_previous_hash(conn: asyncpg.Connection) -> None:
    await _fill(conn, 3)
    rows = await audit.rows(conn)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == audit.GENESIS_HASH
    assert rows[1].prev_hash == rows[0].row_hash
    assert rows[2].prev_hash == rows[1].row_hash
    report = await audit.verify(conn)
    assert report.ok and report.checked == 3


async def test_empty_trail_verifies(conn: asyncpg.Connection) -> None:
    report = await audit.verify(conn)
    assert report.ok and report.checked == 0


async def test_update_and_delete_are_refused_by_the_append_only_trigger(
        conn: asyncpg.Connection) -> None:
    await _fill(conn, 1)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("UPDATE audit_log SET outcome = 'denied'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await conn.execute("DELETE FROM audit_log")


async def test_verifier_names_an_edited_row(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    await _tamper(conn, "UPDATE audit_log SET subject_id = 'someone-else' WHERE seq = 3")
    report = await audit.verify(conn)
    assert not report.ok
    assert (report.first_bad_seq, report.problem) == (3, "edited")
    assert report.checked == 2


async def test_verifier_names_an_edited_details_field(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    await _tamper(conn, """UPDATE audit_log SET details = '{"i": 99, "tags": ["a", "b"]}'
                           WHERE seq = 4""")
    report = await audit.verify(conn)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 4, "edited")


async def test_verifier_names_a_deleted_row(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    await _tamper(conn, "DELETE FROM audit_log WHERE seq = 2")
    report = await audit.verify(conn)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 2, "deleted")


async def test_verifier_names_a_row_rewritten_with_a_recomputed_hash(
        conn: asyncpg.Connection) -> None:
    """Editing a row and recomputing its own hash still breaks the link to the next row."""
    await _fill(conn)
    r = (await audit.rows(conn))[1]
    content = audit.canonical_content(
        seq=r.seq, at=r.at, event=r.event, actor_kind=r.actor_kind, actor_id=r.actor_id,
        subject_kind=r.subject_kind, subject_id="forged", outcome=r.outcome,
        client_ip=r.client_ip, request_id=r.request_id, details=r.details)
    await _tamper(conn, "UPDATE audit_log SET subject_id = 'forged', row_hash = $1 WHERE seq = 2",
                  audit.row_hash(r.prev_hash, content))
    report = await audit.verify(conn)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 3, "reordered")


async def test_verifier_names_swapped_rows(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    for sql in ("UPDATE audit_log SET seq = -2 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = 4",
                "UPDATE audit_log SET seq = 4 WHERE seq = -2"):
        await _tamper(conn, sql)
    report = await audit.verify(conn)
    assert not report.ok
    assert report.first_bad_seq == 2


async def test_verifier_detects_a_deleted_tail(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    await _tamper(conn, "DELETE FROM audit_log WHERE seq >= 4")
    report = await audit.verify(conn)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 4, "truncated")


async def test_concurrent_appends_form_one_unbroken_chain(db_dsn: str) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=4, max_size=8)
    try:
        async def one(i: int) -> int:
            async with pool.acquire() as c:
                return await audit.append(c, "test.concurrent", details={"i": i})

        seqs = await asyncio.gather(*(one(i) for i in range(40)))
        assert sorted(seqs) == list(range(1, 41))
        async with pool.acquire() as c:
            assert (await audit.verify(c)).ok
    finally:
        await pool.close()


async def test_append_rolls_back_with_the_callers_transaction(conn: asyncpg.Connection) -> None:
    async def audited_change_that_fails() -> None:
        async with conn.transaction():
            await audit.append(conn, "test.rolled_back")
            raise RuntimeError("the audited change failed")

    with pytest.raises(RuntimeError):
        await audited_change_that_fails()
    assert await audit.rows(conn) == []
    assert (await audit.verify(conn)).ok


@pytest.mark.parametrize("details", [
    {"blob": b"bytes"}, {"x": 1.5}, {"s": "x" * 600}, {"n": {"a": {"b": {"c": {"d": {"e": 1}}}}}},
])
async def test_details_refuse_values_outside_the_metadata_subset(conn: asyncpg.Connection,
                                                                 details: dict[str, object]
                                                                 ) -> None:
    with pytest.raises(ValueError):
        await audit.append(conn, "test.bad", details=details)


async def test_injected_clock_sets_the_row_time(conn: asyncpg.Connection) -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    await audit.append(conn, "test.clock", now=lambda: at)
    (row,) = await audit.rows(conn)
    assert row.at == at
    assert (await audit.verify(conn)).ok


async def test_server_audit_verify_exits_1_and_names_the_row(conn: asyncpg.Connection,
                                                            db_dsn: str) -> None:
    await _fill(conn)
    env = {"DATABASE_URL": db_dsn, "PATH": "/usr/bin:/bin"}
    ok = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "server", "audit", "verify"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds(60))
    assert ok.returncode == 0, ok.stderr
    assert "5 rows verified" in ok.stdout
    await _tamper(conn, "UPDATE audit_log SET event = 'test.other' WHERE seq = 3")
    bad = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "server", "audit", "verify"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds(60))
    assert bad.returncode == 1
    assert "row 3 (edited)" in bad.stderr


async def _rewrite_whole(conn: asyncpg.Connection, *, edit_seq: int,
                         keep_to: int | None = None) -> None:
    """What the hash chain alone cannot catch: row ``edit_seq`` forged and every hash after it
    recomputed, the rows after ``keep_to`` deleted, and the head moved to the new end."""
    rows = await audit.rows(conn)
    prev = audit.GENESIS_HASH
    for r in rows:
        if keep_to is not None and r.seq > keep_to:
            await _tamper(conn, "DELETE FROM audit_log WHERE seq = $1", r.seq)
            continue
        subject = "forged" if r.seq == edit_seq else r.subject_id
        content = audit.canonical_content(
            seq=r.seq, at=r.at, event=r.event, actor_kind=r.actor_kind, actor_id=r.actor_id,
            subject_kind=r.subject_kind, subject_id=subject, outcome=r.outcome,
            client_ip=r.client_ip, request_id=r.request_id, details=r.details)
        h = audit.row_hash(prev, content)
        await _tamper(conn, "UPDATE audit_log SET subject_id = $2, prev_hash = $3, "
                      "row_hash = $4 WHERE seq = $1", r.seq, subject, prev, h)
        prev, last = h, r.seq
    await conn.execute("UPDATE audit_head SET seq = $1, row_hash = $2", last, prev)


async def test_a_kept_head_catches_a_chain_rewritten_whole(conn: asyncpg.Connection) -> None:
    await _fill(conn)
    kept = (await conn.fetchrow("SELECT seq, row_hash FROM audit_head"))
    head = (int(kept["seq"]), bytes(kept["row_hash"]))
    await _fill(conn, 2)  # the trail goes on after the head was kept: still intact
    assert (await audit.verify(conn, kept=head)).ok
    await _rewrite_whole(conn, edit_seq=2)
    assert (await audit.verify(conn)).ok  # consistent in itself
    report = await audit.verify(conn, kept=head)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 5, "rewritten")
    assert report.message == ("row 5 is not the row of the kept head: the chain up to it was "
                              "rewritten since")


async def test_a_kept_head_catches_rows_deleted_with_the_head_moved_back(
        conn: asyncpg.Connection) -> None:
    await _fill(conn)
    kept = (await conn.fetchrow("SELECT seq, row_hash FROM audit_head"))
    head = (int(kept["seq"]), bytes(kept["row_hash"]))
    await _rewrite_whole(conn, edit_seq=0, keep_to=3)
    assert (await audit.verify(conn)).ok
    report = await audit.verify(conn, kept=head)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 4, "truncated")
    assert report.message == ("the chain ends at row 3, before the kept head's row 5: rows "
                              "were deleted and the head moved back")


async def test_server_audit_verify_takes_the_head_as_audit_head_printed_it(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    await _fill(conn)
    env = {"DATABASE_URL": db_dsn, "PATH": "/usr/bin:/bin"}

    def server(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server", "audit", *argv], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=seconds(60))
    printed = (await asyncio.to_thread(server, "head")).stdout.strip()
    for argv in (["--head", printed], ["--head", *printed.split()]):
        ok = await asyncio.to_thread(server, "verify", *argv)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == ("audit trail intact: 5 rows verified; it still passes through "
                             "the kept head (row 5)\n")
    await _rewrite_whole(conn, edit_seq=1)
    bad = await asyncio.to_thread(server, "verify", "--head", printed)
    assert bad.returncode == 1
    assert "row 5 (rewritten)" in bad.stderr
    for wrong in (["--head", "5"], ["--head", "five", "ab" * 32], ["--head", "5", "ab" * 31]):
        refused = await asyncio.to_thread(server, "verify", *wrong)
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            "lightbox-server: --head takes what `lightbox-server audit head` printed: a row "
            "number and a hash of 64 hexadecimal digits")
