"""The benchmark's world: one organisation, users with real certificates, one device each,
two-user threads, and access tokens, written straight to the database with the relay's own
store functions (no Argon2, no HTTP round trips), so thousands of devices take seconds.

Everything that crosses into a load-generator process is plain data (:class:`DeviceSpec`);
the keys are rebuilt from their seeds there. Sealed messages are real: encrypted once, the
content key wrapped for the peer's device and signed by the sender (protocol.envelope).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
from pathlib import Path

import asyncpg

from protocol import envelope
from protocol.canonical import b64url_encode
from protocol.certs import (
    AccountKind,
    DeviceCertificate,
    Licence,
    SignedPrekey,
    UserCertificate,
    issue_device_certificate,
    issue_signed_prekey,
    issue_user_certificate,
    verify_chain,
)
from protocol.keys import DeviceKeys, Ed25519KeyPair, IdentityKey, OrganisationKey, X25519KeyPair
from protocol.model import DeviceKind, MessageHeader, Priority, Purpose, SealedMessage
from server.store import devices, threads, users
from server.tokens import TokenService

__all__ = ["DeviceSpec", "Sealer", "World", "build_world", "write_trusted_orgs"]

DAY = 86400
ORG_ID = "bench-org"
SPK_ID = 7


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """One simulated device, as plain data (picklable into a load-generator process)."""

    index: int
    device_id: str
    user_id: str
    signing_seed: bytes
    dh_secret: bytes
    user_cert: str
    device_cert: str
    spk_secret: bytes
    spk_token: str
    token: str
    thread_id: str
    peer: int  # index of the device it sends to

    def keys(self) -> DeviceKeys:
        return DeviceKeys(device_id=self.device_id,
                          signing=Ed25519KeyPair.from_seed(self.signing_seed),
                          dh=X25519KeyPair.from_secret(self.dh_secret))


@dataclasses.dataclass
class World:
    org_public: bytes
    devices: list[DeviceSpec]

    @property
    def trusted(self) -> dict[str, bytes]:
        return {ORG_ID: self.org_public}


def write_trusted_orgs(path: Path, org_public: bytes) -> Path:
    path.write_text(json.dumps({"orgs": {ORG_ID: b64url_encode(org_public)}}))
    return path


def make_org() -> OrganisationKey:
    return OrganisationKey.generate()


async def build_world(conn: asyncpg.Connection, org: OrganisationKey, tokens: TokenService,
                      count: int, *, prefix: str, pair: bool = True) -> World:
    """``count`` users with one active device each; with ``pair``, devices 2k and 2k+1 share a
    thread and send to each other. Rows go in with server/store functions, in one transaction."""
    now = int(time.time())
    specs: list[DeviceSpec] = []
    rows: list[tuple[UserCertificate, str, DeviceCertificate, str]] = []
    for i in range(count):
        identity = IdentityKey.generate()
        ucert = UserCertificate(
            v=1, serial=str(uuid.uuid4()), user_id=str(uuid.uuid4()), org_id=ORG_ID,
            display_name=f"Dr Bench {prefix}{i}", account_kind=AccountKind.CLINICIAN,
            roles=["bench"], specialty=None, department=None,
            licence=Licence(type="GMC", number="1234567", jurisdiction="UK",
                            expires_at=now + 365 * DAY),
            identity_key=identity.public, not_before=now - 60, not_after=now + 365 * DAY,
            issued_at=now - 60)
        utok = issue_user_certificate(ucert, org)
        device_id = str(uuid.uuid4())
        keys = DeviceKeys.generate(device_id)
        dcert = DeviceCertificate(v=1, device_id=device_id, user_id=ucert.user_id, org_id=ORG_ID,
                                  kind=DeviceKind.MOBILE, signing_key=keys.signing.public,
                                  dh_key=keys.dh.public, issued_at=now - 60,
                                  not_after=now + 365 * DAY)
        dtok = issue_device_certificate(dcert, identity)
        spk = X25519KeyPair.generate()
        spk_token = issue_signed_prekey(SignedPrekey(device_id=device_id, prekey_id=SPK_ID,
                                                     public=spk.public, created_at=now),
                                        keys.signing)
        token, _ = tokens.issue_access(user_id=ucert.user_id, device_id=device_id,
                                       family_id=str(uuid.uuid4()),
                                       signing_key=keys.signing.public)
        peer = (i ^ 1) if pair and (i ^ 1) < count else i
        specs.append(DeviceSpec(
            index=i, device_id=device_id, user_id=ucert.user_id,
            signing_seed=keys.signing.seed.reveal(), dh_secret=keys.dh.secret.reveal(),
            user_cert=utok, device_cert=dtok, spk_secret=spk.secret.reveal(),
            spk_token=spk_token, token=token, thread_id="", peer=peer))
        rows.append((ucert, utok, dcert, dtok))
    t = float(now)
    async with conn.transaction():
        for (ucert, utok, dcert, dtok), spec in zip(rows, specs, strict=True):
            await users.insert_user(conn, ucert, utok, f"bench-{prefix}{spec.index}", now=t)
            await users.set_status(conn, ucert.user_id, "active", now=t)
            await devices.insert_device(conn, dcert, dtok, now=t)
        if pair:
            when = dt.datetime.now(dt.UTC)
            for i in range(0, count - 1, 2):
                tid = str(uuid.uuid4())
                await threads.create_thread(
                    conn, thread_id=tid, org_id=ORG_ID, creator=specs[i].user_id,
                    priority="routine", users=[specs[i + 1].user_id], roles=[], now=when)
                specs[i] = dataclasses.replace(specs[i], thread_id=tid)
                specs[i + 1] = dataclasses.replace(specs[i + 1], thread_id=tid)
    return World(org_public=org.public, devices=specs)


class Sealer:
    """Seals real messages from one device to its peer (chain verified once)."""

    def __init__(self, me: DeviceSpec, peer: DeviceSpec, trusted: dict[str, bytes]) -> None:
        self.me, self.keys = me, me.keys()
        vd = verify_chain(peer.user_cert, peer.device_cert, trusted_orgs=trusted,
                          at=int(time.time()), revocations=None)
        self.bundle = envelope.RecipientBundle.from_tokens(vd, peer.spk_token)
        self.peer_id = peer.device_id

    def seal(self, body: bytes) -> SealedMessage:
        header = MessageHeader(
            v=1, message_id=str(uuid.uuid4()), thread_id=self.me.thread_id,
            sender_user_id=self.me.user_id, sender_device_id=self.me.device_id,
            sent_at=int(time.time()), purpose=Purpose.DIRECT_CARE, priority=Priority.ROUTINE,
            consent_id=None, attachment_ids=[], recipient_devices=[self.peer_id])
        return envelope.seal_message(header, body, sender=self.keys, recipients=[self.bundle])
