"""``lightbox send --thread PREFIX`` replies to a consult that reached the user while the
sending process never listed threads (docs/USER_GUIDE.md "Specialists: answering"): the 8
characters ``lightbox watch`` prints name it, the relay being asked for the device's threads
when none this device knows starts so. The real CLI against a real relay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.clinician_world import cli_world, intern_and_specialist
from tests.clinician_world import run_cli as lightbox
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def test_a_reply_by_the_8_characters_watch_prints_goes_without_listing_threads_first(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, "orthopaedics_oncall")
    intern.vault.lock()
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", "user:ortho", "Repro4")
    assert rc == 0, out + err
    (thread,) = re.findall(r"in thread (\S+) \(#1\)", out)
    # The specialist's profile has never listed threads: the prefix is the relay's to know.
    rc, out, err = await lightbox("--profile", "ortho", "send", "--thread", thread[:8],
                                  "reply 1")
    assert (rc, err) == (0, ""), out + err
    assert f"in thread {thread} (#2), to Dr Ada Intern" in out, out
