"""The device side of expiry and wipe (PROTOCOL.md §15; docs/PROTOCOL.md §15).

* :func:`shred_and_confirm`: an ``expire_order`` arrived: shred the copy in the vault (the
  per-image key and ciphertext go; a tombstone keeps the record reference) and return the
  ``expiry_confirm`` frame, signed by the device key, to send back. A device that never held
  the image (or shredded it before) confirms all the same, after writing the tombstone, so
  that the image is never stored later (:meth:`clients.sdk.vault.Vault.expire`).
* :func:`verify_wipe_order` / :func:`wipe`: a ``wipe_order`` arrived: a relay alone must not be
  able to make a device erase itself, so the order is obeyed only if the organisation-signed
  revocation list it carries verifies under the pinned organisation key, revokes THIS device
  with ``wipe`` set, was issued after this device's certificate (an old list replayed after a
  re-enrolment does not count), and is not older than a list the device already holds. Then
  the vault folder is deleted, and beside it is left a note of the revocation's date alone
  (:func:`wiped_note`), so that the next command on this profile can tell its user what
  happened (:func:`check_not_wiped`) instead of asking for an enrolment out of the blue.

The SDK client (clients/sdk/client.py) calls the same vault operation for expiry orders; these
functions are what it, the desktop and the CLI use for the wipe.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from clients.sdk.errors import DeviceWiped, FlowError
from clients.sdk.keystore import KEYSTORE_FILE, DeviceState, write_private_file
from clients.sdk.vault import VAULT_FILE, Vault
from protocol import certs, statements
from protocol.canonical import peek_compact
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ExpireOrder, ExpiryConfirm, WipeOrder

__all__ = ["check_not_wiped", "shred_and_confirm", "verify_wipe_order", "wipe", "wiped_at",
           "wiped_note"]


def wiped_note(directory: Path) -> Path:
    """Where the note of an erased profile goes: ``.<profile>.wiped.json`` beside its folder
    (``{"revoked_at": unix seconds}``, nothing else; no profile name starts with a dot)."""
    return directory.parent / f".{directory.name}.wiped.json"


def shred_and_confirm(vault: Vault, state: DeviceState, order: ExpireOrder, *,
                      now: float | None = None) -> ExpiryConfirm:
    """Shred the ordered copy and return the signed confirmation to send."""
    vault.expire(order.attachment_id, record_reference=order.record_ref)
    body = statements.ExpiryConfirmation(
        v=statements.STATEMENT_VERSION, device_id=state.device_id,
        attachment_id=order.attachment_id, order_id=order.order_id,
        shredded_at=int(time.time() if now is None else now))
    return ExpiryConfirm(statement=statements.issue_expiry_confirmation(
        body, state.device_keys().signing))


def verify_wipe_order(order: WipeOrder, state: DeviceState) -> certs.RevocationEntry:
    """The revocation entry that proves the order, or FlowError (``verification_failed``
    for a forged list, ``replayed`` for one that predates this device or what it holds)."""
    try:
        rl = certs.verify_revocation_list(order.revocation, trusted_orgs=state.trusted_orgs())
    except ProtocolError as exc:
        raise FlowError("the wipe order does not carry a valid organisation-signed list",
                        code=ErrorCode.VERIFICATION_FAILED.value) from exc
    entry = next((e for e in rl.entries if e.subject is certs.RevocationSubject.DEVICE
                  and e.id == state.device_id and e.wipe), None)
    if rl.org_id != state.org_id or entry is None:
        raise FlowError("the revocation list does not order this device to wipe",
                        code=ErrorCode.VERIFICATION_FAILED.value)
    device = peek_compact(state.device_certificate, certs.DeviceCertificate,
                          max_length=certs.MAX_CERTIFICATE_LENGTH)
    if entry.revoked_at < device.issued_at:
        raise FlowError("the wipe order predates this device's enrolment",
                        code=ErrorCode.REPLAYED.value)
    for token in state.revocation_lists:
        with contextlib.suppress(ProtocolError):
            held = peek_compact(token, certs.RevocationList,
                                max_length=certs.MAX_REVOCATION_LIST_LENGTH)
            if held.org_id == rl.org_id and held.number > rl.number:
                raise FlowError("the wipe order carries an older list than the one held",
                                code=ErrorCode.REPLAYED.value)
    return entry


def wipe(order: WipeOrder, state: DeviceState, vault_dir: Path, *,
         vault: Vault | None = None) -> certs.RevocationEntry:
    """Verify the order, then destroy the vault (keys, messages, images, tombstones)."""
    entry = verify_wipe_order(order, state)
    if vault is not None:
        with contextlib.suppress(Exception):
            vault.lock()
    shutil.rmtree(vault_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # the erasure matters; the note is a courtesy
        write_private_file(wiped_note(vault_dir),
                           json.dumps({"revoked_at": entry.revoked_at}).encode())
    return entry


def wiped_at(directory: Path) -> int | None:
    """When the organisation revoked the device this profile held, if it was wiped here (and
    nothing was enrolled in it since); else None."""
    if (directory / KEYSTORE_FILE).exists() or (directory / VAULT_FILE).exists():
        return None
    try:
        revoked_at = json.loads(wiped_note(directory).read_text())["revoked_at"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return revoked_at if isinstance(revoked_at, int) else None


def check_not_wiped(directory: Path) -> None:
    """Raise :class:`DeviceWiped` if this profile's device was revoked and wiped."""
    revoked_at = wiped_at(directory)
    if revoked_at is not None:
        raise DeviceWiped(revoked_at)
