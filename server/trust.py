"""Which organisations the relay trusts, and their latest revocation lists.

The relay is configured with organisation *public* keys only (docs/ARCHITECTURE.md §4): it can
verify the
user certificates and revocation lists that IT's tool signs, but make none. The file is JSON::

    {"orgs": {"<org_id>": "<b64url Ed25519 public key>"}}

Revocation lists live in the ``revocation_lists`` table (one row per organisation, the newest
verified list). Several relay processes share that table, so :meth:`Trust.revocations`
re-reads it and caches parsed lists by (organisation, number): a list is parsed once per
process and a newer one applied by another process is picked up at the next check.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from protocol.canonical import b64url_decode, b64url_encode
from protocol.certs import RevocationList, RevocationSet, verify_revocation_list
from protocol.errors import DecodeError, ProtocolError
from server.errors import InvalidInput, RelayError

__all__ = ["Trust", "TrustError", "load_trusted_orgs", "read_trusted_orgs", "refusal",
           "write_trusted_orgs"]

log = logging.getLogger("lightbox.trust")
_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class TrustError(ValueError):
    """The trusted organisations file is malformed."""


def load_trusted_orgs(path: Path) -> dict[str, bytes]:
    """Read the trusted organisations file; a missing file trusts nobody (with a warning)."""
    try:
        return read_trusted_orgs(path)
    except FileNotFoundError:
        log.warning("no trusted organisations file: identity routes will refuse every "
                    "certificate", extra={"path": str(path)})
        return {}


def read_trusted_orgs(path: Path) -> dict[str, bytes]:
    """The organisations of a trusted-organisations file, or of the ``<org_id>.pub.json``
    that IT's ``org init`` writes (the same format); FileNotFoundError when it is missing."""
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise TrustError(f"{path}: not valid JSON") from exc
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TrustError(f"{path}: {exc.strerror}") from exc
    if isinstance(raw, dict) and "sealed_seed" in raw:
        # `lightbox-admin org init`'s keyfile (clients/admin/orgkey.py) given by mistake: say
        # so, and which file to give instead; nothing of the file is repeated but its org id.
        org_id = raw.get("org_id")
        public = (f"{org_id}.pub.json" if isinstance(org_id, str) and _ORG_ID.match(org_id)
                  else "the .pub.json file")
        raise TrustError(f"{path} is the organisation's private key, which must never be "
                         f"copied to the relay: give the relay {public}, written next to it "
                         "by `lightbox-admin org init`, instead (and delete this copy)")
    orgs = raw.get("orgs") if isinstance(raw, dict) else None
    if not isinstance(orgs, dict):
        raise TrustError(f'{path}: expected {{"orgs": {{org_id: key}}}}')
    out: dict[str, bytes] = {}
    for org_id, key in orgs.items():
        if not isinstance(org_id, str) or not _ORG_ID.match(org_id):
            raise TrustError(f"{path}: invalid organisation id {org_id!r}")
        try:
            out[org_id] = b64url_decode(key, length=32)
        except DecodeError as exc:
            raise TrustError(f"{path}: key of {org_id!r} is not a b64url 32-byte key") from exc
    return out


def write_trusted_orgs(path: Path, orgs: Mapping[str, bytes]) -> None:
    """Replace the trusted organisations file atomically (world-readable: public keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    body = {"orgs": {k: b64url_encode(v) for k, v in sorted(orgs.items())}}
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    tmp.replace(path)


class Trust:
    """The pinned organisation keys and a per-process cache of their revocation lists."""

    def __init__(self, orgs: Mapping[str, bytes]) -> None:
        self.orgs: dict[str, bytes] = dict(orgs)
        self._parsed: dict[str, tuple[int, str, RevocationList]] = {}

    @classmethod
    def from_file(cls, path: Path) -> Trust:
        return cls(load_trusted_orgs(path))

    def verify_list(self, token: str) -> RevocationList:
        """Verify a list under its organisation's pinned key (VerificationError otherwise)."""
        return verify_revocation_list(token, trusted_orgs=self.orgs)

    async def revocations(self, conn: asyncpg.Connection) -> RevocationSet:
        """The newest stored list of every trusted organisation, as a RevocationSet."""
        rows = await conn.fetch("SELECT org_id, number FROM revocation_lists")
        lists = []
        for row in rows:
            org_id, number = row["org_id"], int(row["number"])
            if org_id not in self.orgs:
                continue
            cached = self._parsed.get(org_id)
            if cached is None or cached[0] != number:
                text = await conn.fetchval(
                    "SELECT list FROM revocation_lists WHERE org_id = $1", org_id)
                if text is None:
                    continue
                parsed = self.verify_list(text)
                cached = (parsed.number, text, parsed)
                self._parsed[org_id] = cached
            lists.append(cached[2])
        return RevocationSet(lists)


def refusal(exc: ProtocolError, what: str) -> RelayError:
    """A protocol verification failure as a domain error: its code, a generic detail (the
    precise reason goes to the log only, STYLE.md)."""
    log.info("verification refused", extra={"what": what, "reason": str(exc)})
    return InvalidInput(exc.code, f"{what} did not verify")
