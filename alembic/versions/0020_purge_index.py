"""The messages whose ciphertext the relay still holds, indexed for the purge.

A message's sealed bytes (``messages.sealed``) are needed only while one of its deliveries is
queued. Once every recipient device has acknowledged it, or its deliveries were dropped (a
withdrawn consent, a revoked device, a wipe order), the relay sets them to NULL; the row stays,
with its ids, hash, recipients and times, for idempotent retries, receipts and thread order
(server/purge.py, docs/SECURITY.md "What the relay keeps").

The purge finds its candidates through this partial index: it holds only the messages whose
ciphertext is still kept, that is the queue and what was delivered since the last sweep, so a
sweep reads a few index pages however many messages the relay has ever carried. A purged row
leaves the index with its update.

From this revision a revocation drops what is queued for the revoked devices (nothing is ever
sent to them again). The upgrade drops what earlier revocations left queued, so that the first
sweep can purge those messages too; a downgrade does not bring it back (it was never going to
be delivered).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX messages_sealed_kept ON messages (message_pk) "
               "WHERE sealed IS NOT NULL")
    for table in ("deliveries", "device_notices"):
        op.execute(f"DELETE FROM {table} WHERE device_id IN "
                   "(SELECT device_id FROM devices WHERE status = 'revoked')")


def downgrade() -> None:
    op.execute("DROP INDEX messages_sealed_kept")
