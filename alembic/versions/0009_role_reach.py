"""Who a role reaches, and who takes part in a thread, at a given moment: one definition in SQL.

``role_reach(org, role, at)`` is the users a role reaches at ``at``: the active users on the
ladder of the role's on-call shift covering ``at`` (shifts are half-open, ``[starts_at,
ends_at)``), or, when no shift covers it, every active user of the organisation whose
certificate holds the role. A role reaches only users of its own organisation.
``thread_participants(threads, at)`` is, for each thread, its member users (not removed) and
everyone its roles (not removed) reach at ``at``.

The send check, the recipients endpoint, the thread list and the batch store all read these
two functions (server/store/threads.py, server/store/batches.py), so they cannot disagree (a
disagreement shows as an endless ``device_set_mismatch``). The moment is a parameter, never
the database's ``now()``: the relay's injected clock decides. Both are plain ``LANGUAGE sql``
``STABLE`` functions with a single query, so the planner inlines them into the calling query.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ROLE_REACH = """
CREATE FUNCTION role_reach(p_org text, p_role text, p_at timestamptz)
RETURNS TABLE (user_id uuid) LANGUAGE sql STABLE AS $$
    SELECT u.user_id FROM oncall_shifts s
      JOIN users u ON u.user_id = ANY (s.ladder) AND u.org_id = p_org AND u.status = 'active'
     WHERE s.org_id = p_org AND s.role = p_role AND s.starts_at <= p_at AND p_at < s.ends_at
    UNION
    SELECT u.user_id FROM users u
     WHERE u.org_id = p_org AND p_role = ANY (u.roles) AND u.status = 'active'
       AND NOT EXISTS (
           SELECT 1 FROM oncall_shifts s WHERE s.org_id = p_org AND s.role = p_role
              AND s.starts_at <= p_at AND p_at < s.ends_at)
$$
"""

THREAD_PARTICIPANTS = """
CREATE FUNCTION thread_participants(p_threads uuid[], p_at timestamptz)
RETURNS TABLE (thread_id uuid, user_id uuid) LANGUAGE sql STABLE AS $$
    SELECT m.thread_id, m.user_id FROM thread_members m
     WHERE m.thread_id = ANY (p_threads) AND m.removed_at IS NULL
    UNION
    SELECT r.thread_id, reach.user_id FROM thread_roles r
      JOIN threads t ON t.thread_id = r.thread_id
      CROSS JOIN LATERAL role_reach(t.org_id, r.role, p_at) AS reach
     WHERE r.thread_id = ANY (p_threads) AND r.removed_at IS NULL
$$
"""


def upgrade() -> None:
    op.execute(ROLE_REACH)
    op.execute(THREAD_PARTICIPANTS)


def downgrade() -> None:
    op.execute("DROP FUNCTION thread_participants(uuid[], timestamptz)")
    op.execute("DROP FUNCTION role_reach(text, text, timestamptz)")
