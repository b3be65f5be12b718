"""Attachments (ciphertext only) and consent: upload metadata, the Postgres blob store's chunked
rows, which devices may download an attachment, which messages reference which attachments,
registered consent tokens, and expiry orders for device copies.

The relay never holds an attachment key or plaintext: ``attachment_chunks.data`` is
secretstream ciphertext (docs/PROTOCOL.md §6, §12). ``consents`` holds the signed token and
the claims the relay enforces; the patient reference in it is opaque (PROTOCOL §7.2).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STATEMENTS = [
    # --- the Postgres blob store (server/blobs.py) ------------------------------------------
    """
    CREATE TABLE blobs (
        blob_id      uuid PRIMARY KEY,
        size         bigint NOT NULL CHECK (size >= 0),
        committed    bigint NOT NULL DEFAULT 0,
        sha256       bytea,
        created_at   timestamptz NOT NULL,
        finalised_at timestamptz
    )
    """,
    """
    CREATE TABLE attachment_chunks (
        blob_id uuid NOT NULL REFERENCES blobs (blob_id) ON DELETE CASCADE,
        "offset" bigint NOT NULL,
        data    bytea NOT NULL,
        PRIMARY KEY (blob_id, "offset")
    )
    """,
    # --- attachment metadata (server/store/attachments.py) ----------------------------------
    """
    CREATE TABLE attachments (
        attachment_id   uuid PRIMARY KEY,
        owner_user_id   uuid NOT NULL REFERENCES users (user_id),
        owner_device_id uuid NOT NULL REFERENCES devices (device_id),
        size            bigint NOT NULL,
        finalised_at    timestamptz,
        referenced_at   timestamptz,
        created_at      timestamptz NOT NULL
    )
    """,
    "CREATE INDEX attachments_owner ON attachments (owner_user_id)",
    "CREATE INDEX attachments_unreferenced ON attachments (created_at) "
    "WHERE referenced_at IS NULL",
    """
    CREATE TABLE attachment_access (
        attachment_id uuid NOT NULL REFERENCES attachments (attachment_id) ON DELETE CASCADE,
        device_id     uuid NOT NULL,
        granted_at    timestamptz NOT NULL,
        PRIMARY KEY (attachment_id, device_id)
    )
    """,
    """
    CREATE TABLE message_attachments (
        message_pk    bigint NOT NULL REFERENCES messages (message_pk) ON DELETE CASCADE,
        attachment_id uuid NOT NULL,
        PRIMARY KEY (message_pk, attachment_id)
    )
    """,
    "CREATE INDEX message_attachments_attachment ON message_attachments (attachment_id)",
    "CREATE INDEX messages_consent ON messages (consent_id) WHERE consent_id IS NOT NULL",
    # --- consent (server/store/consents.py) --------------------------------------------------
    """
    CREATE TABLE consents (
        consent_id      uuid PRIMARY KEY,
        issuer_user_id  uuid NOT NULL REFERENCES users (user_id),
        org_id          text NOT NULL,
        token           text NOT NULL,
        purposes        text[] NOT NULL,
        recipient_users uuid[] NOT NULL,
        recipient_roles text[] NOT NULL,
        recipient_orgs  text[] NOT NULL,
        external        boolean NOT NULL,
        images          text[] NOT NULL,
        decision        text NOT NULL CHECK (decision IN ('agreed', 'refused')),
        basis           text NOT NULL,
        form_version    text NOT NULL,
        not_before      timestamptz NOT NULL,
        expires_at      timestamptz NOT NULL,
        registered_at   timestamptz NOT NULL,
        registered_by   uuid NOT NULL,
        revoked_at      timestamptz,
        revoked_by      uuid
    )
    """,
    "CREATE INDEX consents_issuer ON consents (issuer_user_id)",
    # --- expiry orders (PROTOCOL.md §15 builds on it) --------------------------------------------
    """
    CREATE TABLE expiry_orders (
        order_id      uuid PRIMARY KEY,
        device_id     uuid NOT NULL,
        attachment_id uuid NOT NULL,
        thread_id     uuid NOT NULL,
        reason        text NOT NULL,
        issued_at     timestamptz NOT NULL,
        confirmed_at  timestamptz,
        UNIQUE (device_id, attachment_id, reason)
    )
    """,
    "CREATE INDEX expiry_orders_attachment ON expiry_orders (attachment_id)",
]


def upgrade() -> None:
    for sql in STATEMENTS:
        op.execute(sql)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS messages_consent")
    for table in ("expiry_orders", "consents", "message_attachments", "attachment_access",
                  "attachments", "attachment_chunks", "blobs"):
        op.execute(f"DROP TABLE {table}")
