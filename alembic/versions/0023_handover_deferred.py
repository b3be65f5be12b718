"""A handover deferred for want of an incoming shift is picked up by the role's next shift,
even one added to the rota later, and the outgoing ladder keeps being reminded meanwhile.

When an unacknowledged escalation's shift ends and no shift of the role takes over, the relay
*defers* its handover (docs/PROTOCOL.md §16.4, server/oncall.py): the escalation then belongs
to no shift (``shift_id IS NULL``) and ``shift_ends_at`` is the start of the role's next shift
known, or NULL. A rota write pulls ``shift_ends_at`` forward to a new shift's start; it finds
the role's deferred escalations by ``escalations_deferred``. While deferred, a ladder used up
(``state = 'exhausted'``) keeps a reminder timer in ``due_at``, so the timer sweep reads
exhausted rows too: ``escalations_due`` is rebuilt with the sweep's predicate.

Escalations an older relay deferred (unacknowledged, with no handover time or one that is not
the end of their shift) are marked deferred, given the role's next shift (one running now is
due at once), and a reminder if their ladder was used up.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX escalations_due")
    op.execute("CREATE INDEX escalations_due ON escalations (due_at) "
               "WHERE state IN ('open', 'exhausted')")
    op.execute("CREATE INDEX escalations_deferred ON escalations (org_id, role) "
               "WHERE shift_id IS NULL AND state IN ('open', 'exhausted')")
    op.execute("""
        UPDATE escalations e SET shift_id = NULL,
               shift_ends_at = (SELECT min(s.starts_at) FROM oncall_shifts s
                                 WHERE s.org_id = e.org_id AND s.role = e.role
                                   AND s.ends_at > now()),
               due_at = CASE WHEN e.state = 'exhausted' THEN now() ELSE e.due_at END
         WHERE e.state IN ('open', 'exhausted')
           AND (e.shift_ends_at IS NULL OR NOT EXISTS (
                SELECT 1 FROM oncall_shifts s
                 WHERE s.shift_id = e.shift_id AND s.ends_at = e.shift_ends_at))
    """)


def downgrade() -> None:
    op.execute("DROP INDEX escalations_deferred")
    op.execute("UPDATE escalations SET due_at = NULL WHERE state = 'exhausted'")
    op.execute("DROP INDEX escalations_due")
    op.execute("CREATE INDEX escalations_due ON escalations (due_at) WHERE state = 'open'")
