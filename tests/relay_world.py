"""Helpers for the relay's websocket tests: onboarded devices that can seal real messages to
each other (with prekeys they keep, so recipients can open them), threads, and sockets."""

from __future__ import annotations

import dataclasses
import time
import uuid

import msgspec

from clients.sdk.socket import RelaySocket
from protocol import envelope
from protocol.certs import SignedPrekey, issue_signed_prekey, verify_chain
from protocol.keys import MemoryPrekeyStore, Prekey
from protocol.model import EmergencyCategory, MessageHeader, Priority, Purpose, SealedMessage
from tests.identity_world import Device, User, World


@dataclasses.dataclass
class Peer:
    """A logged-in device that keeps its signed prekey secret, so it can open what it gets."""

    device: Device
    prekeys: MemoryPrekeyStore
    spk: Prekey
    spk_token: str

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def user_id(self) -> str:
        return self.device.user.user_id

    @property
    def token(self) -> str:
        assert self.device.access_token is not None
        return self.device.access_token


async def peer(world: World, login: str, *, roles: tuple[str, ...] = ("orthopaedics_oncall",),
               user: User | None = None) -> Peer:
    """Provision (unless ``user`` is given), enrol, log in, and publish a kept signed prekey."""
    if user is None:
        device = await world.onboard(world.org.user(login, roles=roles))
    else:
        device = user.device()
        r = await world.enrol(device)
        assert r.status_code == 200, r.text
        await world.login(device)
    return await with_signed_prekey(world, device)


async def with_signed_prekey(world: World, device: Device) -> Peer:
    """Publish a signed prekey for a logged-in ``device`` and keep its secret: a peer."""
    spk = Prekey.generate(7)
    token = issue_signed_prekey(SignedPrekey(device_id=device.device_id, prekey_id=7,
                                             public=spk.public, created_at=int(time.time())),
                                device.keys.signing)
    r = await world.call(device, "PUT", "/v1/keys/signed-prekey", json={"signed_prekey": token})
    assert r.status_code == 204, r.text
    return Peer(device, MemoryPrekeyStore(signed=[spk]), spk, token)


async def thread(world: World, creator: Peer, *others: Peer, roles: list[str] | None = None,
                 priority: str = "routine") -> str:
    tid = str(uuid.uuid4())
    r = await world.call(creator.device, "POST", "/v1/threads", json={
        "thread_id": tid, "users": [p.user_id for p in others], "roles": roles or [],
        "priority": priority})
    assert r.status_code == 201, r.text
    return tid


def seal(sender: Peer, thread_id: str, recipients: list[Peer], body: bytes = b"hello",
         *, message_id: str | None = None, priority: Priority = Priority.ROUTINE,
         recipient_ids: list[str] | None = None, external: bool = False,
         purpose: Purpose = Purpose.DIRECT_CARE, consent_id: str | None = None,
         attachment_ids: list[str] | None = None,
         emergency: EmergencyCategory | None = None) -> SealedMessage:
    """A real sealed message from ``sender`` to ``recipients`` (recipient_ids may lie), with
    the purpose, consent and attachment ids the relay reads in its header."""
    now = int(time.time())
    bundles = []
    for r in recipients:
        vd = verify_chain(r.device.user.cert, r.device.cert,
                          trusted_orgs={r.device.user.org.org_id: r.device.user.org.key.public},
                          at=now, revocations=None)
        bundles.append(envelope.RecipientBundle.from_tokens(vd, r.spk_token))
    header = MessageHeader(
        v=1, message_id=message_id or str(uuid.uuid4()), thread_id=thread_id,
        sender_user_id=sender.user_id, sender_device_id=sender.device_id, sent_at=now,
        purpose=purpose, priority=priority, consent_id=consent_id,
        attachment_ids=attachment_ids or [],
        recipient_devices=[r.device_id for r in recipients], external=external,
        emergency=emergency)
    sealed = envelope.seal_message(header, body, sender=sender.device.keys, recipients=bundles)
    if recipient_ids is not None:
        sealed = msgspec.structs.replace(
            sealed, header=msgspec.structs.replace(sealed.header,
                                                   recipient_devices=recipient_ids))
    return sealed


async def connect(world: World, p: Peer) -> RelaySocket:
    return await RelaySocket.connect(world.relay.ws_url + "/v1/ws", access_token=p.token,
                                     device_id=p.device_id, sign=p.device.keys.sign)


async def send_while_offline(world: World, sender: Peer, recipient: Peer, thread_id: str,
                             body: bytes) -> None:
    """``sender`` connects, sends ``body`` to ``recipient`` (offline: it stays queued for it),
    and goes."""
    a = await connect(world, sender)
    try:
        await a.send(seal(sender, thread_id, [recipient], body))
    finally:
        await a.close()


def opened(p: Peer, sender: Peer, sealed: SealedMessage) -> bytes:
    """What ``p`` reads from ``sealed`` (verifying the sender's chain and signature)."""
    s = sender.device
    vd = verify_chain(s.user.cert, s.cert, trusted_orgs={s.user.org.org_id: s.user.org.key.public},
                      at=int(time.time()), revocations=None)
    return envelope.open_message(sealed, me=p.device.keys, prekeys=p.prekeys, sender=vd,
                                 seen=envelope.MemorySeenSet())
