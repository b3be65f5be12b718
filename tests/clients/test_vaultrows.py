"""clients/sdk/vaultrows.py: a vault row opens only under its own key and label and holds the
id it is filed under; tags are keyed; ids are bounded; SQLite failures map to the two vault
errors a caller can act on (try again later, or the file is damaged)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from clients.sdk.vaultrows import (
    MAX_ID,
    VaultCorrupt,
    VaultKeys,
    VaultMessage,
    VaultUnavailable,
    check_id,
    decode_row,
    map_sqlite_error,
    open_row,
    row_label,
    row_tag,
    seal_row,
)

KEYS = VaultKeys.derive(b"\x01" * 32, b"\x02" * 16)
OTHER = VaultKeys.derive(b"\x01" * 32, b"\x03" * 16)  # the same passphrase, another vault


def _message(message_id: str = "m-1") -> VaultMessage:
    return VaultMessage(message_id=message_id, thread_id="t-1", sender_user_id="u-1",
                        sender_device_id="d-1", sent_at=1.0, body="Wrist, bed 4")


def _sealed(message: VaultMessage, row_id: str) -> bytes:
    return seal_row(KEYS.messages, row_label("messages", row_id),
                    msgspec.msgpack.encode(message))


def test_a_row_opens_under_its_key_and_label_only() -> None:
    sealed = _sealed(_message(), "m-1")
    assert decode_row(KEYS.messages, "messages", "m-1", sealed, VaultMessage,
                      "a stored message") == _message()
    for key, label in ((OTHER.messages, row_label("messages", "m-1")),
                       (KEYS.notes, row_label("messages", "m-1")),
                       (KEYS.messages, row_label("messages", "m-2")),
                       (KEYS.messages, row_label("outbox", "m-1"))):
        with pytest.raises(VaultCorrupt, match="tampered"):
            open_row(key, label, sealed)


def test_a_tampered_or_non_bytes_row_is_corrupt() -> None:
    sealed = bytearray(_sealed(_message(), "m-1"))
    sealed[-1] ^= 1
    with pytest.raises(VaultCorrupt, match="tampered"):
        open_row(KEYS.messages, row_label("messages", "m-1"), bytes(sealed))
    with pytest.raises(VaultCorrupt, match=r"^a vault record is damaged$"):
        open_row(KEYS.messages, row_label("messages", "m-1"), "text")


def test_a_row_holding_another_id_than_its_own_is_refused() -> None:
    # Sealed under m-1's label but holding m-2: a row swapped for another by id.
    sealed = _sealed(_message("m-2"), "m-1")
    with pytest.raises(VaultCorrupt, match=r"^a stored message is damaged$"):
        decode_row(KEYS.messages, "messages", "m-1", sealed, VaultMessage, "a stored message")


def test_a_row_that_opens_but_is_not_the_struct_is_unreadable() -> None:
    sealed = seal_row(KEYS.messages, row_label("messages", "m-1"), b"\xc1")
    with pytest.raises(VaultCorrupt, match=r"^a stored message is unreadable$"):
        decode_row(KEYS.messages, "messages", "m-1", sealed, VaultMessage, "a stored message")


def test_row_tags_are_stable_and_keyed() -> None:
    assert row_tag(KEYS.threads, "t-1") == row_tag(KEYS.threads, "t-1")
    assert row_tag(KEYS.threads, "t-1") != row_tag(OTHER.threads, "t-1")
    assert row_tag(KEYS.dedupe, "d-1", "m-1") != row_tag(KEYS.dedupe, "d-1m", "-1")


@pytest.mark.parametrize("value", ["", "x" * (MAX_ID + 1)])
def test_an_empty_or_overlong_id_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=f"message_id must be a non-empty string of at most "
                                         f"{MAX_ID} characters"):
        check_id(value, "message_id")
    assert check_id("x" * MAX_ID, "message_id") == "x" * MAX_ID


def test_a_message_never_prints_its_body() -> None:
    assert "Wrist" not in repr(_message())


def test_a_busy_database_is_unavailable_and_a_non_vault_file_is_corrupt(
        tmp_path: Path) -> None:
    path = tmp_path / "not-a-vault"
    path.write_bytes(b"this is not an SQLite database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError) as damaged:
        sqlite3.connect(path).execute("SELECT 1 FROM sqlite_master")
    assert isinstance(map_sqlite_error(damaged.value), VaultCorrupt)

    holder = sqlite3.connect(tmp_path / "v.db", timeout=0)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    waiting = sqlite3.connect(tmp_path / "v.db", timeout=0)
    with pytest.raises(sqlite3.OperationalError) as busy:
        waiting.execute("SELECT * FROM t")
    holder.rollback()
    assert isinstance(map_sqlite_error(busy.value), VaultUnavailable)
