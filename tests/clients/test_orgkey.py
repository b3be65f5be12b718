"""clients/admin/orgkey.py: the sealed organisation keyfile and its public file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from clients.admin.orgkey import (
    OrgKeyError,
    create_org_keyfile,
    open_org_keyfile,
    read_public_key,
)
from protocol.canonical import b64url_encode
from protocol.keys import CHEAP_PROFILE
from server.trust import TrustError, read_trusted_orgs

PASS = "a long organisation passphrase"


def test_create_and_open(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    key = create_org_keyfile(path, "st-elsewhere", PASS, profile=CHEAP_PROFILE)
    org_id, opened = open_org_keyfile(path, PASS)
    assert org_id == "st-elsewhere"
    assert opened.public == key.public
    assert opened.sign(b"x") == key.sign(b"x")
    assert read_public_key(path) == ("st-elsewhere", key.public)


def test_keyfile_is_0600_and_holds_no_plain_seed(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    key = create_org_keyfile(path, "st-elsewhere", PASS, profile=CHEAP_PROFILE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    assert key.seed.reveal() not in text
    assert b64url_encode(key.seed.reveal()).encode() not in text
    assert set(json.loads(text)) == {"org_id", "public_key", "sealed_seed"}


def test_public_file_is_in_the_trusted_orgs_format(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    key = create_org_keyfile(path, "st-elsewhere", PASS, profile=CHEAP_PROFILE)
    pub = tmp_path / "st-elsewhere.pub.json"
    assert json.loads(pub.read_text()) == {"orgs": {"st-elsewhere": b64url_encode(key.public)}}
    assert read_trusted_orgs(pub) == {"st-elsewhere": key.public}


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    create_org_keyfile(path, "st-elsewhere", PASS, profile=CHEAP_PROFILE)
    with pytest.raises(OrgKeyError, match="wrong passphrase"):
        open_org_keyfile(path, "not it")


def test_refuses_to_overwrite_and_bad_org_ids(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    create_org_keyfile(path, "st-elsewhere", PASS, profile=CHEAP_PROFILE)
    with pytest.raises(OrgKeyError, match="exists"):
        create_org_keyfile(path, "st-elsewhere", PASS, profile=CHEAP_PROFILE)
    with pytest.raises(OrgKeyError, match="organisation ids"):
        create_org_keyfile(tmp_path / "b.key", "Bad Org", PASS, profile=CHEAP_PROFILE)


def test_a_swapped_public_key_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    create_org_keyfile(path, "st-elsewhere", PASS, profile=CHEAP_PROFILE)
    body = json.loads(path.read_text())
    body["public_key"] = b64url_encode(b"\x05" * 32)
    path.write_text(json.dumps(body))
    with pytest.raises(OrgKeyError, match="does not match"):
        open_org_keyfile(path, PASS)


def test_malformed_public_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.pub.json"
    bad.write_text('{"orgs": {"ok": "short"}}')
    with pytest.raises(TrustError, match="not a b64url 32-byte key"):
        read_trusted_orgs(bad)
