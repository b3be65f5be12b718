"""The purge looks no further when every message it was handed is purged.

``purge_unqueued`` (migration 0021) sets a message's ciphertext to NULL in the statement that
finds no delivery queued for it, then reads the messages it was handed again, to lock and look
once more at those still in sight of a delivery (a race of two last acknowledgements,
migration 0021's docstring). In the usual case, one recipient device acknowledging, every
message is purged by the first statement and the second read each message's row again for
nothing: it is now skipped when the first purged them all (``p_messages`` comes distinct from
the trigger; were it not, the function only takes the longer way). One index lookup of
``messages`` a message less (tests/server/test_plans.py counts them).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

# Migration 0021's function, but for OR REPLACE and the early return marked below (a migration
# is frozen, so its text is copied rather than read from 0021's module).
_PURGE = """
CREATE OR REPLACE FUNCTION purge_unqueued(p_messages bigint[]) RETURNS integer
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
%s    -- Those still in sight of a delivery: locked, then looked at again (the docstring of
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

# Every message handed over was purged: none is left to look at again.
_ALL_PURGED = """\
    IF cardinality(v_purged) = cardinality(p_messages) THEN
        RETURN cardinality(v_purged);
    END IF;
"""


def upgrade() -> None:
    op.execute(_PURGE % _ALL_PURGED)


def downgrade() -> None:
    op.execute(_PURGE % "")
