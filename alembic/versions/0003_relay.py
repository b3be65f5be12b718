"""Relay: consult threads and their members, sealed messages, per-device delivery queues and
durable per-device notices (receipts, orders) for devices that are offline.

The relay stores ciphertext only: ``messages.sealed`` is the encoded SealedMessage (header the
relay may read, body and wrapped keys it cannot), dropped once every delivery is acknowledged.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE threads (
        thread_id  uuid PRIMARY KEY,
        org_id     text NOT NULL,
        created_by uuid NOT NULL REFERENCES users (user_id),
        priority   text NOT NULL CHECK (priority IN ('routine', 'urgent')),
        last_seq   bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE thread_members (
        thread_id  uuid NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
        user_id    uuid NOT NULL REFERENCES users (user_id),
        added_at   timestamptz NOT NULL,
        added_by   uuid,
        removed_at timestamptz,
        read_seq   bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (thread_id, user_id)
    )
    """,
    "CREATE INDEX thread_members_user ON thread_members (user_id) WHERE removed_at IS NULL",
    """
    CREATE TABLE thread_roles (
        thread_id  uuid NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
        role       text NOT NULL,
        added_at   timestamptz NOT NULL,
        removed_at timestamptz,
        PRIMARY KEY (thread_id, role)
    )
    """,
    """
    CREATE TABLE messages (
        message_pk       bigserial PRIMARY KEY,
        message_id       uuid NOT NULL,
        thread_id        uuid NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
        thread_seq       bigint NOT NULL,
        sender_user_id   uuid NOT NULL,
        sender_device_id uuid NOT NULL,
        priority         text NOT NULL,
        purpose          text NOT NULL,
        consent_id       uuid,
        body_hash        bytea NOT NULL,
        recipients       uuid[] NOT NULL,
        sealed           bytea,
        size             integer NOT NULL,
        created_at       timestamptz NOT NULL,
        UNIQUE (sender_device_id, message_id),
        UNIQUE (thread_id, thread_seq)
    )
    """,
    """
    CREATE TABLE deliveries (
        delivery_pk bigserial PRIMARY KEY,
        delivery_id uuid NOT NULL UNIQUE,
        device_id   uuid NOT NULL,
        message_pk  bigint NOT NULL REFERENCES messages (message_pk) ON DELETE CASCADE,
        priority    smallint NOT NULL,
        held        boolean NOT NULL DEFAULT false,
        created_at  timestamptz NOT NULL
    )
    """,
    "CREATE INDEX deliveries_device_queue ON deliveries (device_id, delivery_pk) WHERE NOT held",
    "CREATE INDEX deliveries_message ON deliveries (message_pk)",
    """
    CREATE TABLE device_notices (
        notice_pk  bigserial PRIMARY KEY,
        device_id  uuid NOT NULL,
        kind       text NOT NULL,
        frame      bytea NOT NULL,
        dedupe_key text,
        created_at timestamptz NOT NULL,
        UNIQUE (device_id, dedupe_key)
    )
    """,
    "CREATE INDEX device_notices_device ON device_notices (device_id, notice_pk)",
]


def upgrade() -> None:
    for sql in STATEMENTS:
        op.execute(sql)


def downgrade() -> None:
    for table in ("device_notices", "deliveries", "messages", "thread_roles", "thread_members",
                  "threads"):
        op.execute(f"DROP TABLE {table}")
