"""A directory epoch: the one-statement store of a known thread skips the digest when nothing
the send checks read has changed anywhere (server/sends.py, server/store/batches.py).

Migration 0015 lets the relay store a batch to threads it has read before in one statement,
after Postgres recomputes each thread's digest under the lock and finds it unchanged. That
digest costs about 150 µs of backend CPU a call (docs/BENCHMARKS.md, round 6), 300-400 µs of
the statement's time at paced rates (round 8), to confirm what is almost always true: nobody
changed the thread's members or their devices since.

* ``directory_epoch``: one row, one counter. Every transaction that changes something the
  digest covers advances it, once, through row triggers on those tables and columns only:

  - ``threads``: its organisation (``org_id``), or the thread deleted;
  - ``thread_members``: a participant added (``removed_at IS NULL``), removed or deleted, or
    the row moved to another thread or user. A read mark (``mark_read``'s upsert of
    ``read_seq``, or the removed row it inserts for someone reached through a role) is not a
    participant change and does not advance it;
  - ``thread_roles`` and ``reseal_requests``: any change (the thread's on-call work);
  - ``devices``: a device enrolled or deleted, or its ``user_id`` or ``status`` changed (not
    ``last_seen_at`` or ``wipe_pending``);
  - ``users``: a user created or deleted, or its ``org_id`` or ``status`` changed (not its
    name, roles or password).

  The triggers are constraint triggers deferred to the commit: a transaction takes the
  row's lock as the last thing it does, so the lock cannot join a deadlock with the locks
  it took before (thread rows, the audit chain's head), and holds it only while it commits.
  Concurrent changes queue on that lock, so the counter only grows, in commit order, and a
  transaction that made several changes advances it once (``bumped_by`` holds its id).
  Directory changes are rare next to messages; the send path only reads the row.
* ``lock_and_read_batch`` also returns the epoch (a row of kind ``e``), read in the same
  statement, so in the same snapshot, as the state and its digests.
* ``lock_and_store_batch(threads, digests, epoch, at, ...)`` locks the threads as before. If
  every thread still exists and the epoch is the one given, no change the digest covers has
  committed since the state was read, and it stores without computing a digest; otherwise it
  compares the digests as migration 0015 did. It returns the epoch it read after the locks
  with each stored row, and the relay keeps it with the state the batch was checked against.
  A missing epoch row (or ``NULL`` given) is never equal: the digests decide. It takes one
  argument more than migration 0015's, which stays: a relay of the release before, still
  running while this migration is applied, keeps storing through it (by digest; the ``e``
  row its read now returns is harmless to it) until it is restarted.

The digests stay the authority: an epoch that moved (a device enrolled anywhere) costs each
known thread one digest comparison, never a wrong store.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path
from typing import Any

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _migration(name: str) -> Any:
    """An earlier migration's module (its SQL texts)."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"lightbox_migration_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EPOCH_TABLE = """
CREATE TABLE directory_epoch (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    n bigint NOT NULL,
    bumped_by xid8
)
"""

ADVANCE = """
CREATE FUNCTION advance_directory_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per transaction: a later change of the same transaction finds its own id.
    UPDATE directory_epoch SET n = n + 1, bumped_by = pg_current_xact_id()
     WHERE bumped_by IS DISTINCT FROM pg_current_xact_id();
    RETURN NULL;
END
$$
"""

# (table, trigger name suffix, event and condition): the changes the digest of migration 0015
# (thread_state_digests) can see.
TRIGGERS = [
    ("threads", "org", "AFTER UPDATE OF org_id",
     "WHEN (OLD.org_id IS DISTINCT FROM NEW.org_id)"),
    ("threads", "gone", "AFTER DELETE", ""),
    ("thread_members", "added", "AFTER INSERT", "WHEN (NEW.removed_at IS NULL)"),
    ("thread_members", "changed", "AFTER UPDATE OF thread_id, user_id, removed_at",
     "WHEN ((OLD.thread_id, OLD.user_id, OLD.removed_at IS NULL) IS DISTINCT FROM "
     "(NEW.thread_id, NEW.user_id, NEW.removed_at IS NULL))"),
    ("thread_members", "gone", "AFTER DELETE", "WHEN (OLD.removed_at IS NULL)"),
    ("thread_roles", "any", "AFTER INSERT OR UPDATE OR DELETE", ""),
    ("reseal_requests", "any", "AFTER INSERT OR UPDATE OR DELETE", ""),
    ("devices", "added", "AFTER INSERT OR DELETE", ""),
    ("devices", "changed", "AFTER UPDATE OF user_id, status",
     "WHEN ((OLD.user_id, OLD.status) IS DISTINCT FROM (NEW.user_id, NEW.status))"),
    ("users", "added", "AFTER INSERT OR DELETE", ""),
    ("users", "changed", "AFTER UPDATE OF org_id, status",
     "WHEN ((OLD.org_id, OLD.status) IS DISTINCT FROM (NEW.org_id, NEW.status))"),
]


def _trigger_name(table: str, suffix: str) -> str:
    return f"{table}_epoch_{suffix}"


def _lock_and_read(with_epoch: bool) -> str:
    """``CREATE OR REPLACE`` of ``lock_and_read_batch`` as migration 0015 made it, with (or
    without) the ``e`` row: the directory epoch, read in the same statement as the state and
    its digests."""
    text = str(_migration("0015_known_threads.py")._lock_and_read(with_digests=True))
    end = "FROM thread_state_digests(locked, p_at) AS s;\nEND\n$$"
    if text.count(end) != 1:
        raise RuntimeError("migration 0015's lock_and_read_batch is not as expected")
    if not with_epoch:
        return text
    return text.replace(end, """FROM thread_state_digests(locked, p_at) AS s
    UNION ALL
    SELECT 'e', NULL, NULL, NULL, e.n, NULL, NULL, NULL FROM directory_epoch e;
END
$$""")


_STORE_ARGS = ("p_mid, p_tid, p_su, p_sd, p_pr, p_rank, p_pu, p_c, p_h, p_r, p_s, p_now, "
               "p_channel, p_notes")


def _lock_and_store() -> str:
    params = _migration("0015_known_threads.py")._STORE_PARAMS
    return f"""
CREATE FUNCTION lock_and_store_batch(p_threads uuid[], p_digests bytea[], p_epoch bigint,
                                     p_at timestamptz, {params})
RETURNS TABLE (stored_pk bigint, stored_device text, stored_id text, stored_seq bigint,
               epoch bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    locked uuid[];
    current bigint;
BEGIN
    locked := ARRAY(SELECT t.thread_id FROM threads t WHERE t.thread_id = ANY (p_threads)
                     ORDER BY t.thread_id FOR UPDATE);
    -- A statement of its own after the locks: it sees every change committed before them.
    current := (SELECT e.n FROM directory_epoch e);
    IF cardinality(locked) <> cardinality(p_threads) THEN
        RETURN;  -- a thread is gone: the relay reads under the locks and answers
    END IF;
    IF current IS NULL OR p_epoch IS NULL OR current <> p_epoch THEN
        -- Something changed somewhere since the state was read: this batch's threads?
        IF EXISTS (SELECT 1 FROM unnest(p_threads, p_digests) AS w(tid, digest)
                     LEFT JOIN thread_state_digests(locked, p_at) AS s
                       ON s.thread_id = w.tid
                    WHERE s.digest IS DISTINCT FROM w.digest) THEN
            RETURN;  -- nothing stored: the relay reads under the locks and checks again
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM messages m JOIN unnest(p_sd, p_mid) AS x(d, m)
                 ON m.sender_device_id = x.d AND m.message_id = x.m) THEN
        RETURN;  -- a retry: the read path answers it with the first outcome
    END IF;
    RETURN QUERY SELECT s.stored_pk, s.stored_device, s.stored_id, s.stored_seq, current
                   FROM store_batch({_STORE_ARGS}) AS s;
END
$$
"""


_NEW_LOCK_AND_STORE_ARGS = (
    "uuid[], bytea[], bigint, timestamptz, uuid[], uuid[], uuid[], uuid[], text[], smallint[], "
    "text[], uuid[], bytea[], text[], bytea[], timestamptz, text, text[]")


def upgrade() -> None:
    op.execute(EPOCH_TABLE)
    op.execute("INSERT INTO directory_epoch (n) VALUES (1)")
    op.execute(ADVANCE)
    for table, suffix, event, condition in TRIGGERS:
        op.execute(f"CREATE CONSTRAINT TRIGGER {_trigger_name(table, suffix)} {event} "
                   f"ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW {condition} "
                   "EXECUTE FUNCTION advance_directory_epoch()")
    op.execute(_lock_and_read(with_epoch=True))
    # A new function beside migration 0015's (another argument list): relays still running the
    # release before keep storing through theirs, by digest, until they are restarted.
    op.execute(_lock_and_store())


def downgrade() -> None:
    op.execute(f"DROP FUNCTION lock_and_store_batch({_NEW_LOCK_AND_STORE_ARGS})")
    op.execute(_lock_and_read(with_epoch=False))
    for table, suffix, _, _ in TRIGGERS:
        op.execute(f"DROP TRIGGER {_trigger_name(table, suffix)} ON {table}")
    op.execute("DROP FUNCTION advance_directory_epoch()")
    op.execute("DROP TABLE directory_epoch")
