"""A new consult to an on-call role while no shift of it covers the moment waits for the role's
next shift, and the step that says so names when that shift starts.

In a gap in the rota the role reaches its certificate holders (``role_reach``, migration 0009)
and the consult used to open no escalation. Now it opens one that belongs to no shift
(``shift_id IS NULL``, ``shift_ends_at`` the start of the role's next shift known, or NULL: the
deferred handover of migration 0023, brought forward by a rota write in the same way), whose
ladder is the holders it reached, in the new phase ``waiting``: its reminders are ``no_shift``
steps (docs/PROTOCOL.md §16.4, server/oncall.py). Such a step carries when the next shift
starts, kept in ``escalation_events.next_shift_at`` (NULL for every other kind, and when the
rota has no later shift).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE escalations DROP CONSTRAINT escalations_phase_check")
    op.execute("ALTER TABLE escalations ADD CONSTRAINT escalations_phase_check "
               "CHECK (phase IN ('renotify', 'release', 'waiting'))")
    op.execute("ALTER TABLE escalation_events ADD COLUMN next_shift_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE escalation_events DROP COLUMN next_shift_at")
    # A consult still waiting for its first shift then takes the reminders of a deferred
    # handover whose ladder is used up (renotify at its last level); one that reached nobody
    # has no level to remind (the older sweep cannot step it) and waits without reminders.
    op.execute("UPDATE escalations SET phase = 'release', "
               "due_at = CASE WHEN cardinality(ladder) = 0 THEN NULL ELSE due_at END "
               "WHERE phase = 'waiting'")
    op.execute("ALTER TABLE escalations DROP CONSTRAINT escalations_phase_check")
    op.execute("ALTER TABLE escalations ADD CONSTRAINT escalations_phase_check "
               "CHECK (phase IN ('renotify', 'release'))")
