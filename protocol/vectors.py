"""Reproducible test vectors for protocol v1 (docs/PROTOCOL.md §10).

Why: another implementation proves compatibility by reproducing these bytes. Everything random
comes from :class:`DeterministicRng` (seeded per section) and every time is fixed, so the
generator is a pure function; ``protocol/vectors/v1.json`` is its output and a test checks
that regenerating it gives the same bytes.

    python -m protocol.vectors --write   # regenerate protocol/vectors/v1.json
    python -m protocol.vectors --check   # exit 1 if the file differs from the generator

Binary values are base64url without padding; canonical bodies are given as UTF-8 text.
Sections are registered in :data:`SECTIONS`; other modules add theirs with
:func:`register_section` (e.g. consent tokens), receiving the shared :class:`VectorContext`.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from protocol import _sodium, api, canonical, certs, consent, envelope, keys, statements
from protocol.attachments import AttachmentEncryptor, ciphertext_size, encrypt_attachment
from protocol.canonical import b64url_encode as b64
from protocol.model import DeviceKind, MessageHeader, Priority, Purpose

__all__ = [
    "SECTIONS",
    "VECTORS_PATH",
    "DeterministicRng",
    "VectorContext",
    "build_context",
    "generate",
    "main",
    "register_section",
    "render",
]

VECTORS_PATH: Final = Path(__file__).with_name("vectors") / "v1.json"
T0: Final = 1_767_225_600  # 2026-01-01T00:00:00Z
YEAR: Final = 365 * 24 * 3600
ORG_ID: Final = "st-elsewhere"


class DeterministicRng:
    """``rng(n)``: the next ``n`` bytes of SHA-256(seed || u64be(0)) || SHA-256(seed ||
    u64be(1)) || ... . For vectors and tests only; never for real keys."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._pool = b""

    def __call__(self, n: int) -> bytes:
        while len(self._pool) < n:
            self._pool += _sodium.sha256(self._seed + struct.pack(">Q", self._counter))
            self._counter += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out


def _uuid(rng: DeterministicRng) -> str:
    """A version-4 UUID string from 16 rng bytes (RFC 9562 §5.4)."""
    b = bytearray(rng(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Party:
    """A user with one device, its certificates and prekeys (vector fixtures)."""

    identity: keys.IdentityKey
    user: certs.UserCertificate
    user_token: str
    device_keys: keys.DeviceKeys
    device: certs.DeviceCertificate
    device_token: str
    signed_prekey: keys.Prekey
    signed_prekey_token: str
    one_time_prekeys: list[keys.Prekey]
    one_time_prekey_tokens: list[str]

    def verified(self) -> certs.VerifiedDevice:
        return certs.VerifiedDevice(user=self.user, device=self.device)


@dataclass(frozen=True, slots=True)
class VectorContext:
    """Fixed keys and certificates shared by all sections."""

    now: int
    org: keys.OrganisationKey
    alice: Party  # a clinician on a mobile (the sender)
    bob: Party  # a clinician on a desktop (recipient, with a one-time prekey)
    gateway: Party  # the record gateway (recipient, without a one-time prekey)

    @property
    def trusted_orgs(self) -> dict[str, bytes]:
        return {ORG_ID: self.org.public}

    @staticmethod
    def rng_for(section: str) -> DeterministicRng:
        return DeterministicRng(b"lightbox/v1/vectors/" + section.encode())


def _party(
    name: str,
    org: keys.OrganisationKey,
    *,
    kind: DeviceKind,
    account: certs.AccountKind,
    roles: list[str],
    one_time: int,
) -> Party:
    rng = DeterministicRng(b"lightbox/v1/vectors/party/" + name.encode())
    identity = keys.IdentityKey.generate(rng)
    user_id = _uuid(rng)
    licence = (
        certs.Licence(
            type="GMC", number="7" + str(len(name)) * 6, jurisdiction="GB", expires_at=T0 + 2 * YEAR
        )
        if account is certs.AccountKind.CLINICIAN
        else None
    )
    user = certs.UserCertificate(
        v=1,
        serial=_uuid(rng),
        user_id=user_id,
        org_id=ORG_ID,
        display_name=name,
        account_kind=account,
        roles=roles,
        specialty="Dermatology" if account is certs.AccountKind.CLINICIAN else None,
        department="Outpatients" if account is certs.AccountKind.CLINICIAN else None,
        licence=licence,
        identity_key=identity.public,
        not_before=T0 - 3600,
        not_after=T0 + YEAR,
        issued_at=T0 - 3600,
    )
    device_keys = keys.DeviceKeys.generate(_uuid(rng), rng)
    device = certs.DeviceCertificate(
        v=1,
        device_id=device_keys.device_id,
        user_id=user_id,
        org_id=ORG_ID,
        kind=kind,
        signing_key=device_keys.signing.public,
        dh_key=device_keys.dh.public,
        issued_at=T0 - 1800,
        not_after=T0 + YEAR,
    )
    spk = keys.Prekey.generate(1, rng)
    otks = keys.generate_one_time_prekeys(100, one_time, rng)
    return Party(
        identity=identity,
        user=user,
        user_token=certs.issue_user_certificate(user, org),
        device_keys=device_keys,
        device=device,
        device_token=certs.issue_device_certificate(device, identity),
        signed_prekey=spk,
        signed_prekey_token=certs.issue_signed_prekey(
            certs.SignedPrekey(
                device_id=device.device_id, prekey_id=1, public=spk.public, created_at=T0 - 1800
            ),
            device_keys.signing,
        ),
        one_time_prekeys=otks,
        one_time_prekey_tokens=[
            certs.issue_one_time_prekey(
                certs.OneTimePrekey(
                    device_id=device.device_id, prekey_id=p.prekey_id, public=p.public
                ),
                device_keys.signing,
            )
            for p in otks
        ],
    )


def build_context() -> VectorContext:
    """The fixed organisation, users and devices used by every section."""
    org = keys.OrganisationKey.generate(DeterministicRng(b"lightbox/v1/vectors/org"))
    clin, svc = certs.AccountKind.CLINICIAN, certs.AccountKind.SERVICE
    return VectorContext(
        now=T0,
        org=org,
        alice=_party(
            "Dr Alice Adeyemi",
            org,
            kind=DeviceKind.MOBILE,
            account=clin,
            roles=["registrar"],
            one_time=1,
        ),
        bob=_party(
            "Dr Bob Brennan",
            org,
            kind=DeviceKind.DESKTOP,
            account=clin,
            roles=["consultant"],
            one_time=2,
        ),
        gateway=_party(
            "Record gateway",
            org,
            kind=DeviceKind.GATEWAY,
            account=svc,
            roles=[certs.ROLE_RECORD_GATEWAY],
            one_time=0,
        ),
    )


# --- sections ----------------------------------------------------------------------------------


def _party_json(p: Party) -> dict[str, Any]:
    return {
        "identity_seed": b64(p.identity.seed.reveal()),
        "identity_public": b64(p.identity.public),
        "identity_key_id": p.identity.key_id,
        "user_certificate_body": canonical.encode_struct(p.user).decode(),
        "user_certificate": p.user_token,
        "device_id": p.device_keys.device_id,
        "device_signing_seed": b64(p.device_keys.signing.seed.reveal()),
        "device_signing_public": b64(p.device_keys.signing.public),
        "device_dh_secret": b64(p.device_keys.dh.secret.reveal()),
        "device_dh_public": b64(p.device_keys.dh.public),
        "device_certificate_body": canonical.encode_struct(p.device).decode(),
        "device_certificate": p.device_token,
        "signed_prekey": {
            "id": p.signed_prekey.prekey_id,
            "secret": b64(p.signed_prekey.keypair.secret.reveal()),
            "public": b64(p.signed_prekey.public),
            "token": p.signed_prekey_token,
        },
        "one_time_prekeys": [
            {
                "id": k.prekey_id,
                "secret": b64(k.keypair.secret.reveal()),
                "public": b64(k.public),
                "token": t,
            }
            for k, t in zip(p.one_time_prekeys, p.one_time_prekey_tokens, strict=True)
        ],
    }


def _section_keys(ctx: VectorContext) -> dict[str, Any]:
    rng = ctx.rng_for("passphrase")
    secret = ctx.org.seed.reveal()
    sealed = keys.seal_with_passphrase(
        secret,
        "correct horse battery staple",
        opslimit=keys.CHEAP_PROFILE.opslimit,
        memlimit=keys.CHEAP_PROFILE.memlimit,
        rng=rng,
    )
    return {
        "organisation": {
            "org_id": ORG_ID,
            "seed": b64(ctx.org.seed.reveal()),
            "public": b64(ctx.org.public),
            "key_id": ctx.org.key_id,
        },
        "passphrase_seal": {
            "passphrase": "correct horse battery staple",
            "opslimit": keys.CHEAP_PROFILE.opslimit,
            "memlimit": keys.CHEAP_PROFILE.memlimit,
            "secret": b64(secret),
            "sealed": b64(sealed),
        },
        "alice": _party_json(ctx.alice),
        "bob": _party_json(ctx.bob),
        "gateway": _party_json(ctx.gateway),
    }


def _section_certificates(ctx: VectorContext) -> dict[str, Any]:
    body = canonical.encode_struct(ctx.alice.user)
    return {
        "verify_at": ctx.now,
        "user_certificate_signing_input": b64(
            canonical.signing_input(canonical.LABEL_USER_CERTIFICATE, body)
        ),
        "user_certificate": ctx.alice.user_token,
        "device_certificate": ctx.alice.device_token,
        "labels": [label.decode() for label in canonical.LABELS],
    }


def _section_sealed_message(ctx: VectorContext) -> dict[str, Any]:
    rng = ctx.rng_for("sealed_message")
    alice, bob, gw = ctx.alice, ctx.bob, ctx.gateway
    header = MessageHeader(
        v=1,
        message_id=_uuid(rng),
        thread_id=_uuid(rng),
        sender_user_id=alice.user.user_id,
        sender_device_id=alice.device_keys.device_id,
        sent_at=ctx.now,
        purpose=Purpose.DIRECT_CARE,
        priority=Priority.ROUTINE,
        consent_id=_uuid(rng),
        attachment_ids=[],
        recipient_devices=[bob.device_keys.device_id, gw.device_keys.device_id],
    )
    body = b"Please review: 3 cm pigmented lesion, left forearm."
    bundles = [
        envelope.RecipientBundle(
            device=bob.verified(),
            signed_prekey=certs.verify_signed_prekey(bob.signed_prekey_token, bob.verified()),
            one_time_prekey=certs.verify_one_time_prekey(
                bob.one_time_prekey_tokens[0], bob.verified()
            ),
        ),
        envelope.RecipientBundle(
            device=gw.verified(),
            signed_prekey=certs.verify_signed_prekey(gw.signed_prekey_token, gw.verified()),
        ),
    ]
    # Re-run the construction step by step with a copy of the rng to expose intermediates.
    trace_rng = ctx.rng_for("sealed_message")
    for _ in range(3):
        _uuid(trace_rng)
    sealed = envelope.seal_message(
        header, body, sender=alice.device_keys, recipients=bundles, rng=rng
    )
    final_header = sealed.header
    content_key = trace_rng(envelope.CONTENT_KEY_BYTES)
    trace_rng(_sodium.AEAD_NONCE_BYTES)
    traces = []
    for bundle, wrapped in zip(bundles, sealed.keys, strict=True):
        again, trace = envelope._wrap(
            final_header, content_key, sender=alice.device_keys, recipient=bundle, rng=trace_rng
        )
        assert again == wrapped
        traces.append({"device_id": wrapped.device_id, **{k: b64(v) for k, v in trace.items()}})
    return {
        "header_canonical": envelope.header_bytes(final_header).decode(),
        "body": body.decode(),
        "content_key": b64(content_key),
        "body_nonce": b64(sealed.nonce),
        "body_associated_data": b64(envelope.body_associated_data(final_header)),
        "ciphertext": b64(sealed.ciphertext),
        "recipients": traces,
        "signature_input": b64(envelope.signature_input(sealed)),
        "signature": b64(sealed.signature),
        "msgpack": b64(envelope.encode_sealed(sealed)),
    }


def _section_attachment(ctx: VectorContext) -> dict[str, Any]:
    rng = ctx.rng_for("attachment")
    small = b"not really a JPEG"
    enc_small = encrypt_attachment(small, rng=rng)
    size = 65_536 + 100  # two chunks: a full TAG_MESSAGE chunk and a 100-byte TAG_FINAL chunk
    big = bytes(i % 251 for i in range(size))
    key = rng(32)
    enc = AttachmentEncryptor(key, rng=rng)
    chunks = [enc.feed(big), enc.finish()]
    stream = enc.header + b"".join(chunks)
    assert len(stream) == ciphertext_size(size)
    return {
        "small": {
            "plaintext": b64(small),
            "key": b64(enc_small.key),
            "header": b64(enc_small.ciphertext[:24]),
            "plaintext_sha256": b64(enc_small.sha256),
            "ciphertext": b64(enc_small.ciphertext),
        },
        "two_chunks": {
            "plaintext_rule": "byte i is i mod 251",
            "size": size,
            "key": b64(key),
            "header": b64(enc.header),
            "plaintext_sha256": b64(enc.sha256),
            "ciphertext_size": len(stream),
            "ciphertext_sha256": b64(_sodium.sha256(stream)),
            "first_chunk_sha256": b64(_sodium.sha256(chunks[0])),
            "final_chunk": b64(chunks[1]),
        },
    }


def _section_revocation(ctx: VectorContext) -> dict[str, Any]:
    body = certs.RevocationList(
        v=1,
        org_id=ORG_ID,
        number=7,
        issued_at=ctx.now,
        entries=[
            certs.RevocationEntry(
                subject=certs.RevocationSubject.DEVICE,
                id=ctx.bob.device_keys.device_id,
                revoked_at=ctx.now - 60,
                reason="device lost",
                wipe=True,
            )
        ],
    )
    return {
        "body": canonical.encode_struct(body).decode(),
        "token": certs.issue_revocation_list(body, ctx.org),
    }


def _section_filing_statement(ctx: VectorContext) -> dict[str, Any]:
    rng = ctx.rng_for("filing_statement")
    body = statements.FilingStatement(
        v=1,
        statement_id=_uuid(rng),
        device_id=ctx.gateway.device_keys.device_id,
        attachment_id=_uuid(rng),
        message_id=_uuid(rng),
        thread_id=_uuid(rng),
        filed_at=ctx.now,
        receipt_sha256=_sodium.sha256(b"sealed filing receipt"),
    )
    return {
        "body": canonical.encode_struct(body).decode(),
        "token": statements.issue_filing_statement(body, ctx.gateway.device_keys.signing),
    }


def _section_request_proof(ctx: VectorContext) -> dict[str, Any]:
    """``Lightbox-Proof`` (docs/PROTOCOL.md §11): bob's device proves a request with a query and
    a JSON body; ``replays`` are the same proof with one field changed, each of which a relay
    must refuse."""
    rng = ctx.rng_for("request_proof")
    nonce = rng(api.PROOF_NONCE_BYTES)
    token = "eyJhbGciOiJFZERTQSJ9.example-access-token.signature"  # noqa: S105 (a sample)
    method, target = "POST", f"/v1/threads/{_uuid(rng)}/participants?notify=1"
    body = b'{"users":["' + _uuid(rng).encode() + b'"]}'
    signing_input = api.request_proof_input(method, target, ctx.now, nonce, body, token)
    signature = ctx.bob.device_keys.signing.sign(signing_input)
    return {
        "device_id": ctx.bob.device_keys.device_id,
        "device_signing_public": b64(ctx.bob.device_keys.signing.public),
        "method": method,
        "target": target,
        "timestamp": ctx.now,
        "nonce": b64(nonce),
        "body": body.decode(),
        "body_sha256": _sodium.sha256(body).hex(),
        "access_token": token,
        "signing_input": b64(signing_input),
        "signature": b64(signature),
        "header": f"{ctx.now}.{b64(nonce)}.{b64(signature)}",
        "refused_changes": ["another body", "another query", "another method",
                            "the same proof again (nonce seen)"],
    }


Section = Callable[[VectorContext], dict[str, Any]]

SECTIONS: dict[str, Section] = {
    "keys": _section_keys,
    "certificates": _section_certificates,
    "sealed_message": _section_sealed_message,
    "attachment": _section_attachment,
    "revocation": _section_revocation,
    "filing_statement": _section_filing_statement,
    "request_proof": _section_request_proof,
    # The consent token uses its own fixed key and times (protocol.consent.consent_vectors).
    "consent": lambda ctx: consent.consent_vectors(),
}


def register_section(name: str, section: Section) -> None:
    """Add a section (a pure function of the context) to the vectors."""
    if name in SECTIONS and SECTIONS[name] is not section:
        raise ValueError(f"vector section {name!r} already registered")
    SECTIONS[name] = section


def generate() -> dict[str, Any]:
    """All vectors as a JSON-able dict."""
    ctx = build_context()
    return {
        "version": 1,
        "time": ctx.now,
        "rng": "DeterministicRng(seed): SHA-256(seed || u64be(counter)) blocks, counter from 0",
        **{name: section(ctx) for name, section in sorted(SECTIONS.items())},
    }


def render() -> str:
    """The exact text of protocol/vectors/v1.json."""
    return json.dumps(generate(), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.vectors", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the vectors file")
    mode.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        VECTORS_PATH.parent.mkdir(parents=True, exist_ok=True)
        VECTORS_PATH.write_text(text, encoding="utf-8")
        return 0
    current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else ""
    if current != text:
        print(f"{VECTORS_PATH} is stale: run python -m protocol.vectors --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
