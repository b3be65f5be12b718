"""Acknowledged deliveries are found by their key, whatever the table's size at planning.

``ack_deliveries`` (migration 0014) deleted ``deliveries`` joined to the pairs it was given
(``USING unnest(devices, deliveries)``). The relay's hot pool plans each statement once,
generically, from the table sizes of the moment (server/db.py), and a plan made while the
queue was nearly empty joined the pairs to a walk of the whole table, or of a whole index,
instead of looking each delivery up: every acknowledgement batch then read every queued and
dead row (docs/BENCHMARKS.md, round 12: 3 to 6 index entries or 55 rows read per message in
the runs that had that plan, none in the others).

Here the deliveries to remove are named by ``delivery_id = ANY (p_deliveries)``, a condition on
their unique index that any plan applies where it reads the table, and each pair's device is
checked against the row found (a device still never removes another's). Same arguments, same
rows returned, same ``synchronous_commit = off`` for its own transaction (migration 0014).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# The function around its DELETE, as migration 0014 wrote it but for OR REPLACE.
_ACK = """
CREATE OR REPLACE FUNCTION ack_deliveries(p_devices uuid[], p_deliveries uuid[])
RETURNS TABLE (device_id text, delivery_id text) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH gone AS (
%s
        RETURNING d.device_id, d.delivery_id)
    SELECT gone.device_id::text, gone.delivery_id::text FROM gone;
END
$$
"""

ACK_BY_KEY = _ACK % """\
        DELETE FROM deliveries d
         WHERE d.delivery_id = ANY (p_deliveries)
           AND (d.device_id, d.delivery_id) IN (
               SELECT x.dev, x.del FROM unnest(p_devices, p_deliveries) AS x(dev, del))"""

# Migration 0014's DELETE, verbatim: what a downgrade puts back (a migration is frozen, so it
# is copied rather than read from 0014's module).
ACK_BY_JOIN = _ACK % """\
        DELETE FROM deliveries d USING unnest(p_devices, p_deliveries) AS x(dev, del)
         WHERE d.device_id = x.dev AND d.delivery_id = x.del"""


def upgrade() -> None:
    op.execute(ACK_BY_KEY)


def downgrade() -> None:
    op.execute(ACK_BY_JOIN)
