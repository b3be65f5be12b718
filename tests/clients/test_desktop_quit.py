"""Ctrl-C (or SIGTERM) in the terminal of ``lightbox desktop`` quits and locks, also while its
page is open and unlocked (docs/USER_GUIDE.md "Specialists: the desktop client", "Starting
it"): the process ends within seconds, and the page clears itself and says *Lightbox has
closed* at once, not the next time it asks the desktop for something. The page's event stream
used to keep the local server waiting for it to end: the process went on, the vault unlocked
and the consults on screen, until the page was clicked or closed.

Real relay, the real ``lightbox desktop --no-browser`` as a process of its own, its page in a
real Chromium (Playwright); screenshots go to test-artefacts/desktop-quit/.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from pathlib import Path

import pytest

from tests.clients.test_desktop import browser_page
from tests.clinician_world import cli_world, intern_and_specialist, lightbox_process
from tests.helpers import ROOT, seconds
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

ORTHO = "orthopaedics_oncall"
SHOTS = ROOT / "test-artefacts" / "desktop-quit"
SUBJECT = "Wrist, bed 4"
TEXT = "Displaced distal radius fracture? Please review the film."
GONE = "Lightbox has closed: open it again."


async def _launch_url(process: asyncio.subprocess.Process) -> str:
    """The address ``lightbox desktop`` prints once it listens."""
    assert process.stdout is not None
    async with asyncio.timeout(seconds(60)):
        while line := (await process.stdout.readline()).decode():
            if found := re.match(r"Lightbox desktop: (\S+)", line):
                return found.group(1)
    raise AssertionError("lightbox desktop ended without printing its address")


@pytest.mark.parametrize(("name", "signals"), [
    pytest.param(name, signals, id=name) for name, signals in [
        ("ctrl-c", (signal.SIGINT,)),
        ("ctrl-c-twice", (signal.SIGINT, signal.SIGINT)),
        ("sigterm", (signal.SIGTERM,)),
    ]
])
async def test_a_signal_to_the_desktop_locks_clears_the_open_page_and_ends_the_process(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
        signals: tuple[signal.Signals, ...]) -> None:
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    desktop = await lightbox_process("--profile", "ortho", "desktop", "--no-browser")
    try:
        url = await _launch_url(desktop)
        await intern.client.start(wait_connected=seconds(10))
        thread = await intern.client.create_thread(roles=[ORTHO])
        await intern.client.send_text(thread.thread_id, TEXT, subject=SUBJECT)
        async with browser_page() as (page, problems):
            await page.goto(url)
            await page.fill("#password", PASSWORD)
            await page.press("#password", "Enter")
            await page.locator("#conn", has_text="connected").wait_for()
            await page.locator(".thread-item", has_text=SUBJECT).click()
            await page.locator(".message", has_text=TEXT).wait_for()
            # The consult read: no refresh of the list is still on its way.
            await page.locator(".thread-item.selected .badge").wait_for(state="detached")
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=SHOTS / f"01-{name}-before.png")

            for i, sig in enumerate(signals):  # a second Ctrl-C soon after, if it still runs
                if i:
                    await asyncio.sleep(0.05)  # two at once would be taken as one
                with contextlib.suppress(ProcessLookupError):
                    desktop.send_signal(sig)
            # Generous bounds, for a loaded machine: the fault was minutes, or for ever.
            async with asyncio.timeout(seconds(10)):
                await desktop.wait()
            await page.locator("#gone", has_text="Lightbox has closed").wait_for(
                timeout=seconds(10) * 1000)
            await page.screenshot(path=SHOTS / f"02-{name}-closed.png")
            assert await page.locator("#conn").inner_text() == GONE
            assert await page.locator("#app").is_hidden()
            assert await page.locator("#inbox li, .thread-item, .message").count() == 0
            content = await page.content()
            assert SUBJECT not in content and TEXT not in content
            # The stream ended, then the page found nothing answering (api() says so itself).
            assert not [p for p in problems if "ERR_CONNECTION_REFUSED" not in p], problems
    finally:
        if desktop.returncode is None:
            desktop.kill()
            await desktop.wait()
        await intern.client.close()
    assert desktop.stderr is not None
    err = (await desktop.stderr.read()).decode()
    # No traceback, also after a second Ctrl-C; exit status 0. A second Ctrl-C that comes once
    # the desktop has shut down, as Python exits, may end it as it does any lightbox command.
    if len(signals) == 1:
        assert (desktop.returncode, err) == (0, ""), err
    else:
        assert (desktop.returncode, err) in {(0, ""), (130, "stopped\n"), (-signal.SIGINT, "")}, err
