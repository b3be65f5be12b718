"""A message's ciphertext goes in the transaction that removes its last queued delivery.

Migration 0020 let a sweep find the messages whose ciphertext is still kept through a partial
index (``messages_sealed_kept``, ``WHERE sealed IS NOT NULL``). Setting ``sealed`` to NULL
changes a column of that index's predicate, so the update could never be heap-only (HOT, the
PostgreSQL documentation's "Heap-Only Tuples"): every purge wrote a new row version elsewhere
and an entry in each of the table's indexes, and left them for vacuum. Measured on the
closed loop of ``make bench``, Postgres spent 109 µs a message against 72 before the purge
(docs/BENCHMARKS.md, round 22).

Here the index goes, and the rows are purged where their deliveries are removed: a statement
trigger on ``deliveries`` (``AFTER DELETE``, with the removed rows as a transition table, one
call per statement however many rows) hands the messages they carried to
``purge_unqueued``, which sets ``sealed`` to NULL for those no delivery is queued for any
more. Every way a delivery goes is covered by the one trigger: an acknowledgement
(``ack_deliveries``), a withdrawn consent, a revocation, a wipe order, an on-call handover, a
foreign-key cascade. The row is usually still in cache and its page has room for the shorter
version, so the update stays on its page: no index is touched.

Two recipient devices acknowledging a message's last two deliveries at the same time each
still see the other's row (neither has committed), and neither would purge. So a message left
with deliveries in sight is locked (``FOR NO KEY UPDATE``, in key order: no deadlock between
two such transactions) and looked at again in a new statement, whose snapshot is taken once
the lock is held: the last of them to take the lock sees every other removal committed
(PostgreSQL documentation, "Read Committed Isolation Level"). The lock does not conflict with
the ``FOR KEY SHARE`` a send's foreign-key checks take.

Each message is looked up by its key and in the queue by itself (a subquery with ``LIMIT 1``,
which the planner cannot turn into a join, by ``deliveries_message``), with ``enable_seqscan``
off for the function: planned from the statistics of an empty queue, as a new relay's are, the
function read both tables whole for a batch of 250 acknowledgements
(tests/server/test_plans.py), as the first sweep of migration 0020 did (docs/BENCHMARKS.md,
round 21).

Messages that never had a delivery, and those kept before this revision, are left to the
relay's sweep (server/purge.py), which now looks at each message once, by key, from where it
last stopped (``purge_progress``).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

PURGE_UNQUEUED = """
CREATE FUNCTION purge_unqueued(p_messages bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
DECLARE
    v_purged bigint[];
    v_left bigint[];
    v_more integer;
BEGIN
    IF cardinality(p_messages) = 0 THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        UPDATE messages m SET sealed = NULL
         WHERE m.message_pk = ANY (p_messages) AND m.sealed IS NOT NULL
           AND (SELECT true FROM deliveries d WHERE d.message_pk = m.message_pk LIMIT 1) IS NULL
        RETURNING m.message_pk)
    SELECT array_agg(message_pk) INTO v_purged FROM gone;
    -- Those still in sight of a delivery: locked, then looked at again (the docstring of
    -- alembic migration 0021 says why).
    SELECT array_agg(m.message_pk ORDER BY m.message_pk) INTO v_left
      FROM messages m
     WHERE m.message_pk = ANY (p_messages) AND m.sealed IS NOT NULL
       AND NOT (m.message_pk = ANY (coalesce(v_purged, '{}')));
    IF v_left IS NULL THEN
        RETURN coalesce(cardinality(v_purged), 0);
    END IF;
    PERFORM 1 FROM messages m WHERE m.message_pk = ANY (v_left)
      ORDER BY m.message_pk FOR NO KEY UPDATE OF m;
    UPDATE messages m SET sealed = NULL
     WHERE m.message_pk = ANY (v_left) AND m.sealed IS NOT NULL
       AND (SELECT true FROM deliveries d WHERE d.message_pk = m.message_pk LIMIT 1) IS NULL;
    GET DIAGNOSTICS v_more = ROW_COUNT;
    RETURN coalesce(cardinality(v_purged), 0) + v_more;
END
$$
"""

ON_DELETE = """
CREATE FUNCTION deliveries_purge_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM purge_unqueued(ARRAY(SELECT DISTINCT message_pk FROM gone));
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute("DROP INDEX messages_sealed_kept")
    op.execute(PURGE_UNQUEUED)
    op.execute(ON_DELETE)
    op.execute("CREATE TRIGGER deliveries_purge AFTER DELETE ON deliveries "
               "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
               "EXECUTE FUNCTION deliveries_purge_after_delete()")
    # Where the sweep has looked: every message up to ``swept_to`` had no delivery left when
    # it looked (and was purged) or had one, whose removal purges it. One row.
    op.execute("CREATE TABLE purge_progress (one boolean PRIMARY KEY DEFAULT true "
               "CHECK (one), swept_to bigint NOT NULL, next_to bigint NOT NULL)")
    op.execute("INSERT INTO purge_progress (swept_to, next_to) VALUES (0, 0)")


def downgrade() -> None:
    op.execute("DROP TABLE purge_progress")
    op.execute("DROP TRIGGER deliveries_purge ON deliveries")
    op.execute("DROP FUNCTION deliveries_purge_after_delete()")
    op.execute("DROP FUNCTION purge_unqueued(bigint[])")
    op.execute("CREATE INDEX messages_sealed_kept ON messages (message_pk) "
               "WHERE sealed IS NOT NULL")
