"""The batch store returns each delivery it queued, so the relay process that stored a message
can write it to a recipient connected to that same process without reading it back
(server/sends.py, server/ws.py, docs/ARCHITECTURE.md §3 "Local delivery").

Until now a stored message woke its recipients' pumps by ``NOTIFY``, each pump read its device's
next deliveries (one statement), and wrote them. When the recipient is connected to the process
that stored the message, that process already holds every byte of the delivery (the sealed
message, its thread number, priority and time) but for the delivery's id. It cannot write it
blindly, though: the read orders a device's queue (thread order, then urgent first across
threads, PROTOCOL.md §16.5), and another relay process may have stored a message for the same
device whose ``NOTIFY`` has not arrived yet. Only the store knows what else was queued.

* ``store_batch_delivering(..., p_local)``: ``store_batch`` of migration 0015 (the same
  arguments and ``p_local``, the same writes and notifications), returning one row per
  delivery (a message without one keeps a row with ``NULL`` delivery columns): the message's
  key, primary key and thread number as before, and the delivery's primary key, id, device,
  and ``d_queued``: for a device the relay names in ``p_local`` (those connected to it), the
  ids of that device's other deliveries still queued and not held (at most 8, in queue order;
  a device with more reads its queue anyway, and a short list keeps the store cheap when
  devices have many in flight). Its snapshot is taken after the thread locks (a later
  statement of the transaction, or of the function that took them), so within the batch's
  threads it misses nothing: every earlier message of those threads was numbered, and
  committed, under the locks this batch now holds. The batch's own deliveries are not among
  them (a statement does not see its own inserts); the relay orders those itself.
* ``lock_and_store_batch_delivering(..., p_local)``: migration 0016's ``lock_and_store_batch`` (same
  locks, same checks of the epoch, digests and retries), storing through the function above.

The relay writes a delivery without a read only when every id in ``d_queued`` has already been
written on that connection: then a read would have returned exactly the new deliveries.
Otherwise its pump reads the queue as before. The old functions stay: a relay of the release
before, still running while this migration is applied, keeps storing through them until it is
restarted.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

QUEUED_LIMIT = 8  # ids of other queued deliveries returned at most (server/store/batches.py)


def _migration(name: str) -> Any:
    """An earlier migration's module (its SQL texts)."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"lightbox_migration_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_RETURNS = """RETURNS TABLE (stored_pk bigint, stored_device text, stored_id text,
               stored_seq bigint, d_pk bigint, d_id text, d_device text, d_queued text[]"""


def _store_batch_delivering() -> str:
    """Migration 0015's ``store_batch``, renamed, its deliveries' insert returning what they
    are, and one row per delivery with the device's other queued deliveries."""
    text = str(_migration("0015_known_threads.py").STORE_BATCH)
    text = _replace_once(text, "CREATE FUNCTION store_batch(",
                         "CREATE FUNCTION store_batch_delivering(")
    text = _replace_once(text, "p_notes text[])\nRETURNS TABLE (stored_pk bigint, "
                               "stored_device text, stored_id text, stored_seq bigint)",
                         "p_notes text[], p_local uuid[])\n" + _RETURNS + ")")
    text = _replace_once(text, """         ORDER BY m.message_pk, r.k
    ), woken AS (""", """         ORDER BY m.message_pk, r.k
        RETURNING deliveries.delivery_pk, deliveries.delivery_id, deliveries.device_id,
                  deliveries.message_pk
    ), woken AS (""")
    select = "    SELECT m.message_pk, m.sender_device_id::text, m.message_id::text, m.thread_seq"
    return _replace_once(text, select + "\n      FROM m CROSS JOIN woken;", select + f""",
           dl.delivery_pk, dl.delivery_id::text, dl.device_id::text,
           CASE WHEN dl.device_id = ANY (p_local) THEN ARRAY(
               SELECT e.delivery_id::text FROM deliveries e
                WHERE e.device_id = dl.device_id AND NOT e.held
                ORDER BY e.delivery_pk LIMIT {QUEUED_LIMIT}) END
      FROM m CROSS JOIN woken LEFT JOIN dl ON dl.message_pk = m.message_pk;""")


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"an earlier migration's SQL is not as expected: {old!r}")
    return text.replace(old, new)


def _lock_and_store_delivering() -> str:
    """Migration 0016's ``lock_and_store_batch``, renamed, storing through
    ``store_batch_delivering`` and returning its rows with the epoch."""
    text = str(_migration("0016_directory_epoch.py")._lock_and_store())
    text = _replace_once(text, "CREATE FUNCTION lock_and_store_batch(",
                         "CREATE FUNCTION lock_and_store_batch_delivering(")
    text = _replace_once(
        text, "p_notes text[])\nRETURNS TABLE (stored_pk bigint, stored_device text, "
              "stored_id text, stored_seq bigint,\n               epoch bigint)",
        "p_notes text[], p_local uuid[])\n" + _RETURNS + ", epoch bigint)")
    text = _replace_once(text, "p_channel, p_notes) AS s;", "p_channel, p_notes, p_local) AS s;")
    return _replace_once(
        text, "RETURN QUERY SELECT s.stored_pk, s.stored_device, s.stored_id, s.stored_seq, "
              "current\n                   FROM store_batch(",
        "RETURN QUERY SELECT s.*, current\n                   FROM store_batch_delivering(")


_STORE_ARGS = ("uuid[], uuid[], uuid[], uuid[], text[], smallint[], text[], uuid[], bytea[], "
               "text[], bytea[], timestamptz, text, text[], uuid[]")


def upgrade() -> None:
    op.execute(_store_batch_delivering())
    op.execute(_lock_and_store_delivering())


def downgrade() -> None:
    op.execute("DROP FUNCTION lock_and_store_batch_delivering(uuid[], bytea[], bigint, "
               f"timestamptz, {_STORE_ARGS})")
    op.execute(f"DROP FUNCTION store_batch_delivering({_STORE_ARGS})")
