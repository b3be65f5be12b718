"""The relay's trusted organisations (server/trust.py): the file of pinned public keys and its
malformed cases, and the newest revocation list of each trusted organisation read from the
real database, a newer list applied by another process picked up at the next check."""

from __future__ import annotations

import json
import stat
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from protocol.errors import ErrorCode, VerificationError
from server.store import revocations
from server.trust import (
    Trust,
    TrustError,
    load_trusted_orgs,
    read_trusted_orgs,
    refusal,
    write_trusted_orgs,
)
from tests.identity_world import Org


def test_the_file_written_is_the_file_read_world_readable(tmp_path: Path) -> None:
    a, b = Org("st-elsewhere"), Org("county-general")
    path = tmp_path / "keys" / "trusted-orgs.json"
    write_trusted_orgs(path, {a.org_id: a.key.public, b.org_id: b.key.public})
    assert read_trusted_orgs(path) == {a.org_id: a.key.public, b.org_id: b.key.public}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert list(json.loads(path.read_text())["orgs"]) == ["county-general", "st-elsewhere"]


def test_a_missing_file_trusts_nobody(tmp_path: Path) -> None:
    assert load_trusted_orgs(tmp_path / "absent.json") == {}
    with pytest.raises(FileNotFoundError):
        read_trusted_orgs(tmp_path / "absent.json")


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "not valid JSON"),
    ('["st-elsewhere"]', 'expected {"orgs": {org_id: key}}'),
    ('{"orgs": []}', 'expected {"orgs": {org_id: key}}'),
    ('{"orgs": {"St Elsewhere": "AAAA"}}', "invalid organisation id 'St Elsewhere'"),
    ('{"orgs": {"st-elsewhere": "AAAA"}}', "key of 'st-elsewhere' is not a b64url 32-byte key"),
])
def test_a_malformed_file_is_refused_saying_what_is_wrong(tmp_path: Path, text: str,
                                                          says: str) -> None:
    path = tmp_path / "trusted-orgs.json"
    path.write_text(text)
    with pytest.raises(TrustError) as info:
        read_trusted_orgs(path)
    assert str(info.value) == f"{path}: {says}"


async def test_the_newest_list_of_each_trusted_organisation_is_read(db_dsn: str) -> None:
    ours, other = Org("st-elsewhere"), Org("elsewhere-else")
    trust, elsewhere = Trust({ours.org_id: ours.key.public}), Trust({ours.org_id: ours.key.public})
    device = str(uuid.uuid4())
    conn = await asyncpg.connect(db_dsn)
    try:
        assert (await trust.revocations(conn)).number(ours.org_id) is None
        await revocations.put(conn, ours.org_id, 1, ours.revocation_list(1), now=time.time())
        await revocations.put(conn, other.org_id, 9, other.revocation_list(9), now=time.time())
        assert (await trust.revocations(conn)).number(ours.org_id) == 1
        assert (await trust.revocations(conn)).number(other.org_id) is None  # not trusted
        # Another process stores a newer list: this one reads it at its next check.
        await revocations.put(conn, ours.org_id, 2,
                              ours.revocation_list(2, devices=(device,), wipe=True),
                              now=time.time())
        latest = await elsewhere.revocations(conn)
        assert latest.number(ours.org_id) == 2
        assert (await trust.revocations(conn)).number(ours.org_id) == 2
        entry = (await trust.revocations(conn)).device_entry(ours.org_id, device)
        assert entry is not None and entry.wipe
    finally:
        await conn.close()


def test_a_list_signed_by_another_key_does_not_verify() -> None:
    ours = Org("st-elsewhere")
    forged = Org("st-elsewhere")  # same id, another key
    with pytest.raises(VerificationError):
        Trust({ours.org_id: ours.key.public}).verify_list(forged.revocation_list(1))


def test_a_refusal_keeps_the_code_and_hides_the_reason() -> None:
    err = refusal(VerificationError("signature of list 7 by key X", code=ErrorCode.
                                    CERTIFICATE_INVALID), "the revocation list")
    assert (err.code, err.detail) == (ErrorCode.CERTIFICATE_INVALID,
                                      "the revocation list did not verify")
