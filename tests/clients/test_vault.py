"""clients/sdk/vault.py: sealed under the passphrase, locks itself, shreds for good, and never
writes anything decrypted to disk."""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clients.sdk.connection import DedupeStore
from clients.sdk.keystore import DeviceState, DeviceStore, PrekeySecret
from clients.sdk.vault import (
    IDLE_TIMEOUT_ENV,
    VAULT_FILE,
    ImageShredded,
    ItemNotFound,
    Vault,
    VaultCorrupt,
    VaultError,
    VaultExists,
    VaultLocked,
    VaultMessage,
    VaultNotFound,
    VaultPassphraseError,
)
from protocol.keys import CHEAP_PROFILE

PASSPHRASE = "correct horse battery staple"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _vault(directory: Path, clock: Callable[[], float] | None = None, **kw: Any) -> Vault:
    return Vault(directory, kdf=CHEAP_PROFILE, idle_timeout=kw.pop("idle_timeout", 300.0),
                 clock=clock or time.monotonic, now=lambda: 1_700_000_000.0, **kw)


@pytest.fixture
def vault(tmp_path: Path, clock: FakeClock) -> Iterator[Vault]:
    v = _vault(tmp_path / "vault", clock)
    v.create(PASSPHRASE)
    yield v
    v.close()


def _message(n: int = 1, thread: str = "thread-A", **changes: object) -> VaultMessage:
    base = VaultMessage(
        message_id=f"msg-{n:04d}", thread_id=thread, sender_user_id="user-intern",
        sender_device_id="device-phone", sent_at=1_700_000_000.0 + n,
        body=f"Distal radius fracture? patient DOE^JOHN #{n}", attachment_ids=("img-1",))
    return msgspec.structs.replace(base, **changes)


def _state() -> DeviceState:
    return DeviceState(
        server_url="http://relay.test", login="alice", user_id="u" * 8, org_id="org.test",
        org_public_key=b"\x01" * 32, identity_seed=b"IDENTITY-SEED-SECRET-32-BYTES!!!",
        device_id="d" * 8, device_kind="mobile", device_seed=b"DEVICE-SEED-SECRET-32-BYTES!!!!!",
        dh_secret=b"DH-SECRET-SECRET-32-BYTES!!!!!!!", user_certificate="u.c",
        device_certificate="d.c",
        one_time_prekeys=[PrekeySecret(prekey_id=i, secret=bytes([i]) * 32) for i in range(1, 51)])


def _files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def _raw(vault: Vault, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(vault.path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# --- passphrase, files, corruption --------------------------------------------------------------


def test_create_then_unlock_with_the_passphrase_round_trips(tmp_path: Path) -> None:
    v = _vault(tmp_path / "v")
    v.create(PASSPHRASE)
    v.put_message(_message())
    v.close()
    again = _vault(tmp_path / "v")
    again.unlock(PASSPHRASE)
    assert again.messages("thread-A") == [_message()]


def test_a_wrong_passphrase_is_a_clear_error_and_leaves_it_locked(vault: Vault) -> None:
    vault.lock()
    with pytest.raises(VaultPassphraseError, match="wrong password"):
        vault.unlock("not the passphrase")
    with pytest.raises(VaultLocked):
        vault.messages("thread-A")
    vault.unlock(PASSPHRASE)
    assert vault.is_unlocked


def test_folder_is_0700_and_every_file_0600(vault: Vault) -> None:
    vault.save(_state())
    vault.put_message(_message())
    vault.put_image("img-1", b"\xff\xd8 pixels", media_type="image/jpeg")
    assert stat.S_IMODE(vault.directory.stat().st_mode) == 0o700
    files = list(vault.directory.iterdir())
    assert [p.name for p in files] == [VAULT_FILE]  # no journal, WAL or temp file left behind
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


def test_unlock_tightens_loosened_permissions(vault: Vault) -> None:
    vault.close()
    os.chmod(vault.path, 0o644)
    os.chmod(vault.directory, 0o755)  # noqa: S103 - loosened on purpose
    vault.unlock(PASSPHRASE)
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault.directory.stat().st_mode) == 0o700


def test_create_refuses_to_overwrite_and_unlock_needs_a_vault(tmp_path: Path,
                                                              vault: Vault) -> None:
    with pytest.raises(VaultExists):
        _vault(vault.directory).create("another passphrase")
    with pytest.raises(VaultNotFound, match="no vault"):
        _vault(tmp_path / "nowhere").unlock(PASSPHRASE)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"this is not a database at all" * 10,
        lambda b: b[: len(b) // 3],
        lambda b: b[:100],
        lambda b: b"",
        lambda b: b[:4096] + os.urandom(len(b) - 4096),
    ],
    ids=["not-sqlite", "truncated-third", "truncated-header", "empty", "garbage-pages"],
)
def test_a_damaged_file_is_a_clear_error_not_a_crash(
    vault: Vault, damage: Callable[[bytes], bytes]
) -> None:
    vault.put_message(_message())
    vault.close()
    vault.path.write_bytes(damage(vault.path.read_bytes()))
    with pytest.raises(VaultCorrupt, match="damaged or is not a vault"):
        vault.unlock(PASSPHRASE)
    assert not vault.is_unlocked
    with pytest.raises(VaultLocked):
        vault.messages("thread-A")


def test_a_sqlite_file_that_is_not_a_vault_is_refused(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    conn = sqlite3.connect(tmp_path / "v" / VAULT_FILE)
    conn.execute("CREATE TABLE meta (name TEXT, value BLOB)")
    conn.execute("INSERT INTO meta VALUES ('format', x'00')")
    conn.commit()
    conn.close()
    with pytest.raises(VaultCorrupt, match="not a Lightbox vault"):
        _vault(tmp_path / "v").unlock(PASSPHRASE)


def test_swapped_rows_fail_authentication(vault: Vault) -> None:
    vault.put_message(_message(1))
    vault.put_message(_message(2))
    (a,), (b,) = _raw(vault, "SELECT sealed FROM messages ORDER BY seq")
    conn = sqlite3.connect(vault.path)
    conn.execute("UPDATE messages SET sealed = ? WHERE message_id = 'msg-0001'", (b,))
    conn.commit()
    conn.close()
    with pytest.raises(VaultCorrupt, match="tampered"):
        vault.message("msg-0001")
    assert vault.message("msg-0002").body.endswith("#2")
    assert a != b


def test_change_passphrase(vault: Vault) -> None:
    vault.put_message(_message())
    with pytest.raises(VaultPassphraseError):
        vault.change_passphrase("wrong", "a new passphrase here")
    vault.change_passphrase(PASSPHRASE, "a new passphrase here")
    vault.lock()
    with pytest.raises(VaultPassphraseError):
        vault.unlock(PASSPHRASE)
    vault.unlock("a new passphrase here")
    assert vault.message("msg-0001") == _message()


def test_the_kdf_profile_is_chosen_by_the_constructor(tmp_path: Path) -> None:
    v = _vault(tmp_path / "v")
    v.create(PASSPHRASE)
    ((sealed,),) = _raw(v, "SELECT value FROM meta WHERE name = 'sealed_master'")
    assert isinstance(sealed, bytes)
    opslimit, memlimit = int.from_bytes(sealed[6:10], "big"), int.from_bytes(sealed[10:18], "big")
    assert (opslimit, memlimit) == (CHEAP_PROFILE.opslimit, CHEAP_PROFILE.memlimit)


# --- auto-lock ----------------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[Vault], object]] = {
    "state": lambda v: v.state,
    "save": lambda v: v.save(_state()),
    "has_state": lambda v: v.has_state(),
    "put_message": lambda v: v.put_message(_message(9)),
    "message": lambda v: v.message("msg-0001"),
    "messages": lambda v: v.messages("thread-A"),
    "mark_read": lambda v: v.mark_read("msg-0001"),
    "put_image": lambda v: v.put_image("img-9", b"x", media_type="image/jpeg"),
    "get_image": lambda v: v.get_image("img-1"),
    "image_info": lambda v: v.image_info("img-1"),
    "images": lambda v: v.images(),
    "set_record_reference": lambda v: v.set_record_reference("img-1", "study 1.2.3"),
    "shred": lambda v: v.shred("img-1"),
    "expire": lambda v: v.expire("img-1"),
    "tombstone": lambda v: v.tombstone("img-1"),
    "tombstones": lambda v: v.tombstones(),
    "dedupe.seen": lambda v: v.dedupe.seen("device-phone", "msg-0001"),
    "dedupe.add": lambda v: v.dedupe.add("device-phone", "msg-0001"),
    "change_passphrase": lambda v: v.change_passphrase(PASSPHRASE, PASSPHRASE),
}


@pytest.fixture
def filled(vault: Vault) -> Vault:
    vault.save(_state())
    vault.put_message(_message(1))
    vault.put_image("img-1", b"\xff\xd8 image", media_type="image/jpeg")
    return vault


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_after_inactivity_every_operation_raises_vault_locked(
    filled: Vault, clock: FakeClock, operation: Callable[[Vault], object]
) -> None:
    clock.t += 299
    operation(filled)  # still unlocked, and this counts as activity
    clock.t += 300
    with pytest.raises(VaultLocked, match="locked itself after 300 s"):
        operation(filled)
    with pytest.raises(VaultLocked, match="unlock it"):  # and stays locked
        operation(filled)
    filled.unlock(PASSPHRASE)
    operation(filled)


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_after_lock_every_operation_raises_vault_locked(
    filled: Vault, operation: Callable[[Vault], object]
) -> None:
    filled.lock()
    with pytest.raises(VaultLocked):
        operation(filled)


def test_activity_keeps_it_unlocked_and_a_timer_can_lock_it_on_time(
    filled: Vault, clock: FakeClock
) -> None:
    for _ in range(5):
        clock.t += 200
        filled.messages("thread-A")
    assert filled.lock_if_idle() is False
    clock.t += 300
    assert filled.lock_if_idle() is True
    assert not filled.is_unlocked
    assert "locked" in repr(filled)


def test_the_idle_timeout_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IDLE_TIMEOUT_ENV, "42")
    assert Vault(tmp_path / "v").idle_timeout == 42
    monkeypatch.setenv(IDLE_TIMEOUT_ENV, "forever")
    with pytest.raises(VaultError, match=IDLE_TIMEOUT_ENV):
        Vault(tmp_path / "v")
    monkeypatch.delenv(IDLE_TIMEOUT_ENV)
    assert Vault(tmp_path / "v").idle_timeout == 300


# --- keys (DeviceStore) -------------------------------------------------------------------------


def test_the_vault_is_a_device_store_for_the_sdk(vault: Vault) -> None:
    store: DeviceStore = vault
    assert not vault.has_state()
    with pytest.raises(VaultError, match="no device keys"):
        _ = store.state
    store.save(_state())
    assert store.state == _state()
    vault.close()
    vault.unlock(PASSPHRASE)
    assert vault.state == _state()
    store.save(msgspec.structs.replace(vault.state, next_prekey_id=77))
    vault.close()
    vault.unlock(PASSPHRASE)
    assert vault.state.next_prekey_id == 77


# --- messages -----------------------------------------------------------------------------------


def test_messages_list_by_thread_in_order_and_mark_read(vault: Vault) -> None:
    assert vault.put_message(_message(3))
    assert vault.put_message(_message(1))
    assert vault.put_message(_message(2, thread="thread-B"))
    assert not vault.put_message(_message(1, body="a replay"))  # first copy is kept
    assert [m.message_id for m in vault.messages("thread-A")] == ["msg-0001", "msg-0003"]
    assert [m.message_id for m in vault.messages("thread-B")] == ["msg-0002"]
    assert vault.messages("thread-C") == []
    assert vault.message("msg-0001").body.endswith("#1")
    vault.mark_read("msg-0001")
    vault.mark_read("msg-0001")  # idempotent
    vault.close()
    vault.unlock(PASSPHRASE)
    assert vault.message("msg-0001").read
    assert [m.message_id for m in vault.messages("thread-A", unread_only=True)] == ["msg-0003"]
    with pytest.raises(ItemNotFound, match="no message"):
        vault.mark_read("msg-9999")


def test_message_bodies_and_thread_ids_are_not_in_the_file(vault: Vault) -> None:
    vault.save(_state())
    for n in range(1, 4):
        vault.put_message(_message(n, thread="thread-SECRET-CONSULT"))
    blob = _files(vault.directory)
    for needle in (b"DOE^JOHN", b"Distal radius", b"thread-SECRET-CONSULT", b"user-intern",
                   b"device-phone", b"IDENTITY-SEED", b"DEVICE-SEED", b"DH-SECRET", b"alice",
                   PASSPHRASE.encode()):
        assert needle not in blob, needle
    assert "DOE" not in repr(vault.message("msg-0001"))


# --- de-duplication -----------------------------------------------------------------------------


def test_the_dedupe_set_is_persisted_and_keyed(vault: Vault) -> None:
    dedupe: DedupeStore = vault.dedupe
    assert not dedupe.seen("device-phone", "msg-0001")
    dedupe.add("device-phone", "msg-0001")
    dedupe.add("device-phone", "msg-0001")  # idempotent
    assert dedupe.seen("device-phone", "msg-0001")
    assert not dedupe.seen("device-other", "msg-0001")
    assert not dedupe.seen("device-phon", "emsg-0001")  # no ambiguity in how the pair is joined
    vault.close()
    vault.unlock(PASSPHRASE)
    assert vault.dedupe.seen("device-phone", "msg-0001")
    assert b"device-phone" not in _files(vault.directory)


# --- images and shredding -----------------------------------------------------------------------


def _image_bytes(size: int = 300_000) -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(size)


def test_images_round_trip_under_their_own_keys(vault: Vault) -> None:
    data = _image_bytes()
    info = vault.put_image("img-1", data, media_type="image/jpeg", width=4000, height=3000,
                           thread_id="thread-A", message_id="msg-0001")
    vault.put_image("img-2", data, media_type="image/jpeg")
    got = vault.get_image("img-1")
    assert got.data == data and got.info == info
    assert (info.size, info.width, info.stored_at) == (len(data), 4000, 1_700_000_000.0)
    assert "data" not in repr(got).replace("StoredImage(info=", "")
    ((k1, c1), (k2, c2)) = _raw(vault, "SELECT wrapped_key, sealed_data FROM images "
                                       "ORDER BY attachment_id")
    assert k1 != k2 and c1 != c2  # same bytes, different keys
    assert [i.attachment_id for i in vault.images()] == ["img-1", "img-2"]
    with pytest.raises(ItemNotFound, match="no image"):
        vault.get_image("img-404")


def test_shredding_destroys_the_key_and_ciphertext_and_leaves_a_tombstone(vault: Vault) -> None:
    data = _image_bytes()
    vault.put_image("img-1", data, media_type="image/jpeg")
    vault.put_image("img-2", b"\xff\xd8 keep me", media_type="image/jpeg")
    vault.set_record_reference("img-1", "PACS study 1.2.840.99.1")
    ((wrapped_key, ciphertext),) = _raw(
        vault, "SELECT wrapped_key, sealed_data FROM images WHERE attachment_id = 'img-1'")
    assert isinstance(wrapped_key, bytes) and isinstance(ciphertext, bytes)

    tombstone = vault.shred("img-1")
    assert (tombstone.attachment_id, tombstone.record_reference, tombstone.shredded_at) == (
        "img-1", "PACS study 1.2.840.99.1", 1_700_000_000.0)
    assert vault.shred("img-1") == tombstone  # idempotent
    with pytest.raises(ImageShredded, match="deleted from this device") as caught:
        vault.get_image("img-1")
    assert caught.value.tombstone == tombstone

    vault.close()
    vault.unlock(PASSPHRASE)  # the passphrase opens everything else, not that image
    with pytest.raises(ImageShredded):
        vault.get_image("img-1")
    assert vault.get_image("img-2").data == b"\xff\xd8 keep me"
    assert vault.tombstones() == [tombstone]
    assert [i.attachment_id for i in vault.images()] == ["img-2"]
    on_disk = _files(vault.directory)
    assert wrapped_key not in on_disk  # secure_delete zeroed the freed pages
    assert ciphertext[1000:1064] not in on_disk
    assert ciphertext[-64:] not in on_disk
    with pytest.raises(ImageShredded):  # an expired image cannot come back
        vault.put_image("img-1", data, media_type="image/jpeg")


def test_shred_with_an_explicit_record_reference_and_unknown_ids(vault: Vault) -> None:
    vault.put_image("img-1", b"x", media_type="image/jpeg")
    assert vault.shred("img-1", record_reference="study 9").record_reference == "study 9"
    with pytest.raises(ItemNotFound):
        vault.shred("never-stored")
    assert vault.tombstone("never-stored") is None


def test_expiring_an_image_never_stored_leaves_a_tombstone_that_refuses_it_later(
        vault: Vault) -> None:
    """An expiry order can come before the image was fetched: the tombstone is written all the
    same, so a later download is never stored; a held image is shredded as by shred()."""
    tombstone = vault.expire("img-late", record_reference="study 7")
    assert (tombstone.attachment_id, tombstone.record_reference) == ("img-late", "study 7")
    assert vault.tombstone("img-late") == tombstone
    assert vault.expire("img-late") == tombstone  # idempotent (orders are resent)
    with pytest.raises(ImageShredded):
        vault.put_image("img-late", b"\xff\xd8 arrived too late", media_type="image/jpeg")
    assert vault.images() == []
    with pytest.raises(ImageShredded):
        vault.get_image("img-late")

    vault.put_image("img-held", b"\xff\xd8 held", media_type="image/jpeg")
    vault.set_record_reference("img-held", "study 8")
    held = vault.expire("img-held")
    assert held.record_reference == "study 8"
    with pytest.raises(ImageShredded):
        vault.get_image("img-held")
    assert sorted(t.attachment_id for t in vault.tombstones()) == ["img-held", "img-late"]

    # The filing receipt arrives after the order: the tombstone learns where the record keeps
    # the image, once (a reference it has is kept).
    vault.expire("img-early")
    vault.set_record_reference("img-early", "study 9")
    assert vault.tombstone("img-early").record_reference == "study 9"  # type: ignore[union-attr]
    vault.set_record_reference("img-early", "study 10")
    vault.set_record_reference("img-late", "study 11")
    assert vault.tombstone("img-early").record_reference == "study 9"  # type: ignore[union-attr]
    assert vault.tombstone("img-late").record_reference == "study 7"  # type: ignore[union-attr]
    with pytest.raises(ItemNotFound):
        vault.set_record_reference("never-seen", "study 12")


def test_tampered_image_ciphertext_is_a_clear_error(vault: Vault) -> None:
    vault.put_image("img-1", _image_bytes(1000), media_type="image/jpeg")
    conn = sqlite3.connect(vault.path)
    conn.execute("UPDATE images SET sealed_data = substr(sealed_data, 1, 500)")
    conn.commit()
    conn.close()
    with pytest.raises(VaultCorrupt):
        vault.get_image("img-1")


def _files_containing(roots: Iterable[Path], needles: Sequence[bytes],
                      since: float) -> list[tuple[Path, bytes]]:
    """Each regular file under ``roots`` written since ``since`` (up to 128 MiB), and the
    ``needles`` it holds. Each file is read once, for every needle, also when the roots
    overlap (the test's folder is inside the system's temporary one): the system's folder
    holds what the suite's other workers write meanwhile, and reading it once per needle and
    root made this the slowest test of a CI run."""
    hits: list[tuple[Path, bytes]] = []
    read: set[tuple[int, int]] = set()
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime < since \
                            or st.st_size > 1 << 27 or (st.st_dev, st.st_ino) in read:
                        continue
                    read.add((st.st_dev, st.st_ino))
                    content = path.read_bytes()
                except OSError:
                    continue
                hits += [(path, needle) for needle in needles if needle in content]
    return hits


def test_nothing_decrypted_is_ever_written_to_disk(tmp_path: Path) -> None:
    started = time.time() - 1
    v = _vault(tmp_path / "v")
    v.create(PASSPHRASE)
    marker = b"PLAINTEXT-MARKER-" + uuid.uuid4().hex.encode()
    data = _image_bytes(100_000) + marker + _image_bytes(100_000)
    body_marker = "BODY-MARKER-" + uuid.uuid4().hex
    v.put_image("img-1", data, media_type="image/jpeg")
    v.put_message(_message(1, body=body_marker))
    for _ in range(3):
        assert v.get_image("img-1").data == data
        assert v.message("msg-0001").body == body_marker
    v.images()
    v.close()
    assert _files_containing([tmp_path, Path(tempfile.gettempdir())],
                             [marker, body_marker.encode(), data[50_000:50_064]],
                             started) == []


def test_concurrent_use_from_threads(vault: Vault) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for n in range(10):
                vault.put_message(_message(k * 100 + n, thread=f"t{k}"))
                vault.dedupe.add("dev", f"{k}-{n}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(vault.messages(f"t{k}")) == 10 for k in range(4))


def test_a_withdrawn_consent_is_remembered_sealed_first_time_kept(vault: Vault) -> None:
    consent_id = str(uuid.uuid4())
    assert vault.consent_withdrawals() == {}
    vault.note_consent_withdrawn(consent_id, 1_800_000_000)
    vault.note_consent_withdrawn(consent_id, 1_800_000_999)  # a later notice of the same
    vault.lock()
    vault.unlock(PASSPHRASE)
    assert vault.consent_withdrawals() == {consent_id: 1_800_000_000}
    (sealed,) = _raw(vault, "SELECT sealed FROM secrets WHERE name = ?",
                     f"consent_withdrawn:{consent_id}")
    assert isinstance(sealed[0], bytes)
    assert b"1800000000" not in sealed[0]


# --- notes: what the client must remember across restarts ----------------------------------


def test_notes_survive_locking_and_are_replaced_by_key(vault: Vault, tmp_path: Path) -> None:
    vault.put_note("name", "user-intern", b"Dr Ada Intern")
    vault.put_note("name", "user-intern", b"Dr Ada Intern-Byron")
    vault.put_note("acknowledged", "msg-0001", b"")
    vault.lock()
    with pytest.raises(VaultLocked):
        vault.notes("name")
    vault.unlock(PASSPHRASE)
    assert vault.notes("name") == {"user-intern": b"Dr Ada Intern-Byron"}
    assert vault.notes("acknowledged") == {"msg-0001": b""}
    assert vault.notes("receipt") == {}
    raw = (tmp_path / "vault" / VAULT_FILE).read_bytes()
    assert b"user-intern" not in raw and b"Ada" not in raw  # the key is an HMAC, value sealed


def test_a_tampered_or_moved_note_is_refused(vault: Vault, tmp_path: Path) -> None:
    vault.put_note("name", "user-a", b"Dr A")
    vault.put_note("name", "user-b", b"Dr B")
    db = sqlite3.connect(tmp_path / "vault" / VAULT_FILE)
    (a,), (b,) = db.execute("SELECT sealed FROM notes ORDER BY tag").fetchall()
    db.execute("UPDATE notes SET sealed = ? WHERE sealed = ?", (b, a))  # swap one for another
    db.commit()
    db.close()
    with pytest.raises(VaultCorrupt):
        vault.notes("name")


def test_a_vault_made_before_notes_gets_them_on_unlock(vault: Vault, tmp_path: Path) -> None:
    vault.lock()
    db = sqlite3.connect(tmp_path / "vault" / VAULT_FILE)
    db.execute("DROP TABLE notes")
    db.commit()
    db.close()
    vault.unlock(PASSPHRASE)
    assert vault.notes("name") == {}
    vault.put_note("name", "user-a", b"Dr A")
    assert vault.notes("name") == {"user-a": b"Dr A"}


def test_a_note_needs_a_kind_and_a_key(vault: Vault) -> None:
    with pytest.raises(ValueError):
        vault.put_note("", "key", b"")
    with pytest.raises(ValueError):
        vault.put_note("name", "k" * 201, b"")


def test_a_stored_message_is_seen_from_its_sender_device_in_the_same_write(vault: Vault) -> None:
    """The vault's record of deliveries is written with the message itself: the connection
    and the protocol's replay check (``open_message``'s ``seen``) both find it at once,
    whatever the moment a crash comes after the message was stored."""
    message = _message(7)
    seen = vault.dedupe.for_sender(message.sender_device_id)
    assert seen.check_and_add(message.message_id) is True  # new: nothing recorded yet
    assert seen.check_and_add(message.message_id) is True
    assert not vault.dedupe.seen(message.sender_device_id, message.message_id)
    assert vault.put_message(message)
    assert vault.dedupe.seen(message.sender_device_id, message.message_id)
    assert seen.check_and_add(message.message_id) is False
    # the record is per sender device: another device may use the same id
    assert vault.dedupe.for_sender("another-device").check_and_add(message.message_id)
