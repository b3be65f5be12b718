"""An image file over the limit of 40 MiB, said as 41.9 MB (clients/clinician/sending.py
``read_image``), given to ``lightbox send --image`` or ``lightbox consent capture --image``,
against a real relay: one sentence saying what to send instead, before the password is asked
or the relay is called, and nothing is registered, uploaded or made."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.clinician.shell import MAX_IMAGE_FILE
from tests.clinician_world import cli_world, enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.identity_world import World

ORTHO = "orthopaedics_oncall"
ADVICE = ("big.jpg is 42.0 MB and Lightbox takes an image of up to 41.9 MB: take the photo "
          "again at the phone's normal size, or export just the one view as JPEG or PNG.")

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


def _oversize(tmp_path: Path) -> Path:
    """A sparse file of 42,000,000 bytes, over the limit of 40 MiB (41,943,040 bytes): its
    size is all the check reads; sizes are said in decimal MB, as file managers show them."""
    path = tmp_path / "big.jpg"
    with path.open("wb") as f:
        f.truncate(42_000_000)
    assert path.stat().st_size > MAX_IMAGE_FILE
    return path


async def _relay_rows(world: World) -> tuple[int, int, int]:
    conn = await world.db()
    try:
        return (await conn.fetchval("SELECT count(*) FROM threads"),
                await conn.fetchval("SELECT count(*) FROM consents"),
                await conn.fetchval("SELECT count(*) FROM attachments"))
    finally:
        await conn.close()


async def test_an_image_over_the_limit_is_refused_with_what_to_send_instead_and_nothing_sent(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for login, roles in (("intern", ("intern",)), ("ortho", (ORTHO,))):
        person = await enrol_clinician(world, tmp_path, login, roles=roles,
                                       vault_dir=tmp_path / "home" / login)
        person.vault.lock()
    big = _oversize(tmp_path)
    monkeypatch.delenv("LIGHTBOX_PASSWORD")  # refused before the password would be asked for
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", f"role:{ORTHO}",
                                  "--image", str(big), "Fracture?")
    assert (rc, out) == (1, "")
    assert err == f"error: the image cannot be sent: {ADVICE} Nothing was sent.\n"

    rc, out, err = await lightbox(
        "--profile", "intern", "consent", "capture", "--image", str(big), "--purpose",
        "direct_care", "--role", ORTHO, "--basis", "written", "--decision", "agreed",
        "--statements-shown", "--yes")
    assert (rc, out) == (1, "")
    assert err == f"error: validation_failed: {ADVICE} No consent was recorded.\n"
    assert await _relay_rows(world) == (0, 0, 0)
