"""Nonces of accepted ``Lightbox-Proof`` headers (docs/PROTOCOL.md §11), kept for the clock-skew
window so that a captured proof cannot be replayed, in any relay process.

A logged table, not UNLOGGED: after a crash an unlogged table comes back empty, which would
reopen the replay window for proofs of the last minute.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE proof_nonces (
            device_id  uuid NOT NULL,
            nonce      bytea NOT NULL CHECK (octet_length(nonce) = 16),
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (device_id, nonce)
        )
        """)
    op.execute("CREATE INDEX proof_nonces_expiry ON proof_nonces (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE proof_nonces")
