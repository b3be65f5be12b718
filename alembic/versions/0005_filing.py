"""Filing and expiry (PROTOCOL.md §15): the record gateway's filings, the lifecycle timer of every
shared image, and when each recipient device fetched it.

``filings`` keeps each filing statement (signed by the gateway device; evidence), one per
attachment. ``attachment_lifecycle`` is one row per image that a message shared: its state
(``unfiled`` until a gateway files it, ``filed``, then ``expired`` once every copy was ordered
to expire) and ``due_at``, the next timer (the hard limit while unfiled, the end of the grace
period once filed). Every relay process sweeps due rows with ``FOR UPDATE SKIP LOCKED``, so
timers survive restarts and never fire twice. ``attachment_access.fetched_at`` records the
first download by each device, so the relay can delete its ciphertext once the image is filed
and every recipient has fetched it or confirmed its expiry.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE filings (
        attachment_id     uuid PRIMARY KEY,
        statement_id      uuid NOT NULL UNIQUE,
        gateway_device_id uuid NOT NULL,
        message_id        uuid NOT NULL,
        thread_id         uuid NOT NULL,
        filed_at          timestamptz NOT NULL,
        receipt_sha256    bytea NOT NULL,
        statement         text NOT NULL,
        recorded_at       timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE attachment_lifecycle (
        attachment_id        uuid PRIMARY KEY,
        thread_id            uuid NOT NULL,
        message_id           uuid NOT NULL,
        sender_device_id     uuid NOT NULL,
        shared_at            timestamptz NOT NULL,
        state                text NOT NULL CHECK (state IN ('unfiled', 'filed', 'expired')),
        due_at               timestamptz,
        filed_at             timestamptz,
        expired_at           timestamptz,
        ciphertext_deleted_at timestamptz
    )
    """,
    "CREATE INDEX attachment_lifecycle_due ON attachment_lifecycle (due_at) "
    "WHERE due_at IS NOT NULL",
    "CREATE INDEX attachment_lifecycle_thread ON attachment_lifecycle (thread_id)",
    "CREATE INDEX attachment_lifecycle_ciphertext ON attachment_lifecycle (attachment_id) "
    "WHERE ciphertext_deleted_at IS NULL AND state <> 'unfiled'",
    "ALTER TABLE attachment_access ADD COLUMN fetched_at timestamptz",
    "CREATE INDEX expiry_orders_device ON expiry_orders (device_id) WHERE confirmed_at IS NULL",
]


def upgrade() -> None:
    for sql in STATEMENTS:
        op.execute(sql)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS expiry_orders_device")
    op.execute("ALTER TABLE attachment_access DROP COLUMN fetched_at")
    op.execute("DROP TABLE attachment_lifecycle")
    op.execute("DROP TABLE filings")
