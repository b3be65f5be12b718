"""Identity: IT admins, users and their certificates, enrolment codes, devices, prekeys,
device pairing, login challenges, refresh tokens, lockout counters and revocation lists.

The relay stores certificates it cannot create (signed by the organisation key or a user's
identity key), hashes of secrets (passwords with Argon2id, tokens with SHA-256) and public keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE admins (
        admin_id      uuid PRIMARY KEY,
        login         text NOT NULL UNIQUE,
        password_hash text NOT NULL,
        created_at    timestamptz NOT NULL,
        disabled_at   timestamptz
    )
    """,
    """
    CREATE TABLE users (
        user_id            uuid PRIMARY KEY,
        org_id             text NOT NULL,
        login              text NOT NULL UNIQUE,
        display_name       text NOT NULL,
        account_kind       text NOT NULL CHECK (account_kind IN ('clinician', 'service')),
        roles              text[] NOT NULL,
        specialty          text,
        department         text,
        licence_expires_at timestamptz,
        cert_not_after     timestamptz NOT NULL,
        identity_key       bytea NOT NULL,
        user_certificate   text NOT NULL,
        status             text NOT NULL CHECK (status IN ('pending', 'active', 'suspended')),
        password_hash      text,
        created_at         timestamptz NOT NULL,
        updated_at         timestamptz NOT NULL
    )
    """,
    "CREATE INDEX users_org_status ON users (org_id, status)",
    "CREATE INDEX users_name ON users (lower(display_name) text_pattern_ops)",
    """
    CREATE TABLE enrolment_codes (
        token_hash      bytea PRIMARY KEY,
        user_id         uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        sealed_identity bytea NOT NULL,
        created_at      timestamptz NOT NULL,
        expires_at      timestamptz NOT NULL,
        used_at         timestamptz
    )
    """,
    "CREATE INDEX enrolment_codes_user ON enrolment_codes (user_id)",
    """
    CREATE TABLE devices (
        device_id          uuid PRIMARY KEY,
        user_id            uuid NOT NULL REFERENCES users (user_id),
        kind               text NOT NULL CHECK (kind IN ('mobile', 'desktop', 'gateway')),
        device_certificate text NOT NULL,
        signing_key        bytea NOT NULL,
        dh_key             bytea NOT NULL,
        status             text NOT NULL CHECK (status IN ('active', 'revoked')),
        wipe_pending       boolean NOT NULL DEFAULT false,
        created_at         timestamptz NOT NULL,
        revoked_at         timestamptz,
        last_seen_at       timestamptz
    )
    """,
    "CREATE INDEX devices_user ON devices (user_id)",
    """
    CREATE TABLE signed_prekeys (
        device_id   uuid PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
        prekey_id   bigint NOT NULL,
        prekey      text NOT NULL,
        uploaded_at timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE one_time_prekeys (
        device_id  uuid NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        prekey_id  bigint NOT NULL,
        prekey     text,
        claimed_at timestamptz,
        PRIMARY KEY (device_id, prekey_id)
    )
    """,
    "CREATE INDEX one_time_prekeys_unclaimed ON one_time_prekeys (device_id, prekey_id) "
    "WHERE claimed_at IS NULL",
    """
    CREATE TABLE pairings (
        token_hash         bytea PRIMARY KEY,
        device_id          uuid NOT NULL,
        kind               text NOT NULL,
        signing_key        bytea NOT NULL,
        dh_key             bytea NOT NULL,
        offer_mac          bytea NOT NULL,
        org_public_key     bytea,
        created_at         timestamptz NOT NULL,
        expires_at         timestamptz NOT NULL,
        user_id            uuid REFERENCES users (user_id) ON DELETE CASCADE,
        device_certificate text,
        result_mac         bytea,
        completed_at       timestamptz
    )
    """,
    """
    CREATE TABLE auth_nonces (
        nonce      bytea PRIMARY KEY,
        expires_at timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE refresh_tokens (
        token_hash bytea PRIMARY KEY,
        family_id  uuid NOT NULL,
        user_id    uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        device_id  uuid NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        issued_at  timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        used_at    timestamptz,
        revoked_at timestamptz
    )
    """,
    "CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id)",
    "CREATE INDEX refresh_tokens_device ON refresh_tokens (device_id)",
    """
    CREATE TABLE login_failures (
        key             text PRIMARY KEY,
        failures        integer NOT NULL,
        locked_until    timestamptz,
        last_failure_at timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE revocation_lists (
        org_id      text PRIMARY KEY,
        number      bigint NOT NULL,
        list        text NOT NULL,
        received_at timestamptz NOT NULL
    )
    """,
]


def upgrade() -> None:
    for sql in STATEMENTS:
        op.execute(sql)


def downgrade() -> None:
    for table in ("revocation_lists", "login_failures", "refresh_tokens", "auth_nonces",
                  "pairings", "one_time_prekeys", "signed_prekeys", "devices",
                  "enrolment_codes", "users", "admins"):
        op.execute(f"DROP TABLE {table}")
