"""Certificates waiting for IT's signature again: a directory user renamed, or a role the
hospital's IdP now grants (docs/SECURITY.md "Single sign-on").

A row asks IT's workstation (``lightbox-admin sign-pending``) to renew one user's certificate
with the ``display_name`` and ``roles`` stated here (NULL: keep the certificate's); the relay
cannot sign it itself. ``version`` moves with every change so a certificate signed from a
stale reading is refused. The row goes when the renewed certificate is stored.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE certificate_renewals (
        user_id      uuid PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
        org_id       text NOT NULL,
        display_name text,
        roles        text[],
        version      integer NOT NULL,
        requested_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX certificate_renewals_org ON certificate_renewals (org_id, requested_at)",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE certificate_renewals")
