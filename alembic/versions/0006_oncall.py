"""On-call: roles with their acknowledgement deadlines, rota shifts (a ladder of users, primary
first), escalation timers of consults addressed to a role, their steps, reseal requests of a
shift handover, and recipients' signed receipts.

Timers live here, not in memory (PROTOCOL.md §16): ``escalations.due_at`` is swept by every relay
process with ``FOR UPDATE SKIP LOCKED``, so a restarted relay carries on where it stopped.
Shift overlap is checked by the relay under a lock on the role row (no btree_gist needed).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATEMENTS = [
    """
    CREATE TABLE oncall_roles (
        org_id          text NOT NULL,
        role            text NOT NULL CHECK (role ~ '^[a-z][a-z0-9_]{0,63}$'),
        display_name    text NOT NULL DEFAULT '',
        urgent_seconds  integer NOT NULL DEFAULT 300 CHECK (urgent_seconds > 0),
        routine_seconds integer NOT NULL DEFAULT 1800 CHECK (routine_seconds > 0),
        created_at      timestamptz NOT NULL,
        PRIMARY KEY (org_id, role)
    )
    """,
    """
    CREATE TABLE oncall_shifts (
        shift_id   uuid PRIMARY KEY,
        org_id     text NOT NULL,
        role       text NOT NULL,
        starts_at  timestamptz NOT NULL,
        ends_at    timestamptz NOT NULL,
        ladder     uuid[] NOT NULL CHECK (cardinality(ladder) >= 1),
        created_at timestamptz NOT NULL,
        CHECK (ends_at > starts_at),
        FOREIGN KEY (org_id, role) REFERENCES oncall_roles (org_id, role) ON DELETE CASCADE
    )
    """,
    "CREATE INDEX oncall_shifts_when ON oncall_shifts (org_id, role, starts_at)",
    """
    CREATE TABLE escalations (
        escalation_id  uuid PRIMARY KEY,
        message_pk     bigint NOT NULL UNIQUE REFERENCES messages (message_pk) ON DELETE CASCADE,
        message_id     uuid NOT NULL,
        thread_id      uuid NOT NULL,
        sender_user_id uuid NOT NULL,
        org_id         text NOT NULL,
        role           text NOT NULL,
        shift_id       uuid,
        ladder         uuid[] NOT NULL,
        deadline       integer NOT NULL,
        level          integer NOT NULL DEFAULT 0,
        phase          text NOT NULL DEFAULT 'renotify'
                       CHECK (phase IN ('renotify', 'release')),
        step           integer NOT NULL DEFAULT 0,
        state          text NOT NULL DEFAULT 'open'
                       CHECK (state IN ('open', 'acknowledged', 'exhausted')),
        due_at         timestamptz,
        shift_ends_at  timestamptz,
        acknowledged_by uuid,
        acknowledged_at timestamptz,
        created_at     timestamptz NOT NULL
    )
    """,
    "CREATE INDEX escalations_due ON escalations (due_at) WHERE state = 'open'",
    "CREATE INDEX escalations_handover ON escalations (shift_ends_at) WHERE state = 'open'",
    "CREATE INDEX escalations_thread ON escalations (thread_id)",
    """
    CREATE TABLE escalation_events (
        escalation_id uuid NOT NULL REFERENCES escalations (escalation_id) ON DELETE CASCADE,
        step          integer NOT NULL,
        kind          text NOT NULL,
        level         integer NOT NULL,
        user_id       uuid NOT NULL,
        at            timestamptz NOT NULL,
        PRIMARY KEY (escalation_id, step)
    )
    """,
    """
    CREATE TABLE reseal_requests (
        escalation_id uuid NOT NULL REFERENCES escalations (escalation_id) ON DELETE CASCADE,
        thread_id     uuid NOT NULL,
        devices       uuid[] NOT NULL,
        holders       uuid[] NOT NULL,
        requested_at  timestamptz NOT NULL,
        deadline      timestamptz NOT NULL,
        done_at       timestamptz,
        PRIMARY KEY (escalation_id)
    )
    """,
    """
    CREATE TABLE receipts (
        message_id uuid NOT NULL,
        thread_id  uuid NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
        device_id  uuid NOT NULL,
        user_id    uuid NOT NULL,
        kind       text NOT NULL CHECK (kind IN ('delivered', 'read', 'acknowledged')),
        at         timestamptz NOT NULL,
        statement  text NOT NULL,
        stored_at  timestamptz NOT NULL,
        PRIMARY KEY (message_id, device_id, kind)
    )
    """,
    "CREATE INDEX receipts_thread ON receipts (thread_id)",
]


def upgrade() -> None:
    for sql in STATEMENTS:
        op.execute(sql)


def downgrade() -> None:
    for table in ("receipts", "reseal_requests", "escalation_events", "escalations",
                  "oncall_shifts", "oncall_roles"):
        op.execute(f"DROP TABLE {table}")
