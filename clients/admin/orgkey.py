"""The organisation keyfile: the organisation's Ed25519 key, sealed under IT's passphrase.

Why: the organisation key signs every user certificate and revocation list (docs/ARCHITECTURE.md
§4), so it lives with IT's provisioning tool, never on the relay, and never on disk in the clear.
The
keyfile (mode 0600) is JSON::

    {"org_id": "...", "public_key": "<b64url>", "sealed_seed": "<b64url>"}

where ``sealed_seed`` is :func:`protocol.keys.seal_with_passphrase` of the 32-byte seed
(PROTOCOL §4.7, SENSITIVE profile: 3 passes over 256 MiB). Next to it, ``<org_id>.pub.json``
holds only the public key in the format of the relay's trusted-organisations file
(``{"orgs": {org_id: b64url key}}``), ready for ``lightbox-server org trust`` on the relay
host.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import msgspec

from clients.sdk.kdf import passphrase_profile
from clients.sdk.keystore import write_private_file
from protocol.canonical import b64url_decode, b64url_encode
from protocol.errors import ProtocolError
from protocol.keys import (
    SENSITIVE_PROFILE,
    OrganisationKey,
    PassphraseProfile,
    key_id,
    open_with_passphrase,
    seal_with_passphrase,
)

__all__ = [
    "ORG_ID_PATTERN",
    "OrgKeyError",
    "create_org_keyfile",
    "fingerprint",
    "open_org_keyfile",
    "public_file_path",
    "read_public_key",
]

ORG_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_MAX_FILE = 64 * 1024


class OrgKeyError(Exception):
    """The keyfile is missing, malformed, exists already, or the passphrase is wrong."""


class _Keyfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    org_id: str
    public_key: str
    sealed_seed: str


def fingerprint(public_key: bytes) -> str:
    """The key id (PROTOCOL §4.1) IT reads aloud or prints to compare keys out of band."""
    return key_id(public_key)


def public_file_path(keyfile: Path, org_id: str) -> Path:
    return keyfile.parent / f"{org_id}.pub.json"


def create_org_keyfile(
    path: Path, org_id: str, passphrase: str, profile: PassphraseProfile | None = None,
) -> OrganisationKey:
    """Generate the organisation key, write the sealed keyfile (0600) and the public file.

    Refuses to overwrite an existing keyfile: losing the organisation key means re-issuing
    every certificate.
    """
    if not ORG_ID_PATTERN.match(org_id):
        raise OrgKeyError("organisation ids are 1-63 characters of a-z, 0-9, '.' and '-'")
    if not passphrase:
        raise OrgKeyError("the passphrase is empty")
    if path.exists():
        raise OrgKeyError(f"{path} exists already; refusing to overwrite an organisation key")
    kdf = profile or passphrase_profile(SENSITIVE_PROFILE)
    key = OrganisationKey.generate()
    sealed = seal_with_passphrase(key.seed.reveal(), passphrase, opslimit=kdf.opslimit,
                                  memlimit=kdf.memlimit)
    body = _Keyfile(org_id=org_id, public_key=b64url_encode(key.public),
                    sealed_seed=b64url_encode(sealed))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, msgspec.json.format(msgspec.json.encode(body)) + b"\n")
    public = public_file_path(path, org_id)
    public.write_text(json.dumps({"orgs": {org_id: body.public_key}}, indent=2) + "\n")
    os.chmod(public, 0o644)
    return key


def _read_keyfile(path: Path) -> _Keyfile:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise OrgKeyError(f"no organisation keyfile at {path}") from exc
    if len(data) > _MAX_FILE:
        raise OrgKeyError(f"{path} is not an organisation keyfile")
    try:
        body = msgspec.json.decode(data, type=_Keyfile)
    except msgspec.DecodeError as exc:
        raise OrgKeyError(f"{path} is not an organisation keyfile") from exc
    if not ORG_ID_PATTERN.match(body.org_id):
        raise OrgKeyError(f"{path} names an invalid organisation id")
    return body


def read_public_key(path: Path) -> tuple[str, bytes]:
    """(org id, public key) from a keyfile, without the passphrase."""
    body = _read_keyfile(path)
    try:
        return body.org_id, b64url_decode(body.public_key, length=32)
    except ProtocolError as exc:
        raise OrgKeyError(f"{path} holds a malformed public key") from exc


def open_org_keyfile(path: Path, passphrase: str) -> tuple[str, OrganisationKey]:
    """Unseal the organisation key; OrgKeyError for a wrong passphrase or a damaged file."""
    body = _read_keyfile(path)
    try:
        seed = open_with_passphrase(b64url_decode(body.sealed_seed, max_length=4096),
                                    passphrase)
        key = OrganisationKey.from_seed(seed)
    except (ProtocolError, ValueError) as exc:
        raise OrgKeyError("wrong passphrase for the organisation keyfile "
                          "(or the file is damaged)") from exc
    if b64url_encode(key.public) != body.public_key:
        raise OrgKeyError(f"{path}: the sealed key does not match its public key")
    return body.org_id, key
