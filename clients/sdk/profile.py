"""A clinician's profile on disk: the key store (``keystore.lbx``) and the vault (``vault.db``)
side by side, both unlocked with the account password. The CLI and the desktop client open a
profile the same way, through :func:`open_profile`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clients.sdk.client import LightboxClient
from clients.sdk.errors import KeyStoreError
from clients.sdk.keystore import DeviceStore, KeyStore
from clients.sdk.vault import Vault

__all__ = ["ProfileDevice", "open_profile"]


class ProfileDevice:
    """An unlocked profile: device state (key store, or the vault when it holds it), vault."""

    def __init__(self, store: DeviceStore, vault: Vault, password: str) -> None:
        self.store, self.vault, self.password = store, vault, password

    def client(self, **kwargs: Any) -> LightboxClient:
        return LightboxClient(self.store, self.vault, password=self.password, **kwargs)


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
