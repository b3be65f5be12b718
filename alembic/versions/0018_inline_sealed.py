"""A sealed message is kept in its row, uncompressed: no TOAST work on the send path.

``messages.sealed`` holds the sender's sealed message, ciphertext that never compresses. With
Postgres's defaults a row over about 2 KB (``TOAST_TUPLE_THRESHOLD``) is first compressed
(pglz gives up on ciphertext only after trying its first kilobyte) and then moved to the
table's TOAST relation in 2 KB chunks: for a message of a few kilobytes, every store writes
two or more TOAST rows and their index entries besides the message, and every delivery read
looks them up again through that index (PostgreSQL 16 documentation, §73.2 "TOAST").

* ``SET STORAGE EXTERNAL``: the column is never compressed; a value is moved out of line only
  when the row would still be too big.
* ``toast_tuple_target = 8160``: a row is not touched until it is over 8,160 bytes, about the
  most one 8 KB heap page holds, so a message of up to about 8 KB stays in its row. A longer
  one (a message may reach ``LIGHTBOX_MAX_MESSAGE_BYTES``) is moved out of line as before,
  uncompressed.

Neither rewrites the table: rows already stored keep their form until they are rewritten, and
Postgres reads both. Measured apart (docs/BENCHMARKS.md, round 11), storing a 2,816-byte
message row costs the backend 9.9 µs of CPU instead of 17.7, reading it back 3.1 instead of 4.7.
The price is disk: such rows fit two to a page, 225 MB for 57,600 of them against 172 MB with
the defaults, for as long as a message waits for its devices (its ciphertext is dropped once
every device has acknowledged it, server/store/messages.py).
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE messages ALTER COLUMN sealed SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE messages SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    op.execute("ALTER TABLE messages RESET (toast_tuple_target)")
    op.execute("ALTER TABLE messages ALTER COLUMN sealed SET STORAGE EXTENDED")
