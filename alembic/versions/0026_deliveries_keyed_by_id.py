"""A delivery's key is its id: one index a delivery less to write and to clean.

``deliveries`` had a primary key on ``delivery_pk`` (a sequence number) and a unique index on
``delivery_id`` (the id a device acknowledges). Nothing looks a delivery up by its
``delivery_pk`` alone: the relay reads a device's queue in ``delivery_pk`` order through
``deliveries_device_queue`` (device, then ``delivery_pk``), and finds a delivery to remove by
its ``delivery_id`` (``ack_deliveries``, migration 0019). The primary key's index was written
for every delivery stored and cleaned for every one removed, and never read. ``delivery_id``
is now the primary key (its index replaces the unique one, under the name
``deliveries_pkey``); ``delivery_pk`` keeps its sequence and its NOT NULL, and stays unique by
construction (a sequence's values are never reused; no statement writes the column).

Measured apart (docs/BENCHMARKS.md, round 25): inserting a delivery cost Postgres 8.2 µs of
CPU with both indexes and 6.6 µs with the key on ``delivery_id`` only.

Building the new key's index reads the table once, under the lock ``ALTER TABLE`` takes: on a
relay with a large backlog queued, run it in a quiet hour (docs/OPERATIONS.md, "Deployment",
step 2).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey, "
               "DROP CONSTRAINT deliveries_delivery_id_key, "
               "ADD CONSTRAINT deliveries_pkey PRIMARY KEY (delivery_id)")


def downgrade() -> None:
    op.execute("ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey, "
               "ADD CONSTRAINT deliveries_delivery_id_key UNIQUE (delivery_id), "
               "ADD CONSTRAINT deliveries_pkey PRIMARY KEY (delivery_pk)")
