"""When each IT administrator's password was last set (``lightbox-server admin password``):
the relay refuses an admin token issued before it (server/authn.py), so that a password reset
after a suspected compromise ends the tokens issued with the old one, as ``admin remove`` does,
instead of leaving them valid until they expire (docs/SECURITY.md "Lockout").

NULL for an administrator whose password has not changed since it was created: every token of
theirs is checked as before. Nothing is rewritten; a relay of the release before works with it
(it reads the column it knows).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE admins ADD COLUMN password_set_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE admins DROP COLUMN password_set_at")
