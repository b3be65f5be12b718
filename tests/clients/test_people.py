"""Naming colleagues by login wherever a command takes a person (clients/sdk/people.py), against
a real relay: ``lightbox send --to user:LOGIN``, ``consent capture --user LOGIN`` (and the
patient's copy names everyone by name), ``keys claim LOGIN``; the directory's exact login
lookup (``GET /v1/directory?login=``) and its bad input; unknown and ambiguous names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from clients.sdk.keystore import KeyStore
from protocol.keys import CHEAP_PROFILE
from tests.clinician_world import cli_world, enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import xray_png
from tests.identity_world import PASSWORD, World

UUID_PREFIX = re.compile(r"\b[0-9a-f]{8}\b")


world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def _people(world: World, tmp_path: Path) -> dict[str, str]:
    """An intern, a radiologist Rita Ray and two Dr Bones (for ambiguity); returns user ids."""
    home = tmp_path / "home"
    ids = {}
    for login, name, roles in (("ivy.intern", "Dr Ivy Intern", ("intern",)),
                               ("rita.ray", "Dr Rita Ray", ("radiologist",)),
                               ("ada.bone", "Dr Ada Bone", ("orthopaedics_oncall",)),
                               ("bob.bone", "Dr Bob Bone", ("orthopaedics_oncall",))):
        person = await enrol_clinician(world, tmp_path, login, roles=roles, display_name=name,
                                       vault_dir=home / login)
        person.vault.lock()
        ids[login] = person.user_id
    return ids


def _pdf_text(path: Path) -> str:
    assert shutil.which("pdftotext"), "pdftotext missing: make system-deps"
    out = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True,
                         timeout=60).stdout.decode()
    return " ".join(out.split())


async def test_send_to_user_login_reaches_that_colleague(world: World, tmp_path: Path) -> None:
    await _people(world, tmp_path)
    rc, out, err = await lightbox("--profile", "ivy.intern", "send", "--to", "user:rita.ray",
                                  "Could you look at bed 4's film?")
    assert rc == 0, out + err
    assert "sent: message" in out
    rc, out, err = await lightbox("--profile", "rita.ray", "inbox")
    assert rc == 0, err
    assert "Dr Ivy Intern" in out and "bed 4's film" in out and "1 unread message\n" in out
    rc, out, _ = await lightbox("--profile", "ada.bone", "inbox")
    assert "0 unread messages" in out


async def test_unknown_and_ambiguous_colleagues_are_named_in_the_error(
        world: World, tmp_path: Path) -> None:
    await _people(world, tmp_path)
    send = ["--profile", "ivy.intern", "send", "hello"]
    rc, out, err = await lightbox(*send, "--to", "user:nobody.here")
    assert rc == 1 and "sent:" not in out
    assert "error: not_found: no colleague with login 'nobody.here'" in err
    # A part of a login is nobody's: refused, naming the logins it is part of.
    rc, out, err = await lightbox(*send, "--to", "user:Bone")
    assert rc == 1 and "error: not_found: no colleague with login 'Bone' who can receive " \
        "messages (did you mean user:ada.bone or user:bob.bone?)" in err
    # The whole of one person's name is enough (a title aside); so is a user id.
    rc, out, err = await lightbox(*send, "--to", "user:Rita Ray")
    assert rc == 0, err


async def test_consent_capture_takes_logins_and_the_patients_copy_names_people(
        world: World, tmp_path: Path) -> None:
    ids = await _people(world, tmp_path)
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    token, pdf = tmp_path / "consent.jws", tmp_path / "patient.pdf"
    rc, out, err = await lightbox(
        "--profile", "ivy.intern", "consent", "capture", "--image", str(film), "--purpose",
        "direct_care", "--user", "rita.ray", "--user", "ada.bone", "--role",
        "orthopaedics_oncall", "--decision", "agreed", "--statements-shown", "--yes",
        "--token-out", str(token), "--pdf", str(pdf), "--patient-label", "Jane Doe")
    assert rc == 0, out + err
    from protocol.consent import peek_consent_token_unverified

    claims = peek_consent_token_unverified(token.read_text().strip())
    assert claims.recipients.users == [ids["rita.ray"], ids["ada.bone"]]
    text = _pdf_text(pdf)
    assert "by Dr Ivy Intern (intern)" in text
    assert "Named clinicians: Dr Rita Ray (radiologist), Dr Ada Bone (orthopaedics oncall)" \
        in text
    fragments = {i[:8] for i in ids.values()} | {claims.iss[:8]}
    assert not fragments & set(UUID_PREFIX.findall(text)), "an id fragment in the patient's copy"
    # `consent pdf` on the clinician's profile names them the same way.
    again = tmp_path / "again.pdf"
    rc, out, err = await lightbox("--profile", "ivy.intern", "consent", "pdf", str(token),
                                  "--out", str(again))
    assert rc == 0, err
    text = _pdf_text(again)
    assert "by Dr Ivy Intern (intern)" in text and "Dr Rita Ray (radiologist)" in text
    # An unknown login is the real cause, not "not a valid consent token"; nothing signed.
    rc, out, err = await lightbox(
        "--profile", "ivy.intern", "consent", "capture", "--image", str(film), "--user",
        "rita.rey", "--statements-shown", "--yes", "--token-out", str(tmp_path / "no.jws"))
    assert rc == 1 and "no colleague with login 'rita.rey'" in err
    assert "consent_invalid" not in err and not (tmp_path / "no.jws").exists()


async def test_keys_claim_takes_a_login(world: World, tmp_path: Path) -> None:
    await _people(world, tmp_path)
    # `keys claim` runs on the key store `lightbox enroll` writes: the same device state.
    kim = await enrol_clinician(world, tmp_path, "kim.keys", display_name="Dr Kim Keys")
    KeyStore.for_profile("kim").create(kim.vault.state, PASSWORD, profile=CHEAP_PROFILE)
    rc, out, err = await lightbox("--profile", "kim", "keys", "claim", "rita.ray")
    assert rc == 0, err
    assert "1 device claimed" in out
    rc, out, err = await lightbox("--profile", "kim", "keys", "claim", "nobody.here")
    assert rc == 1 and "no colleague with login 'nobody.here'" in err


async def test_directory_exact_login_lookup_and_its_bad_input(world: World,
                                                              tmp_path: Path) -> None:
    alice = await world.onboard(world.org.user("alice.ash", display_name="Dr Alice Ash"))
    await world.onboard(world.org.user("alice.ashby", display_name="Dr Alice Ashby"))
    r = await world.call(alice, "GET", "/v1/directory?login=alice.ash")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["users"]
    assert (entry["login"], entry["display_name"]) == ("alice.ash", "Dr Alice Ash")
    r = await world.call(alice, "GET", "/v1/directory?login=nobody")
    assert r.status_code == 200 and r.json()["users"] == []
    r = await world.call(alice, "GET", "/v1/directory?q=alice.ash")  # a search: both
    assert {u["login"] for u in r.json()["users"]} == {"alice.ash", "alice.ashby"}
    for bad in ("Alice.Ash", "a", "x" * 65, "alice ash", "-alice", ""):
        r = await world.call(alice, "GET", "/v1/directory", params={"login": bad})
        assert (r.status_code, r.json()["code"]) == (422, "validation_failed"), bad
    r = await world.call(alice, "GET", "/v1/directory?login=alice.ash&q=alice")
    assert (r.status_code, r.json()["code"]) == (422, "validation_failed")
    r = await world.http.get("/v1/directory?login=alice.ash")  # no device credentials
    assert r.status_code == 401


async def test_a_suspended_colleague_is_named_as_suspended_not_the_user(
        world: World, tmp_path: Path) -> None:
    """IT suspends Rita (a signed revocation list). Named by user id, the relay says she is
    suspended, as it says to anyone holding her id, and the sentence is about her, never "your
    account is suspended". Named by login she is no longer in the directory, which shows
    active colleagues only (clients/sdk/people.py): the same sentence as for a login nobody
    has, nothing said of her standing."""
    ids = await _people(world, tmp_path)
    r = await world.revoke(world.org, 1, users=(ids["rita.ray"],))
    assert r.status_code in (200, 201), r.text
    send = ["--profile", "ivy.intern", "send", "hello"]
    rc, out, err = await lightbox(*send, "--to", f"user:{ids['rita.ray']}")
    assert (rc, "sent:" in out) == (1, False), out + err
    assert err.strip() == (f"error: user_suspended: the colleague with user id {ids['rita.ray']} "
                           "is suspended by your organisation; nothing was sent to them"), err
    rc, out, err = await lightbox(*send, "--to", "user:rita.ray")
    assert rc == 1
    assert err.strip() == ("error: not_found: no colleague with login 'rita.ray' who can "
                           "receive messages: check its spelling (lightbox lookup NAME "
                           "searches the directory); if it is right, they may not have "
                           "enrolled a device yet"), err
