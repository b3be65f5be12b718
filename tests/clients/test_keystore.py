"""clients/sdk/keystore.py: sealed under the password, 0600/0700, atomic, no plaintext."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import msgspec
import pytest

from clients.sdk.errors import KeyStoreError
from clients.sdk.keystore import DeviceState, KeyStore, PrekeySecret
from protocol import _sodium
from protocol.keys import CHEAP_PROFILE, seal_with_passphrase

PASSWORD = "correct horse battery staple"


def _state(**changes: object) -> DeviceState:
    base = DeviceState(
        server_url="http://relay.test", login="alice", user_id="u" * 8, org_id="org.test",
        org_public_key=b"\x01" * 32, identity_seed=b"IDENTITY-SEED-SECRET-32-BYTES!!!",
        device_id="d" * 8, device_kind="mobile", device_seed=b"DEVICE-SEED-SECRET-32-BYTES!!!!!",
        dh_secret=b"DH-SECRET-SECRET-32-BYTES!!!!!!!", user_certificate="u.c",
        device_certificate="d.c",
        one_time_prekeys=[PrekeySecret(prekey_id=i, secret=bytes([i]) * 32)
                          for i in range(1, 101)],
    )
    return msgspec.structs.replace(base, **changes)


def test_round_trip_with_the_right_password(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)
    opened = store.open(PASSWORD)
    assert opened.state == _state()
    assert len(opened.state.one_time_prekeys) == 100  # beyond the 4 KiB of passphrase sealing


def test_a_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)
    with pytest.raises(KeyStoreError, match="wrong password"):
        store.open("not the password at all")


def test_directory_is_0700_and_file_0600(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "home" / "phone")
    store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.directory.iterdir()] == ["keystore.lbx"]  # no temp files left


def test_no_secret_or_identifier_appears_in_the_file(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    state = _state()
    store.create(state, PASSWORD, profile=CHEAP_PROFILE)
    blob = store.path.read_bytes()
    for needle in (state.identity_seed or b"", state.device_seed, state.dh_secret,
                   bytes([7]) * 32, b"alice", b"relay.test", PASSWORD.encode()):
        assert needle not in blob


def test_save_replaces_the_file_and_survives_reopen(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    opened = store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)
    before = store.path.read_bytes()
    opened.save(msgspec.structs.replace(opened.state, next_prekey_id=500))
    assert store.path.read_bytes() != before
    assert store.open(PASSWORD).state.next_prekey_id == 500


# The header is the record's label: the version byte alone (2 relabelled as 1) is detected.
@pytest.mark.parametrize(("at", "flip"), [(-5, 1), (4, 3)],
                         ids=["ciphertext", "version-2-relabelled-as-1"])
def test_tampering_is_detected(tmp_path: Path, at: int, flip: int) -> None:
    store = KeyStore(tmp_path / "phone")
    store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)
    blob = bytearray(store.path.read_bytes())
    blob[at] ^= flip
    store.path.write_bytes(bytes(blob))
    with pytest.raises(KeyStoreError, match="corrupt"):
        store.open(PASSWORD)


def test_refuses_to_overwrite_an_existing_store(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)
    with pytest.raises(KeyStoreError, match="already exists"):
        store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)


def test_missing_store_and_garbage_file_are_clear_errors(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "none")
    with pytest.raises(KeyStoreError, match="enrol or link"):
        store.open(PASSWORD)
    store.directory.mkdir()
    store.path.write_bytes(b"hello world, not a key store")
    with pytest.raises(KeyStoreError, match="not a Lightbox key store"):
        store.open(PASSWORD)


def test_change_password(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    opened = store.create(_state(), PASSWORD, profile=CHEAP_PROFILE)
    opened.change_password("an entirely new passphrase", profile=CHEAP_PROFILE)
    with pytest.raises(KeyStoreError):
        store.open(PASSWORD)
    assert store.open("an entirely new passphrase").state == _state()


def test_secrets_do_not_print(tmp_path: Path) -> None:
    state = _state()
    assert "SECRET" not in repr(state)
    assert "SECRET" not in repr(state.one_time_prekeys[0])
    opened = KeyStore(tmp_path / "p").create(state, PASSWORD, profile=CHEAP_PROFILE)
    assert "SECRET" not in repr(opened)


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b"])
def test_profile_names_cannot_escape_the_home(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyStoreError):
        KeyStore.for_profile(name, home=tmp_path)


def test_home_comes_from_lightbox_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path))
    assert KeyStore.for_profile("desktop").directory == tmp_path / "desktop"


def _version_1_file(state: DeviceState, password: str) -> bytes:
    """A key store as the version 1 writer left it (clients/sdk/keystore.py's docstring): the
    record's associated data was the header *and* the nonce, every byte before the ciphertext."""
    data_key = os.urandom(32)
    wrapped = seal_with_passphrase(data_key, password, opslimit=CHEAP_PROFILE.opslimit,
                                   memlimit=CHEAP_PROFILE.memlimit)
    nonce = os.urandom(24)
    ad = struct.pack(">4sBH", b"LBKS", 1, len(wrapped)) + wrapped + nonce
    return ad + _sodium.aead_encrypt(data_key, nonce, msgspec.msgpack.encode(state), ad)


def test_a_version_1_store_opens_and_its_next_save_writes_version_2(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    store.check_writable()
    store.path.write_bytes(_version_1_file(_state(), PASSWORD))
    opened = store.open(PASSWORD)
    assert opened.state == _state()
    opened.save(msgspec.structs.replace(opened.state, next_prekey_id=7))
    assert store.path.read_bytes()[:5] == b"LBKS\x02"
    assert store.open(PASSWORD).state.next_prekey_id == 7


def test_a_version_1_store_with_another_nonce_is_corrupt(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "phone")
    store.check_writable()
    blob = bytearray(_version_1_file(_state(), PASSWORD))
    nonce_at = len(blob) - len(msgspec.msgpack.encode(_state())) - 16 - 24
    blob[nonce_at] ^= 1
    store.path.write_bytes(bytes(blob))
    with pytest.raises(KeyStoreError, match="corrupt"):
        store.open(PASSWORD)

