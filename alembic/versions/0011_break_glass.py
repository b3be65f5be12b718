"""Break-glass (docs/PROTOCOL.md §17): one case per emergency message sent without a consent,
the privacy office's review queue, and the sender's follow-up (a consent filed afterwards, or
the category of reason why none was possible).

Nothing in a row is patient data: the clinician's written reason stays sealed in the message;
the relay keeps its category. ``note`` is the privacy office's own words (no patient details,
as for a consent withdrawal's reason).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE break_glass_cases (
            case_id           uuid PRIMARY KEY,
            message_id        uuid NOT NULL,
            thread_id         uuid NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
            org_id            text NOT NULL,
            sender_user_id    uuid NOT NULL REFERENCES users (user_id),
            sender_device_id  uuid NOT NULL,
            category          text NOT NULL CHECK (category IN
                                ('unconscious', 'lacks_capacity', 'time_critical', 'other')),
            recipients        integer NOT NULL CHECK (recipients >= 0),
            attachments       integer NOT NULL CHECK (attachments >= 0),
            declared_at       timestamptz NOT NULL,
            follow_up         text CHECK (follow_up IN ('consent', 'no_consent')),
            follow_up_consent uuid,
            follow_up_detail  text,
            followed_up_at    timestamptz,
            status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
            outcome           text CHECK (outcome IN
                                ('appropriate', 'inappropriate', 'referred')),
            note              text,
            closed_by         text,
            closed_at         timestamptz,
            UNIQUE (sender_device_id, message_id),
            CHECK ((status = 'closed') = (outcome IS NOT NULL AND closed_at IS NOT NULL)),
            CHECK ((follow_up IS NULL) = (followed_up_at IS NULL))
        )
        """)
    op.execute("CREATE INDEX break_glass_by_sender ON break_glass_cases "
               "(sender_user_id, declared_at)")
    op.execute("CREATE INDEX break_glass_open ON break_glass_cases (org_id, status, declared_at)")
    op.execute("CREATE INDEX break_glass_by_thread ON break_glass_cases (thread_id) "
               "WHERE follow_up IS NULL")


def downgrade() -> None:
    op.execute("DROP TABLE break_glass_cases")
