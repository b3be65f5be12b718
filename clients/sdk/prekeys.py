"""The device's prekey upkeep (docs/PROTOCOL.md §4.4): the signed prekey rotated on a schedule,
the old one kept for messages still in flight and then deleted.

Why: a message wrapped without a one-time prekey (none was left, or the relay's claim window
for the device was used up) has forward secrecy only from the moment the signed prekey it used
is deleted (§5.3). So the device makes a new signed prekey every ``rotation`` seconds
(``LIGHTBOX_SIGNED_PREKEY_ROTATION``, default 7 days), keeps each replaced one for ``keep``
seconds more (``LIGHTBOX_SIGNED_PREKEY_KEEP``, default 30 days, as Signal keeps an old signed
prekey; a sender offline for weeks may still hold a message sealed to it in its outbox), then
deletes its secret. The new secret is saved before the relay hears of the key, so no key is
ever published without its secret. One-time prekeys are refilled by
:func:`clients.sdk.identity.replenish_one_time_prekeys` on the relay's ``keys_low``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Final

import msgspec

from clients.sdk.connection import Connection
from clients.sdk.environ import number_setting
from clients.sdk.errors import KeyStoreError
from clients.sdk.http import RelayHTTP
from clients.sdk.identity import keep_new_prekeys
from clients.sdk.keystore import DeviceState, DeviceStore, PrekeySecret
from protocol import certs
from protocol.canonical import peek_compact

__all__ = ["KEEP_ENV", "ROTATION_ENV", "PrekeyPolicy", "after_outage", "rotate_signed_prekey"]

ROTATION_ENV: Final = "LIGHTBOX_SIGNED_PREKEY_ROTATION"
KEEP_ENV: Final = "LIGHTBOX_SIGNED_PREKEY_KEEP"
DAY: Final = 86_400
# At most this long the upkeep waits for a connection it saw as up to be lost and come back,
# after a request that went unanswered: a relay that holds the socket and not a request.
OUTAGE_WAIT: Final = 3600.0


def _seconds(env: str, default: int) -> int:
    value = number_setting(env, default, int, lambda v: v >= 3600)
    if value is None:
        raise KeyStoreError(f"{env} must be a whole number of seconds, at least 3600")
    return value


@dataclasses.dataclass(frozen=True)
class PrekeyPolicy:
    rotation: int = 7 * DAY
    keep: int = 30 * DAY

    @classmethod
    def from_env(cls) -> PrekeyPolicy:
        return cls(rotation=_seconds(ROTATION_ENV, 7 * DAY), keep=_seconds(KEEP_ENV, 30 * DAY))


async def rotate_signed_prekey(relay: RelayHTTP, store: DeviceStore, policy: PrekeyPolicy, *,
                               now: int) -> bool:
    """Make, keep and upload a new signed prekey if the newest is ``rotation`` old (or upload
    the newest again if the relay serves another, e.g. after an upload was cut short); delete
    the secrets of those replaced more than ``keep`` ago. True if one was uploaded."""
    st = store.state
    newest = max(st.signed_prekeys, key=lambda p: p.created_at, default=None)
    if newest is None or now - newest.created_at >= policy.rotation:
        # The secret first: never a published key without it.
        batch = keep_new_prekeys(store, one_time=0, signed=True, now=now)
        assert batch.signed_token is not None
        await relay.upload_signed_prekey(batch.signed_token)
        uploaded = True
    else:
        uploaded = await _upload_if_not_served(relay, st, newest)
    # A key was replaced when the next newer one was made: keep it ``keep`` past that. From
    # the newest state, as the profile's other programs may have changed it meanwhile
    # (clients/sdk/keystore.py ``state_lock``).
    held = store.state.signed_prekeys
    if len(_still_kept(held, policy, now)) != len(held):
        store.update(lambda fresh: msgspec.structs.replace(
            fresh, signed_prekeys=_still_kept(fresh.signed_prekeys, policy, now)))
    return uploaded


def _still_kept(keys: list[PrekeySecret], policy: PrekeyPolicy, now: int) -> list[PrekeySecret]:
    """The signed prekeys to keep: the newest, and each replaced less than ``keep`` ago."""
    ordered = sorted(keys, key=lambda p: p.created_at)
    return [p for p, successor in zip(ordered, [*ordered[1:], None], strict=True)
            if successor is None or now - successor.created_at < policy.keep]


async def _upload_if_not_served(relay: RelayHTTP, st: DeviceState, newest: PrekeySecret) -> bool:
    listing = await relay.user_devices(st.user_id)
    for bundle in listing.devices:
        cert = peek_compact(bundle.device_certificate, certs.DeviceCertificate)
        if cert.device_id == st.device_id and bundle.signed_prekey is not None and peek_compact(
                bundle.signed_prekey, certs.SignedPrekey).prekey_id == newest.prekey_id:
            return False
    token = certs.issue_signed_prekey(certs.SignedPrekey(
        device_id=st.device_id, prekey_id=newest.prekey_id, public=newest.prekey().public,
        created_at=newest.created_at), st.device_keys().signing)
    await relay.upload_signed_prekey(token)
    return True


async def after_outage(connection: Connection, reconnects: int) -> bool:
    """Once the relay answers again after the upkeep's request went unanswered (the
    connection's ``reconnects`` then): the connection lost, if it was up, and connected again,
    or :data:`OUTAGE_WAIT` seconds passed. False when the connection ended (revoked, stopped):
    the application says why, and there is nothing more to keep up."""
    loop = asyncio.get_running_loop()
    until = loop.time() + OUTAGE_WAIT
    while (connection.connected.is_set() and connection.reconnects == reconnects  # noqa: ASYNC110
           and not connection.stopped.done() and loop.time() < until):
        await asyncio.sleep(1.0)  # (the connection sets no event as it loses the relay)
    return await connection.wait_or_stopped(connection.connected)
