"""A ``lightbox`` command whose standard output is closed by its reader (``lightbox threads |
head -3``) ends quietly, as a program ended by SIGPIPE does (exit status 141), never with
"error: Broken pipe" nor Python's "Exception ignored" (clients/sdk/failures.py
``run_command``). A real relay and a real ``lightbox`` process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.clinician_world import cli_world, enrol_clinician
from tests.helpers import ROOT, seconds
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def test_threads_into_a_pipe_its_reader_closed_ends_quietly(
        world: World, tmp_path: Path) -> None:
    ada = await enrol_clinician(world, tmp_path, "ada", vault_dir=tmp_path / "home" / "ada")
    bea = await enrol_clinician(world, tmp_path, "bea")
    await ada.client.start(wait_connected=seconds(10))
    try:
        for n in range(3):
            thread = await ada.client.create_thread(users=[bea.user_id])
            await ada.client.send_text(thread.thread_id, f"note {n}")
    finally:
        await ada.client.close()
    ada.vault.lock()
    read, write = os.pipe()
    os.close(read)  # the reader has gone: `| head` has read what it wanted
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.clinician.cli", "--profile", "ada", "threads",
            cwd=ROOT, env=dict(os.environ), stdout=write, stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(write)
    async with asyncio.timeout(seconds(60)):
        _, err = await process.communicate()
    assert err.decode() == ""
    assert process.returncode == 141
