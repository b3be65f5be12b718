"""The hospital directory (SCIM 2.0, RFC 7643/7644): IT's bearer credentials, the users and
groups its directory pushes, and which relay user each directory entry became once IT's
workstation signed its certificate.

A directory entry is not an identity: only a certificate signed by the organisation key makes
a relay user (docs/SECURITY.md). Until IT signs, ``scim_users.user_id`` is NULL and the entry
is *pending*. A deleted user that IT had signed keeps its row (inactive, ``deleted_at`` set):
it holds the login and keeps the relay user suspended. Bearer tokens are kept as SHA-256
hashes (256-bit random tokens, like refresh tokens). ``sso_sessions`` marks the refresh
families begun with the hospital's OpenID provider and when they must sign in there again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE scim_tokens (
        token_id   uuid PRIMARY KEY,
        org_id     text NOT NULL,
        token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
        created_at timestamptz NOT NULL,
        revoked_at timestamptz
    )
    """,
    "CREATE INDEX scim_tokens_org ON scim_tokens (org_id)",
    """
    CREATE TABLE scim_users (
        scim_id     uuid PRIMARY KEY,
        org_id      text NOT NULL,
        user_name   text NOT NULL,
        external_id text,
        active      boolean NOT NULL,
        resource    jsonb NOT NULL,
        version     integer NOT NULL,
        user_id     uuid UNIQUE REFERENCES users (user_id),
        created_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL,
        deleted_at  timestamptz,
        CHECK (deleted_at IS NULL OR NOT active)
    )
    """,
    # Logins are unique across the relay and case-insensitive in SCIM (RFC 7643 §4.1.1).
    "CREATE UNIQUE INDEX scim_users_name ON scim_users (lower(user_name))",
    "CREATE INDEX scim_users_external ON scim_users (org_id, external_id)",
    """
    CREATE TABLE scim_groups (
        scim_id      uuid PRIMARY KEY,
        org_id       text NOT NULL,
        display_name text NOT NULL,
        external_id  text,
        resource     jsonb NOT NULL,
        version      integer NOT NULL,
        created_at   timestamptz NOT NULL,
        updated_at   timestamptz NOT NULL
    )
    """,
    "CREATE INDEX scim_groups_org ON scim_groups (org_id)",
    """
    CREATE TABLE scim_members (
        group_id uuid NOT NULL REFERENCES scim_groups (scim_id) ON DELETE CASCADE,
        user_id  uuid NOT NULL REFERENCES scim_users (scim_id) ON DELETE CASCADE,
        display  text,
        PRIMARY KEY (group_id, user_id)
    )
    """,
    "CREATE INDEX scim_members_user ON scim_members (user_id)",
    # Sessions begun with the hospital's IdP (server/oidc.py): they refresh until reauth_at,
    # then the clinician signs in at the IdP again.
    """
    CREATE TABLE sso_sessions (
        family_id uuid PRIMARY KEY,
        user_id   uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        reauth_at timestamptz NOT NULL
    )
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("sso_sessions", "scim_members", "scim_groups", "scim_users", "scim_tokens"):
        op.execute(f"DROP TABLE {table}")
