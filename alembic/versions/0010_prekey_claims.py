"""Who claimed each one-time prekey, so that claims can be limited per requesting device and
per target device over a sliding window (docs/PROTOCOL.md §11 "Prekey claims").

A claimed row was already kept (its key erased) so that its id is never reused; it now also
names the claiming device. Rows claimed before this revision have no claimer and count towards
the target's limit only.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE one_time_prekeys ADD COLUMN claimed_by uuid")
    op.execute("CREATE INDEX one_time_prekeys_claimed ON one_time_prekeys "
               "(device_id, claimed_at) WHERE claimed_at IS NOT NULL")
    op.execute("CREATE INDEX one_time_prekeys_claimed_by ON one_time_prekeys "
               "(claimed_by, device_id, claimed_at) WHERE claimed_by IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX one_time_prekeys_claimed_by")
    op.execute("DROP INDEX one_time_prekeys_claimed")
    op.execute("ALTER TABLE one_time_prekeys DROP COLUMN claimed_by")
