"""Several programs change one profile's device state, each holding its own copy in memory
(clients/sdk/keystore.py ``state_lock``, docs/SECURITY.md "Refresh races").

``lightbox watch`` opens a message and deletes the one-time prekey it used while ``lightbox
link --approve`` refreshes the session and saves the new pair; ``lightbox send`` makes prekeys
while the desktop makes its own. A change applied to a program's older copy would put back a
refresh token the other program rotated (presented again, the relay ends the session of every
program as stolen) or drop a prekey secret the other made (a message sealed to it could never
be opened). Every change is applied to the state as the profile holds it now, under a lock.
Real key stores and vaults on disk; threads stand for the programs (``flock`` locks two open
files of one process from each other just as it does two processes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from clients.sdk.identity import keep_new_prekeys
from clients.sdk.keystore import DeviceState, DeviceStore, KeyStore, PrekeySecret
from clients.sdk.vault import Vault
from protocol.api import TokenPair
from protocol.keys import CHEAP_PROFILE
from tests.clients.test_keystore import PASSWORD, _state

ROUNDS = 25  # prekey batches each program makes in the concurrent test


def _pair(n: int) -> TokenPair:
    return TokenPair(access_token=f"access-{n}", expires_at=1_000 + n,
                     refresh_token=f"refresh-{n}", refresh_expires_at=9_000 + n,
                     user_id="u" * 8, device_id="d" * 8)


def _first_state() -> DeviceState:
    """An enrolled device's: a session, prekeys 1-100 kept, the next id 101."""
    return _state(session=_pair(1), next_prekey_id=101)


def _keystore_programs(directory: Path) -> Callable[[], DeviceStore]:
    KeyStore(directory).create(_first_state(), PASSWORD, profile=CHEAP_PROFILE)
    return lambda: KeyStore(directory).open(PASSWORD)


def _vault_programs(directory: Path) -> Callable[[], DeviceStore]:
    first = Vault(directory, kdf=CHEAP_PROFILE)
    first.create(PASSWORD)
    first.save(_first_state())
    first.lock()

    def program() -> DeviceStore:
        vault = Vault(directory, kdf=CHEAP_PROFILE)
        vault.unlock(PASSWORD)
        _ = vault.state  # read into memory, as a running program holds it
        return vault

    return program


STORES = {"key store": _keystore_programs, "vault": _vault_programs}


@pytest.fixture(params=sorted(STORES))
def programs(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], DeviceStore]:
    """Opens the profile once more, as another program of it would."""
    return STORES[request.param](tmp_path / "profile")


def test_a_prekey_used_up_by_one_program_keeps_the_session_another_just_saved(
        programs: Callable[[], DeviceStore]) -> None:
    watch, link = programs(), programs()
    link.update(lambda st: msgspec.structs.replace(st, session=_pair(2)))  # its refresh
    used = watch.state.one_time_prekeys[0].prekey_id  # watch still holds pair 1 in memory
    watch.update(lambda st: msgspec.structs.replace(
        st, one_time_prekeys=[p for p in st.one_time_prekeys if p.prekey_id != used]))
    held = programs().state
    assert held.session == _pair(2)
    assert used not in {p.prekey_id for p in held.one_time_prekeys}
    assert len(held.one_time_prekeys) == 99
    assert watch.state == held  # and the program's own copy is the newest one now


def test_prekeys_made_by_one_program_keep_the_session_and_prekeys_of_another(
        programs: Callable[[], DeviceStore]) -> None:
    send, desktop = programs(), programs()
    first = keep_new_prekeys(desktop, one_time=5, signed=True, now=1_700_000_000)
    desktop.update(lambda st: msgspec.structs.replace(st, session=_pair(3)))
    second = keep_new_prekeys(send, one_time=5, signed=False, now=1_700_000_000)
    held = programs().state
    assert held.session == _pair(3)
    ids = [p.prekey_id for p in held.one_time_prekeys]
    assert len(ids) == len(set(ids)) == 110
    assert {p.prekey_id for p in first.one_time_secrets + second.one_time_secrets} <= set(ids)
    assert first.signed_secret in held.signed_prekeys
    assert held.next_prekey_id == second.next_prekey_id


def test_two_programs_making_prekeys_at_once_lose_none_and_share_no_id(
        programs: Callable[[], DeviceStore]) -> None:
    made: list[list[PrekeySecret]] = [[], []]
    failures: list[BaseException] = []

    def run(n: int) -> None:
        store = programs()
        try:
            for _ in range(ROUNDS):
                made[n] += keep_new_prekeys(store, one_time=2, signed=False,
                                            now=1_700_000_000).one_time_secrets
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    held: DeviceState = programs().state
    ids = [p.prekey_id for p in held.one_time_prekeys]
    assert len(ids) == len(set(ids)) == 100 + 2 * 2 * ROUNDS
    assert {p.prekey_id for p in made[0]}.isdisjoint({p.prekey_id for p in made[1]})
    assert set(held.one_time_prekeys) >= set(made[0]) | set(made[1])
