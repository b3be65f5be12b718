"""Whom a device believes: certificate chains and revocation lists, checked on the device
(docs/ARCHITECTURE.md §2, "the relay cannot mint identities").

The relay serves certificates, prekeys and revocation lists, but only this device's pinned
organisation key decides. :class:`Trust` is the one place the SDK client and the record
gateway check them:

* the revocation list is the newest one signed by the organisation key, never older than the
  one the device already holds (a relay serving an older or unsigned list is refused: rollback,
  docs/PROTOCOL.md §11), fetched again after ``REVOCATIONS_MAX_AGE`` seconds or on a
  ``revoked`` notice;
* every user and device certificate chains to the pinned key and is not revoked
  (``certs.verify_chain``), cached for ``CHAIN_CACHE_SECONDS``;
* every claimed prekey is signed by the device it claims to be for, and the relay answers
  only for the devices asked for, with the certificates it served before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

from clients.sdk.errors import FlowError, RelayUnavailable, SDKError, flow_error
from clients.sdk.http import RelayHTTP
from clients.sdk.identity import refresh_revocations
from clients.sdk.keystore import DeviceStore
from clients.sdk.wording import counted
from protocol import api, certs
from protocol.envelope import RecipientBundle
from protocol.errors import ErrorCode, ProtocolError

__all__ = ["CHAIN_CACHE_SECONDS", "REVOCATIONS_MAX_AGE", "Chain", "Trust"]

CHAIN_CACHE_SECONDS = 60.0  # a verified chain is re-fetched after this, or on a revocation
REVOCATIONS_MAX_AGE = 30.0  # seconds before the revocation list is fetched again
MAX_CLAIM = api.MAX_CLAIM_DEVICES


@dataclasses.dataclass
class Chain:
    verified: certs.VerifiedDevice
    user_certificate: str
    at: float


class Trust:
    """Verified chains, revocations and claimed prekeys for one device's store.

    ``on_name`` is told the display name on every certificate that verified (the client keeps
    them for its views, clients/sdk/memory.py)."""

    def __init__(self, relay: RelayHTTP, store: DeviceStore, *, clock: Callable[[], float],
                 on_name: Callable[[str, str], None] | None = None) -> None:
        self._relay, self._store, self._clock = relay, store, clock
        self._on_name = on_name or (lambda user_id, name: None)
        self._revocations = certs.RevocationSet()
        self._revocations_at = -1e9
        self._chains: dict[str, Chain] = {}
        self._unnamed: dict[str, float] = {}  # users ensure_names could not name, and when

    def forget(self) -> None:
        """Drop every cached chain (a revocation was announced)."""
        self._chains.clear()

    async def revocations(self, *, force: bool = False) -> certs.RevocationSet:
        """The newest verified revocation list of our organisation (rollback-checked against
        the one kept in the device state, which is updated)."""
        if not force and self._clock() - self._revocations_at < REVOCATIONS_MAX_AGE:
            return self._revocations
        before = self._store.state.revocation_lists
        held = await refresh_revocations(self._relay, self._store)
        if self._store.state.revocation_lists != before:
            self._chains.clear()  # chains verified under the older list may now be revoked
        self._revocations, self._revocations_at = held, self._clock()
        return held

    def verify(self, user_cert: str, device_cert: str,
               revocations: certs.RevocationSet) -> certs.VerifiedDevice:
        try:
            return certs.verify_chain(user_cert, device_cert,
                                      trusted_orgs=self._store.state.trusted_orgs(),
                                      at=int(self._clock()), revocations=revocations)
        except ProtocolError as exc:
            raise flow_error(exc, "a certificate from the relay does not verify") from exc

    def _keep(self, verified: certs.VerifiedDevice, user_certificate: str) -> None:
        self._on_name(verified.user_id, verified.user.display_name)
        self._chains[verified.device_id] = Chain(verified, user_certificate, self._clock())

    async def device_chain(self, user_id: str, device_id: str) -> Chain:
        """A device's verified chain, from the key directory (cached briefly)."""
        cached = self._chains.get(device_id)
        if cached is not None and self._clock() - cached.at < CHAIN_CACHE_SECONDS:
            return cached
        revocations = await self.revocations()
        answer = await self._relay.user_devices(user_id)
        for bundle in answer.devices:
            verified = self.verify(answer.user_certificate, bundle.device_certificate,
                                   revocations)
            if verified.user_id != user_id:
                raise FlowError("the directory answered for another user",
                                code=ErrorCode.CERTIFICATE_INVALID.value)
            self._keep(verified, answer.user_certificate)
        found = self._chains.get(device_id)
        if found is None or found.verified.user_id != user_id:
            org = self._store.state.org_id
            if (revocations.device_entry(org, device_id) is not None
                    or revocations.user_entry(org, user_id) is not None):
                # The directory leaves a revoked device out; our organisation's signed list
                # says why (docs/PROTOCOL.md §4.5), so a reader is told so.
                raise FlowError(f"device {device_id} of {user_id} was revoked by your "
                                "organisation", code=ErrorCode.CERTIFICATE_REVOKED.value)
            raise FlowError(f"device {device_id} is not a current device of {user_id}",
                            code=ErrorCode.CERTIFICATE_INVALID.value)
        return found

    async def thread_devices(self, thread_id: str, *, me: str) -> dict[str, certs.VerifiedDevice]:
        """Every current participant device of a thread but ``me``, each chain verified."""
        answer = await self._relay.thread_recipients(thread_id)
        revocations = await self.revocations()
        devices: dict[str, certs.VerifiedDevice] = {}
        for user in answer.users:
            for bundle in user.devices:
                verified = self.verify(user.user_certificate, bundle.device_certificate,
                                       revocations)
                self._keep(verified, user.user_certificate)
                if verified.device_id != me:
                    devices[verified.device_id] = verified
        return devices

    async def claim(self, device_ids: Sequence[str],
                    known: Mapping[str, certs.VerifiedDevice] | None = None,
                    ) -> dict[str, RecipientBundle]:
        """Claim a prekey of each device and verify it under the device's certificate. The
        relay must answer only for the devices asked for and, where ``known`` has a device,
        with the certificate verified before; a device it has no prekey for is left out."""
        revocations = await self.revocations()
        asked = set(device_ids)
        bundles: dict[str, RecipientBundle] = {}
        wanted = sorted(asked)
        for i in range(0, len(wanted), MAX_CLAIM):
            claimed = await self._relay.claim_keys(wanted[i:i + MAX_CLAIM])
            for key in claimed.keys:
                if key.device_id not in asked:
                    raise FlowError("the relay answered for a device we did not ask for",
                                    code=ErrorCode.CERTIFICATE_INVALID.value)
                verified = self.verify(key.user_certificate, key.device_certificate,
                                       revocations)
                before = (known or {}).get(key.device_id)
                if verified.device_id != key.device_id or (
                        before is not None and verified.device != before.device):
                    raise FlowError("the relay served two different certificates for one "
                                    "device", code=ErrorCode.CERTIFICATE_INVALID.value)
                try:
                    bundles[key.device_id] = RecipientBundle.from_tokens(
                        verified, key.signed_prekey, key.one_time_prekey)
                except ProtocolError as exc:
                    raise flow_error(exc, "a claimed prekey does not verify") from exc
        return bundles

    async def recipients(self, thread_id: str, *, me: str) -> list[RecipientBundle]:
        """Every current participant device of a thread but ``me``, chain and prekey
        verified, in device id order."""
        devices = await self.thread_devices(thread_id, me=me)
        if not devices:
            raise FlowError("nobody else in this thread has a device that can receive it",
                            code=ErrorCode.DEVICE_SET_MISMATCH.value)
        bundles = await self.claim(sorted(devices), devices)
        missing = set(devices) - set(bundles)
        if missing:
            raise FlowError(f"no prekeys for {counted(len(missing), 'recipient device')}",
                            code=ErrorCode.DEVICE_SET_MISMATCH.value)
        return [bundles[d] for d in sorted(devices)]

    async def person(self, user_id: str) -> certs.UserCertificate:
        """A colleague's user certificate from the key directory, verified against the pinned
        organisation key and the revocation list (their name, roles and specialty)."""
        answer = await self._relay.user_devices(user_id)
        try:
            user = certs.verify_user_certificate(
                answer.user_certificate, trusted_orgs=self._store.state.trusted_orgs(),
                at=int(self._clock()), revocations=await self.revocations())
        except ProtocolError as exc:
            raise flow_error(exc, "a certificate from the relay does not verify") from exc
        if user.user_id != user_id:
            raise FlowError("the directory answered for another user",
                            code=ErrorCode.CERTIFICATE_INVALID.value)
        self._on_name(user_id, user.display_name)
        return user

    async def ensure_names(self, user_ids: Iterable[str], known: Callable[[str], bool]) -> None:
        """Learn the display name of each user ``known`` does not know, from their user
        certificate in the key directory, verified against the pinned organisation key and
        valid now (the revocation list is not consulted: a colleague revoked since still
        wrote what they wrote). Best effort: a user whose certificate cannot be fetched or
        verified is not asked for again for a while, and an unreachable relay ends it."""
        now = self._clock()
        for user_id in dict.fromkeys(user_ids):
            if known(user_id) or now - self._unnamed.get(user_id, -1e9) < CHAIN_CACHE_SECONDS:
                continue
            try:
                answer = await self._relay.user_devices(user_id)
                user = certs.verify_user_certificate(
                    answer.user_certificate, trusted_orgs=self._store.state.trusted_orgs(),
                    at=int(now))
            except RelayUnavailable:
                return
            except (SDKError, ProtocolError):
                self._unnamed[user_id] = now
                continue
            if user.user_id == user_id:
                self._on_name(user_id, user.display_name)
            else:
                self._unnamed[user_id] = now
