"""A clinician's profile on disk: the key store (``keystore.lbx``) and the vault (``vault.db``)
side by side, both unlocked with the account password. The CLI and the desktop client open a
profile the same way, through :func:`open_profile`.

A logout ends every program running on the profile, not only the next one (docs/USER_GUIDE.md
"Everyday commands"): ``lightbox logout`` writes a new random mark into the profile's
``logged-out`` file (:meth:`ProfileDevice.mark_logged_out`) before it does anything else, and
a program that opened the profile before that mark stops using its session
(:meth:`ProfileDevice.logged_out`, handed to its client's session: clients/sdk/session.py). A
file beside the vault rather than a vault note, so that a program can look at it every second
without it counting as use of the vault, which would keep the vault from locking itself.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from clients.sdk.client import LightboxClient
from clients.sdk.errors import KeyStoreError
from clients.sdk.keystore import DeviceStore, KeyStore, write_private_file
from clients.sdk.vault import Vault

__all__ = ["LOGGED_OUT_FILE", "ProfileDevice", "open_profile"]

LOGGED_OUT_FILE = "logged-out"  # the mark of the profile's latest logout (module docstring)


class ProfileDevice:
    """An unlocked profile: device state (key store, or the vault when it holds it), vault.
    It remembers the profile's logout mark as it was opened (:meth:`logged_out`)."""

    def __init__(self, store: DeviceStore, vault: Vault, password: str) -> None:
        self.store, self.vault, self.password = store, vault, password
        self._logout_mark = vault.directory / LOGGED_OUT_FILE
        self._opened_after = self._read_mark()

    def _read_mark(self) -> bytes | None:
        try:
            return self._logout_mark.read_bytes()
        except FileNotFoundError:
            return None

    def logged_out(self) -> bool:
        """Whether ``lightbox logout`` ran on this profile since this program opened it."""
        return self._read_mark() != self._opened_after

    def mark_logged_out(self) -> None:
        """Tell every program that opened this profile before now that the user logged out."""
        write_private_file(self._logout_mark, secrets.token_hex(16).encode())

    def client(self, **kwargs: Any) -> LightboxClient:
        return LightboxClient(self.store, self.vault, password=self.password,
                              logged_out=self.logged_out, **kwargs)


def open_profile(directory: Path, password: str) -> ProfileDevice:
    """Unlock a profile's vault (creating it beside the key store on first use) and its device
    state. Wrong password: KeyStoreError / VaultPassphraseError with a plain message."""
    vault = Vault(directory)
    if vault.exists():
        vault.unlock(password)
        if vault.has_state():
            return ProfileDevice(vault, vault, password)
    keystore = KeyStore(directory)
    if not keystore.exists():
        raise KeyStoreError(f"no device in {directory}: run `lightbox enroll` or "
                            "`lightbox link` first")
    opened = keystore.open(password)  # checks the password before a vault is created
    if not vault.exists():
        vault.create(password)
    return ProfileDevice(opened, vault, password)
