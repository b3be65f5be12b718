"""Refresh-token rotation with a reuse grace (docs/SECURITY.md "Identity and sessions").

When a refresh token is exchanged, its row records the token that replaced it
(``successor_hash``) and the new token pair sealed under a key derived from the old token
(``successor_sealed``: only a holder of the old token can open it, the database alone cannot).
For ``LIGHTBOX_REFRESH_REUSE_GRACE`` seconds a second exchange of the same token, the
legitimate race of two requests of one device, returns that same pair instead of ending the
family (RFC 9700 §4.14.2); after it, or once the successor was itself used, it is reuse.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE refresh_tokens ADD COLUMN successor_hash bytea")
    op.execute("ALTER TABLE refresh_tokens ADD COLUMN successor_sealed bytea")
    op.execute("CREATE INDEX refresh_tokens_successor ON refresh_tokens (successor_hash) "
               "WHERE successor_hash IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX refresh_tokens_successor")
    op.execute("ALTER TABLE refresh_tokens DROP COLUMN successor_sealed")
    op.execute("ALTER TABLE refresh_tokens DROP COLUMN successor_hash")
