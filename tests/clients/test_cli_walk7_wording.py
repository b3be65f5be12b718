"""What ``lightbox`` says when it stops, in words a clinician reads (docs/USER_GUIDE.md): a
login of a colleague who has not enrolled a device yet, a file that is not a photo, and an
enrolment the relay refuses, which names the code without HTTP and leaves no empty profile
folder behind. The real CLI against a real relay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.clinician_world import cli_world, enrol_clinician, intern_and_specialist
from tests.clinician_world import run_cli as lightbox
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

ORTHO = "orthopaedics_oncall"


async def test_a_login_provisioned_but_never_enrolled_is_refused_saying_they_may_not_have_enrolled(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    intern.vault.lock()
    (result,) = await world.provision(world.org.user("zed.zee", display_name="Zed Zee"))
    assert result["ok"], result
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", "user:zed.zee", "hi")
    assert (rc, out) == (1, "")
    assert err == ("error: not_found: no colleague with login 'zed.zee' who can receive "
                   "messages: check its spelling (lightbox lookup NAME searches the "
                   "directory); if it is right, they may not have enrolled a device yet\n")


async def test_a_file_that_is_not_a_photo_is_one_sentence_saying_what_was_not_done(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    intern.vault.lock()
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(os.urandom(4096))
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", f"role:{ORTHO}",
                                  "--image", str(noise), "Fracture?")
    assert (rc, out) == (1, "")
    assert err == ("error: the image cannot be sent: this is not a photo Lightbox can read "
                   "(JPEG, PNG or WebP). Nothing was sent.\n")
    rc, out, err = await lightbox(
        "--profile", "intern", "consent", "capture", "--image", str(noise), "--purpose",
        "direct_care", "--role", ORTHO, "--basis", "written", "--decision", "agreed",
        "--statements-shown", "--yes")
    assert (rc, out) == (1, "")
    assert err == (f"error: validation_failed: {noise}: this is not a photo Lightbox can read "
                   "(JPEG, PNG or WebP). No consent was recorded.\n")


async def test_an_enrolment_the_relay_refuses_names_its_code_without_http_and_leaves_no_folder(
        world: World, tmp_path: Path) -> None:
    zoe = await enrol_clinician(world, tmp_path, "zoe.ortho")  # her code is used now
    folder = tmp_path / "home" / "zoe"
    rc, out, err = await lightbox("--profile", "zoe", "enroll", "--server",
                                  world.relay.base_url, "--code", zoe.user.code)
    assert (rc, out) == (1, "")
    assert err.startswith("error: enrolment_code_used: "), err
    assert "HTTP" not in err, err
    assert not folder.exists()
    # A folder that was there before is left as it was.
    folder.mkdir(parents=True)
    rc, out, err = await lightbox("--profile", "zoe", "enroll", "--server",
                                  world.relay.base_url, "--code", zoe.user.code)
    assert rc == 1 and err.startswith("error: enrolment_code_used: "), err
    assert folder.is_dir()
