"""A batch of sends to threads the relay already knows, stored in one round trip
(server/sends.py, server/store/batches.py).

A paced send used to cost four round trips: ``BEGIN``, ``lock_and_read_batch``, the store,
``COMMIT`` (docs/BENCHMARKS.md, round 5). The checks between the read and the store are the
relay's Python (server/sends.py); they read a thread's organisation, its participants at a
moment, their devices (organisation, active or not) and whether the thread has on-call work.
Those rarely change between two messages of a thread. This migration lets the relay check a
batch against what it read last time, and have Postgres confirm, under the thread locks and in
the same statement that stores the batch, that nothing it read has changed since.

* ``thread_state_digests(threads, at)``: per existing thread, the SHA-256 of everything the send
  checks read about it: the organisation, each participant at ``at``
  (``thread_participants``, migration 0009), each participant's devices with their organisation
  and whether they are active, and the on-call flag. The lines are sorted before hashing, so
  the digest depends on the state only, never on row order.
* ``lock_and_read_batch`` returns each locked thread's digest too (rows of kind ``v``), taken in
  the same statement (one snapshot) as the reads the checks use.
* ``store_batch(...)``: the batch store that was a statement of server/store/batches.py (each
  thread's counter advanced, the messages numbered in batch order, one delivery per recipient
  device, the notifications), as a PL/pgSQL function so that the next one can call it; its
  plans are kept for the session like any PL/pgSQL function's.
* ``lock_and_store_batch(threads, digests, at, ...)``: locks the threads in id order, as
  ``lock_and_read_batch`` does (no crosswise wait between relay processes), then stores the batch
  only if every thread's digest is still the one given and none of the (sender device, message
  id) keys is stored yet; otherwise it stores nothing and returns no row, and the relay takes
  the four-round-trip path, whose reads decide. A single statement outside ``BEGIN`` is its own
  transaction: the locks, the comparison, the store and the ``COMMIT`` (with its WAL flush
  before the answer) are one round trip. The comparison runs after the locks are granted in a
  statement of its own, so it sees everything committed before (a volatile PL/pgSQL function
  takes a fresh snapshot for each statement; migration 0014 says why that matters).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# The on-call condition of lock_and_read_batch's 'r' rows: a role not removed, or a reseal
# request not done.
_ROUTED = """EXISTS (SELECT 1 FROM thread_roles r
                    WHERE r.thread_id = l.tid AND r.removed_at IS NULL)
        OR EXISTS (SELECT 1 FROM reseal_requests q
                    WHERE q.thread_id = l.tid AND q.done_at IS NULL)"""

DIGESTS = f"""
CREATE FUNCTION thread_state_digests(p_threads uuid[], p_at timestamptz)
RETURNS TABLE (thread_id uuid, digest bytea) LANGUAGE sql STABLE AS $$
    WITH p AS (SELECT tp.thread_id, tp.user_id FROM thread_participants(p_threads, p_at) AS tp),
    lines AS (
        SELECT t.thread_id, format('o %L', t.org_id) AS line
          FROM threads t WHERE t.thread_id = ANY (p_threads)
        UNION ALL
        SELECT p.thread_id, format('p %s', p.user_id) FROM p
        UNION ALL
        SELECT p.thread_id, format('d %s %s %L %s', d.user_id, d.device_id, u.org_id,
                                   d.status = 'active' AND u.status = 'active')
          FROM p JOIN devices d ON d.user_id = p.user_id JOIN users u ON u.user_id = d.user_id
        UNION ALL
        SELECT l.tid, 'r' FROM unnest(p_threads) AS l(tid)
         WHERE {_ROUTED}
    )
    SELECT l.thread_id, sha256(convert_to(string_agg(l.line, E'\\n' ORDER BY l.line), 'UTF8'))
      FROM lines l GROUP BY l.thread_id
$$
"""

def _migration_0014() -> Any:
    """Migration 0014's module, whose ``lock_and_read_batch`` this one extends (and restores
    on downgrade)."""
    path = Path(__file__).with_name("0014_message_path.py")
    spec = importlib.util.spec_from_file_location("lightbox_migration_0014", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock_and_read(with_digests: bool) -> str:
    """``lock_and_read_batch`` as migration 0014 made it, with (or without) the ``v`` rows: the
    digest of each locked thread, read in the same statement as the rest."""
    text = str(_migration_0014().LOCK_AND_READ).replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    end = "q.done_at IS NULL);\nEND\n$$"
    if text.count(end) != 1:
        raise RuntimeError("migration 0014's lock_and_read_batch is not as expected")
    if not with_digests:
        return text
    return text.replace(end, """q.done_at IS NULL)
    UNION ALL
    SELECT 'v', s.thread_id::text, NULL, NULL, NULL, s.digest, NULL, NULL
      FROM thread_state_digests(locked, p_at) AS s;
END
$$""")


_STORE_PARAMS = """p_mid uuid[], p_tid uuid[], p_su uuid[], p_sd uuid[], p_pr text[],
                            p_rank smallint[], p_pu text[], p_c uuid[], p_h bytea[],
                            p_r text[], p_s bytea[], p_now timestamptz, p_channel text,
                            p_notes text[]"""

STORE_BATCH = f"""
CREATE FUNCTION store_batch({_STORE_PARAMS})
RETURNS TABLE (stored_pk bigint, stored_device text, stored_id text, stored_seq bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH x AS (
        SELECT * FROM unnest(p_mid, p_tid, p_su, p_sd, p_pr, p_rank, p_pu, p_c, p_h, p_r, p_s)
            WITH ORDINALITY AS x(mid, tid, su, sd, pr, rank, pu, c, h, r, s, ord)
    ), n AS (
        SELECT x.tid, count(*) AS n FROM x GROUP BY x.tid
    ), seq AS (
        UPDATE threads t SET last_seq = t.last_seq + n.n FROM n WHERE t.thread_id = n.tid
        RETURNING t.thread_id AS tid, t.last_seq - n.n AS base
    ), m AS (
        INSERT INTO messages (message_id, thread_id, thread_seq, sender_user_id,
                              sender_device_id, priority, purpose, consent_id, body_hash,
                              recipients, sealed, size, created_at)
        SELECT x.mid, x.tid, seq.base + row_number() OVER (PARTITION BY x.tid ORDER BY x.ord),
               x.su, x.sd, x.pr, x.pu, x.c, x.h, x.r::uuid[], x.s, octet_length(x.s), p_now
          FROM x JOIN seq USING (tid) ORDER BY x.ord
        RETURNING messages.message_pk, messages.sender_device_id, messages.message_id,
                  messages.thread_seq, messages.recipients
    ), dl AS (
        INSERT INTO deliveries (delivery_id, device_id, message_pk, priority, created_at)
        SELECT gen_random_uuid(), r.dev, m.message_pk, x.rank, p_now
          FROM m JOIN x ON x.sd = m.sender_device_id AND x.mid = m.message_id
         CROSS JOIN LATERAL unnest(m.recipients) WITH ORDINALITY AS r(dev, k)
         ORDER BY m.message_pk, r.k
    ), woken AS (
        SELECT count(pg_notify(p_channel, w)) AS n FROM unnest(p_notes) AS w
    )
    SELECT m.message_pk, m.sender_device_id::text, m.message_id::text, m.thread_seq
      FROM m CROSS JOIN woken;
END
$$
"""

LOCK_AND_STORE = f"""
CREATE FUNCTION lock_and_store_batch(p_threads uuid[], p_digests bytea[], p_at timestamptz,
                                     {_STORE_PARAMS})
RETURNS TABLE (stored_pk bigint, stored_device text, stored_id text, stored_seq bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    locked uuid[];
BEGIN
    locked := ARRAY(SELECT t.thread_id FROM threads t WHERE t.thread_id = ANY (p_threads)
                     ORDER BY t.thread_id FOR UPDATE);
    IF EXISTS (SELECT 1 FROM unnest(p_threads, p_digests) AS w(tid, digest)
                 LEFT JOIN thread_state_digests(locked, p_at) AS s ON s.thread_id = w.tid
                WHERE s.digest IS DISTINCT FROM w.digest)
       OR EXISTS (SELECT 1 FROM messages m JOIN unnest(p_sd, p_mid) AS x(d, m)
                    ON m.sender_device_id = x.d AND m.message_id = x.m) THEN
        RETURN;  -- nothing stored: the relay reads under the locks and checks again
    END IF;
    RETURN QUERY SELECT * FROM store_batch(p_mid, p_tid, p_su, p_sd, p_pr, p_rank, p_pu, p_c,
                                           p_h, p_r, p_s, p_now, p_channel, p_notes);
END
$$
"""


def upgrade() -> None:
    op.execute(DIGESTS)
    op.execute(_lock_and_read(with_digests=True))
    op.execute(STORE_BATCH)
    op.execute(LOCK_AND_STORE)


def downgrade() -> None:
    op.execute("DROP FUNCTION lock_and_store_batch(uuid[], bytea[], timestamptz, uuid[], "
               "uuid[], uuid[], uuid[], text[], smallint[], text[], uuid[], bytea[], text[], "
               "bytea[], timestamptz, text, text[])")
    op.execute("DROP FUNCTION store_batch(uuid[], uuid[], uuid[], uuid[], text[], smallint[], "
               "text[], uuid[], bytea[], text[], bytea[], timestamptz, text, text[])")
    op.execute(_lock_and_read(with_digests=False))
    op.execute("DROP FUNCTION thread_state_digests(uuid[], timestamptz)")
