"""The message path in fewer round trips and WAL flushes (server/store/batches.py,
server/acks.py).

``lock_and_read_batch(devices, messages, threads, at)`` locks the rows of ``threads`` that
exist, in thread id order (two relay processes never wait for each other crosswise), and then
returns, as rows told apart by ``k``:

* ``o``: each locked thread and its organisation;
* ``m``: the messages already stored under the (sender device, message id) keys (retries);
* ``p``: each locked thread's participants at ``at`` (``thread_participants``, migration 0009);
* ``d``: the participants' devices with their organisations, and whether each is active;
* ``r``: the locked threads with on-call work (a role, or a pending reseal request).

Why a function: the lock and the reads were two statements, and cannot be one. A statement
that waits for a row lock keeps the snapshot it started with (Postgres docs, "Read Committed
Isolation Level"): a single statement that locked and read would miss a retry, a member or a
device committed by the transaction it waited for. A PL/pgSQL function is ``VOLATILE`` by
default, and a volatile function takes a fresh snapshot for each statement it runs (Postgres
docs, "Function Volatility Categories"), so the reads see everything committed before the locks
were granted, as the two statements did, in one round trip instead of two.

``ack_deliveries(devices, deliveries)`` removes acknowledged deliveries (each pair names its
device, so a device never removes another's) and returns the pairs removed. It sets
``synchronous_commit`` to ``off`` for its own transaction only (``set_config(..., true)`` is
``SET LOCAL``; Postgres docs, "Asynchronous Commit"): the removal is visible at once, and on
disk within three times ``wal_writer_delay`` (600 ms by default) instead of before the answer.
A Postgres crash in that window can bring back deliveries already acknowledged; they are sent
again, and a client de-duplicates on (sender device, message id) as it must for any redelivery
(docs/PROTOCOL.md §3.5, "Deliver"). A message's ``accepted`` is never
asynchronous: the send transaction keeps the default.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

LOCK_AND_READ = """
CREATE FUNCTION lock_and_read_batch(p_devices uuid[], p_messages uuid[], p_threads uuid[],
                                    p_at timestamptz)
RETURNS TABLE (k text, a text, b text, c text, n bigint, h bytea, at timestamptz, f boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    locked uuid[];
BEGIN
    locked := ARRAY(SELECT t.thread_id FROM threads t WHERE t.thread_id = ANY (p_threads)
                     ORDER BY t.thread_id FOR UPDATE);
    RETURN QUERY
    WITH p AS (SELECT tp.thread_id, tp.user_id FROM thread_participants(locked, p_at) AS tp)
    SELECT 'o'::text, t.thread_id::text, t.org_id, NULL::text, NULL::bigint, NULL::bytea,
           NULL::timestamptz, NULL::boolean
      FROM threads t WHERE t.thread_id = ANY (locked)
    UNION ALL
    SELECT 'm', m.sender_device_id::text, m.message_id::text, m.thread_id::text, m.thread_seq,
           m.body_hash, m.created_at, NULL
      FROM messages m JOIN unnest(p_devices, p_messages) AS x(d, m)
        ON m.sender_device_id = x.d AND m.message_id = x.m
    UNION ALL
    SELECT 'p', p.thread_id::text, p.user_id::text, NULL, NULL, NULL, NULL, NULL FROM p
    UNION ALL
    SELECT 'd', d.user_id::text, d.device_id::text, u.org_id, NULL, NULL, NULL,
           (d.status = 'active' AND u.status = 'active')
      FROM devices d JOIN users u ON u.user_id = d.user_id
     WHERE d.user_id IN (SELECT p.user_id FROM p)
    UNION ALL
    SELECT 'r', l.tid::text, NULL, NULL, NULL, NULL, NULL, NULL FROM unnest(locked) AS l(tid)
     WHERE EXISTS (SELECT 1 FROM thread_roles r
                    WHERE r.thread_id = l.tid AND r.removed_at IS NULL)
        OR EXISTS (SELECT 1 FROM reseal_requests q
                    WHERE q.thread_id = l.tid AND q.done_at IS NULL);
END
$$
"""


# PL/pgSQL rather than LANGUAGE sql: Postgres 16 plans the statements of a SQL function again
# at every call, and keeps a PL/pgSQL function's plans for the session (a third of the CPU here).
ACK_DELIVERIES = """
CREATE FUNCTION ack_deliveries(p_devices uuid[], p_deliveries uuid[])
RETURNS TABLE (device_id text, delivery_id text) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH gone AS (
        DELETE FROM deliveries d USING unnest(p_devices, p_deliveries) AS x(dev, del)
         WHERE d.device_id = x.dev AND d.delivery_id = x.del
        RETURNING d.device_id, d.delivery_id)
    SELECT gone.device_id::text, gone.delivery_id::text FROM gone;
END
$$
"""


def upgrade() -> None:
    op.execute(LOCK_AND_READ)
    op.execute(ACK_DELIVERIES)


def downgrade() -> None:
    op.execute("DROP FUNCTION ack_deliveries(uuid[], uuid[])")
    op.execute("DROP FUNCTION lock_and_read_batch(uuid[], uuid[], uuid[], timestamptz)")
