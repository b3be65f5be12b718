"""Helpers for the attachment and consent tests: an SDK client acting as a test peer, consent
tokens captured with the SDK (or forged for bad-input cases), sealed messages carrying an
attachment descriptor under a consent, an x-ray-like test image, and the database dump search
that proves the relay is blind (docs/ARCHITECTURE.md §2)."""

from __future__ import annotations

import io
import json
from typing import Any

import asyncpg
import msgspec

from clients.sdk.consent import ConsentCapture, capture_consent, image_hash
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import DeviceState
from protocol import api
from protocol.attachments import AttachmentDescriptor
from protocol.canonical import b64url_decode
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.errors import DecodeError
from protocol.model import Priority, Purpose, SealedMessage
from tests.identity_world import World
from tests.relay_world import Peer, seal

# Distinctive fake patient data: none of it may ever appear in the relay's database.
MRN = "LBX-TEST-0042"
PATIENT_NAME = "Testpatient^Alpha"
BIRTH_DATE = "1957-03-14"


def xray_png(width: int = 640, height: int = 512, seed: int = 42) -> bytes:
    """An x-ray-like greyscale PNG: a bright 'bone' shape on dark soft tissue, with film grain
    (so it does not compress away and its bytes are distinctive)."""
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.effect_noise((width, height), 40).convert("L")
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((width * 0.42, 20, width * 0.58, height - 20), radius=30, fill=215)
    draw.ellipse((width * 0.36, height * 0.1, width * 0.64, height * 0.3), fill=230)
    draw.line((width * 0.40, height * 0.55, width * 0.60, height * 0.58), fill=40, width=4)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    noise = Image.effect_noise((width, height), 25 + seed % 7).convert("L")
    img = Image.blend(img, noise, 0.25)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


async def sdk(world: World, p: Peer) -> RelayHTTP:
    """An SDK client for the peer (a fresh session of its device)."""
    pair = msgspec.convert(await world.login(p.device), api.TokenPair)
    return RelayHTTP(world.relay.base_url, device=p.device.keys.signing, tokens=pair)


def device_state(world: World, p: Peer, *, with_identity: bool = True) -> DeviceState:
    """The peer's device state as its key store would hold it (identity key on the enrolled
    device only)."""
    d, u = p.device, p.device.user
    return DeviceState(
        server_url=world.relay.base_url, login=u.login, user_id=u.user_id, org_id=u.org.org_id,
        org_public_key=u.org.key.public,
        identity_seed=u.identity.seed.reveal() if with_identity else None,
        device_id=d.device_id, device_kind=d.kind.value, device_seed=d.keys.signing.seed.reveal(),
        dh_secret=d.keys.dh.secret.reveal(), user_certificate=u.cert,
        device_certificate=d.cert)


def consent(world: World, issuer: Peer, images: list[bytes], *,
            purposes: tuple[Purpose, ...] = (Purpose.DIRECT_CARE,),
            roles: tuple[str, ...] = (), users: tuple[str, ...] = (),
            orgs: tuple[str, ...] = (), external: bool = False,
            decision: ConsentDecision = ConsentDecision.AGREED,
            basis: ConsentBasis = ConsentBasis.TREATMENT_ATTESTATION,
            valid_for: int = 3600, now: int | None = None) -> tuple[str, str]:
    """(token, consent id) captured with the SDK by ``issuer``."""
    capture = ConsentCapture(
        purposes=list(purposes), images=[image_hash(i) for i in images], decision=decision,
        basis=basis, recipient_users=list(users), recipient_roles=list(roles),
        recipient_orgs=list(orgs), external=external, permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True, valid_for=valid_for)
    token, claims = capture_consent(device_state(world, issuer), capture, now=now)
    return token, claims.jti


def seal_with(sender: Peer, thread_id: str, recipients: list[Peer], body: bytes, *,
              consent_id: str | None, attachment_ids: list[str],
              purpose: Purpose = Purpose.DIRECT_CARE, external: bool = False) -> SealedMessage:
    """A real sealed urgent message with consent and attachment ids in its (relay-readable)
    header."""
    return seal(sender, thread_id, recipients, body, priority=Priority.URGENT, purpose=purpose,
                consent_id=consent_id, attachment_ids=attachment_ids, external=external)


def image_body(text: str, descriptor: AttachmentDescriptor | None) -> bytes:
    """The sealed body of a consult message: text, patient data and the descriptor (key!)."""
    doc: dict[str, Any] = {"text": text, "patient": {"name": PATIENT_NAME, "mrn": MRN,
                                                     "birth_date": BIRTH_DATE}}
    if descriptor is not None:
        doc["attachment"] = msgspec.to_builtins(descriptor)
    return msgspec.json.encode(doc)


def descriptor_of(body: bytes) -> AttachmentDescriptor:
    doc = msgspec.json.decode(body)
    return msgspec.convert(doc["attachment"], AttachmentDescriptor)


async def count(world: World, sql: str, *args: Any) -> int:
    conn = await world.db()
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


# --- the blind relay: dump every table and search it -------------------------------------------


def _expand(value: Any, out: list[bytes]) -> None:
    if value is None:
        return
    if isinstance(value, bytes | bytearray | memoryview):
        out.append(bytes(value))
    elif isinstance(value, str):
        out.append(value.encode())
        for part in value.replace("~", ".").split("."):  # JWS / compact tokens: decode each part
            if len(part) >= 8:
                try:
                    out.append(b64url_decode(part))
                except DecodeError:
                    pass
    elif isinstance(value, list | tuple):
        for v in value:
            _expand(v, out)
    elif isinstance(value, dict):
        out.append(json.dumps(value).encode())
    else:
        out.append(str(value).encode())


async def dump_database(dsn: str) -> list[tuple[str, bytes]]:
    """Every value of every row of every table (what a thief with the database gets)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE' ORDER BY table_name")]
        out: list[tuple[str, bytes]] = []
        for t in tables:
            for row in await conn.fetch(f'SELECT * FROM "{t}"'):
                values: list[bytes] = []
                for v in row.values():
                    _expand(v, values)
                out += [(t, v) for v in values]
        return out
    finally:
        await conn.close()


async def assert_blind(dsn: str, needles: dict[str, bytes], *, controls: tuple[bytes, ...] = ()
                       ) -> int:
    """Assert no needle occurs anywhere in the dump; returns how many values were searched.
    ``controls`` must be found (what the relay may see), proving the search can find things."""
    dump = await dump_database(dsn)
    for control in controls:
        assert any(control in v for _, v in dump), f"control {control!r} not found"
    for name, needle in needles.items():
        hits = sorted({t for t, v in dump if needle in v})
        assert not hits, f"{name} found in tables {hits}"
    return len(dump)


def image_needles(image: bytes) -> dict[str, bytes]:
    n = len(image)
    return {f"image bytes @{i}": image[i:i + 48] for i in (64, n // 3, n // 2, n - 80)}


def patient_needles(*texts: str) -> dict[str, bytes]:
    found = {"MRN": MRN.encode(), "patient name": PATIENT_NAME.encode(),
             "birth date": BIRTH_DATE.encode(), "surname": b"Testpatient"}
    found.update({f"text {i}": t.encode() for i, t in enumerate(texts)})
    return found
