"""Audit trail: an append-only, hash-chained log of security events (metadata only).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_log (
            seq        bigint PRIMARY KEY,
            at         timestamptz NOT NULL,
            event      text NOT NULL,
            actor_kind text NOT NULL,
            actor_id   text,
            subject_kind text,
            subject_id text,
            outcome    text NOT NULL,
            client_ip  text,
            request_id text,
            details    jsonb NOT NULL DEFAULT '{}'::jsonb,
            prev_hash  bytea NOT NULL,
            row_hash   bytea NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX audit_log_subject ON audit_log (subject_kind, subject_id, seq)")
    op.execute("CREATE INDEX audit_log_event ON audit_log (event, seq)")
    # The head of the chain, updated in the same transaction as each append: a deleted tail
    # shows up as a mismatch between the last row and the head.
    op.execute(
        """
        CREATE TABLE audit_head (
            id        boolean PRIMARY KEY DEFAULT true CHECK (id),
            seq       bigint NOT NULL,
            row_hash  bytea NOT NULL
        )
        """
    )
    op.execute("INSERT INTO audit_head (seq, row_hash) VALUES (0, decode(repeat('00', 32), 'hex'))")
    # Append-only for the relay's own role: ordinary UPDATE/DELETE are refused by a trigger.
    # (The table's owner or a superuser can still disable it; the hash chain detects that.)
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_log")
    op.execute("DROP TABLE audit_head")
    op.execute("DROP FUNCTION audit_log_append_only()")
