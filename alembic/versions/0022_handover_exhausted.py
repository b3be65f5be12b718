"""An exhausted escalation is handed over at the end of its shift too.

An escalation whose ladder was used up (``state = 'exhausted'``) is still an unacknowledged
consult: at the shift's end it goes to the incoming shift like an open one (docs/PROTOCOL.md
§16 "Handover", server/oncall.py). The sweep claims handovers with ``state IN ('open',
'exhausted')``; the partial index it reads (``escalations_handover``, migration 0006) covered
open rows only, so it is rebuilt with the sweep's predicate. Acknowledged rows, which pile up,
stay out of it.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX escalations_handover")
    op.execute("CREATE INDEX escalations_handover ON escalations (shift_ends_at) "
               "WHERE state IN ('open', 'exhausted')")


def downgrade() -> None:
    op.execute("DROP INDEX escalations_handover")
    op.execute("CREATE INDEX escalations_handover ON escalations (shift_ends_at) "
               "WHERE state = 'open'")
