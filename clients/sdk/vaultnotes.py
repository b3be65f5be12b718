"""What the vault keeps besides messages and images (clients/sdk/vault.py has the design): the
record of deliveries seen (the one replay memory: the connection's de-duplication and
``open_message``'s ``seen``), notes of what the device learnt, the outbox of sends not yet
stored by the relay (docs/PROTOCOL.md §3.5), and consent withdrawals.

:class:`VaultNotes` works inside its :class:`~clients.sdk.vault.Vault` (its lock, connection
and keys); the vault exposes its methods as its own (``vault.put_note`` ...).
"""

from __future__ import annotations

import msgspec

from clients.sdk.vaultrows import (
    OUTBOX_STAGES,
    OutboxRecord,
    VaultCore,
    VaultCorrupt,
    check_id,
    decode_row,
    open_row,
    row_label,
    row_tag,
    seal_row,
)

__all__ = ["SenderSeenSet", "VaultDedupe", "VaultNotes"]


class VaultNotes:
    def __init__(self, vault: VaultCore) -> None:
        self._vault = vault

    # -- de-duplication (clients.sdk.connection.DedupeStore) -------------------------------------

    def dedupe_seen(self, sender_device_id: str, message_id: str) -> bool:
        with self._vault._mutex:
            db = self._vault._use()
            tag = row_tag(self._vault._k().dedupe, sender_device_id, message_id)
            with self._vault._sql(db) as conn:
                return conn.execute("SELECT 1 FROM dedupe WHERE tag = ?", (tag,)).fetchone() \
                    is not None

    def dedupe_add(self, sender_device_id: str, message_id: str) -> None:
        with self._vault._mutex:
            db = self._vault._use()
            tag = row_tag(self._vault._k().dedupe, sender_device_id, message_id)
            with self._vault._sql(db) as conn:
                conn.execute("INSERT INTO dedupe VALUES (?) ON CONFLICT DO NOTHING", (tag,))

    # -- notes: what the client must remember across restarts -----------------------------------

    def put_note(self, kind: str, key: str, value: bytes) -> None:
        """Keep ``value`` under (``kind``, ``key``), replacing what was there. The file shows
        the kind and how many notes there are, not the key (an HMAC) nor the value."""
        check_id(kind, "kind")
        check_id(key, "key")
        with self._vault._mutex:
            db = self._vault._use()
            keys = self._vault._k()
            tag = row_tag(keys.notes, kind, key)
            sealed = seal_row(keys.notes, row_label("notes", kind, tag.hex()),
                           msgspec.msgpack.encode((key, value)))
            with self._vault._sql(db) as conn:
                conn.execute("INSERT INTO notes VALUES (?, ?, ?) ON CONFLICT (tag) "
                             "DO UPDATE SET sealed = excluded.sealed", (tag, kind, sealed))

    def drop_note(self, kind: str, key: str) -> bool:
        """Forget the note under (``kind``, ``key``); False if there was none."""
        check_id(kind, "kind")
        check_id(key, "key")
        with self._vault._mutex:
            db = self._vault._use()
            tag = row_tag(self._vault._k().notes, kind, key)
            with self._vault._sql(db) as conn:
                return conn.execute("DELETE FROM notes WHERE tag = ?", (tag,)).rowcount == 1

    def notes(self, kind: str) -> dict[str, bytes]:
        """Every note of ``kind``, by key."""
        with self._vault._mutex:
            db = self._vault._use()
            keys = self._vault._k()
            with self._vault._sql(db) as conn:
                rows = conn.execute("SELECT tag, sealed FROM notes WHERE kind = ?",
                                    (kind,)).fetchall()
            found: dict[str, bytes] = {}
            for tag, sealed in rows:
                plain = open_row(keys.notes, row_label("notes", kind, bytes(tag).hex()),
                              sealed)
                try:
                    key, value = msgspec.msgpack.decode(plain, type=tuple[str, bytes])
                except msgspec.DecodeError as exc:
                    raise VaultCorrupt("a stored note is unreadable") from exc
                if row_tag(keys.notes, kind, key) != tag:
                    raise VaultCorrupt("a stored note is damaged")
                found[key] = value
            return found

    # -- outbox: sends not yet stored by the relay ----------------------------------------------

    def put_outbox(self, record: OutboxRecord) -> None:
        """Write (or replace) a pending send; durable when this returns (synchronous=FULL)."""
        check_id(record.message_id, "message_id")
        if record.stage not in OUTBOX_STAGES:
            raise ValueError(f"outbox stage must be one of {OUTBOX_STAGES}")
        with self._vault._mutex:
            db = self._vault._use()
            sealed = seal_row(self._vault._k().outbox, row_label("outbox", record.message_id),
                           msgspec.msgpack.encode(record))
            with self._vault._sql(db) as conn:
                conn.execute("INSERT INTO outbox VALUES (?, ?, ?) ON CONFLICT (message_id) "
                             "DO UPDATE SET sealed = excluded.sealed",
                             (record.message_id, record.created_at, sealed))

    def outbox(self) -> list[OutboxRecord]:
        """Every pending send, oldest first."""
        with self._vault._mutex:
            db = self._vault._use()
            with self._vault._sql(db) as conn:
                rows = conn.execute("SELECT message_id, sealed FROM outbox "
                                    "ORDER BY created_at, message_id").fetchall()
            return [self._decode_outbox(mid, sealed) for mid, sealed in rows]

    def drop_outbox(self, message_id: str) -> bool:
        """Forget a pending send (stored by the relay, or refused for good); False if absent."""
        with self._vault._mutex:
            db = self._vault._use()
            with self._vault._sql(db) as conn:
                return conn.execute("DELETE FROM outbox WHERE message_id = ?",
                                    (message_id,)).rowcount == 1

    def _decode_outbox(self, message_id: str, sealed: object) -> OutboxRecord:
        return decode_row(self._vault._k().outbox, "outbox", message_id, sealed, OutboxRecord,
                           "a pending send in the vault")

    # -- consent withdrawals -----------------------------------------------------------------

    def note_consent_withdrawn(self, consent_id: str, at: int) -> None:
        """Remember that a consent was withdrawn (the relay's time), so every view shows it,
        after a restart too. The first time noted is kept."""
        name = "consent_withdrawn:" + check_id(consent_id, "consent id")
        with self._vault._mutex:
            db = self._vault._use()
            sealed = seal_row(self._vault._k().state, row_label("secrets", name),
                              str(int(at)).encode())
            with self._vault._sql(db) as conn:
                conn.execute("INSERT INTO secrets VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                             (name, sealed))

    def consent_withdrawals(self) -> dict[str, int]:
        """Consent id -> when it was withdrawn (seconds since the epoch), as noted."""
        with self._vault._mutex:
            db = self._vault._use()
            with self._vault._sql(db) as conn:
                rows = conn.execute("SELECT name, sealed FROM secrets "
                                    "WHERE name LIKE 'consent\\_withdrawn:%' ESCAPE '\\'"
                                    ).fetchall()
            key = self._vault._k().state
            return {name.split(":", 1)[1]: int(open_row(key, row_label("secrets", name),
                                                     sealed).decode()) for name, sealed in rows}


class VaultDedupe:
    """The vault's persisted set of (sender device, message id) seen: the one record of
    which deliveries this device has, used by the connection (a redelivery is acknowledged,
    not handed on: :class:`clients.sdk.connection.DedupeStore`) and by the protocol's replay
    check (:meth:`for_sender`, the ``seen`` of :func:`protocol.envelope.open_message`). A
    message is added when it is stored (:meth:`Vault.put_message`). Raises VaultLocked while
    the vault is locked."""

    def __init__(self, notes: VaultNotes) -> None:
        self._notes = notes

    def seen(self, sender_device_id: str, message_id: str) -> bool:
        return self._notes.dedupe_seen(sender_device_id, message_id)

    def add(self, sender_device_id: str, message_id: str) -> None:
        self._notes.dedupe_add(sender_device_id, message_id)

    def for_sender(self, sender_device_id: str) -> SenderSeenSet:
        return SenderSeenSet(self, sender_device_id)


class SenderSeenSet:
    """The :class:`protocol.envelope.SeenSet` of one sender device, over the vault's record.

    ``check_and_add`` answers False for a message this device already stored; for a new one
    it answers True and records nothing yet: the record is written with the message itself
    (:meth:`Vault.put_message`), so a message that could not be stored is not taken for a
    replay when the relay delivers it again."""

    def __init__(self, dedupe: VaultDedupe, sender_device_id: str) -> None:
        self._dedupe, self._sender = dedupe, sender_device_id

    def check_and_add(self, message_id: str) -> bool:
        return not self._dedupe.seen(self._sender, message_id)
