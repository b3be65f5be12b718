"""The browser tests' Chromium (Debian's, driven through Playwright): one browser per test
process, and a new context for each test's pages.

A context is Chromium's own isolation unit (an incognito profile): its cookies, local and
session storage, IndexedDB, service workers, HTTP cache and permissions are its own and are
thrown away when it closes, so a test never sees what another left. Starting Playwright's
driver and a Chromium took 0.8-1.7 s a test, and about 0.9 s of CPU for the driver alone; a
context takes 0.2-0.3 s (measured on 2026-12-07), in about 180 browser tests.

A browser with launch arguments of its own (a fake camera fed from a test's file) is started
for that test alone, as is one in an event loop other than the one the shared browser runs in.
A shared browser that has gone away (crashed, or killed by a test) is started again."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

# Debian's Chromium as its headless shell (package chromium-headless-shell): the same Blink
# and V8 as the chromium package, of the same version, without the desktop browser around them
# that Chromium's new headless mode starts; a fifth less CPU a browser test (measured on
# 2026-12-07). LIGHTBOX_TEST_CHROMIUM names another build, /usr/bin/chromium say.
CHROMIUM = os.environ.get("LIGHTBOX_TEST_CHROMIUM", "/usr/bin/chromium-headless-shell")
# The whole browser, for what its headless shell leaves out: the PDF viewer, say.
FULL_CHROMIUM = "/usr/bin/chromium"
MISSING = ("Chromium's headless shell is missing: install it with `bash .ci/system-deps "
           "chromium-headless-shell` (Debian package; never `playwright install`)")
MISSING_FULL = ("Chromium is missing: install it with `bash .ci/system-deps chromium` (Debian "
                "package; never `playwright install`)")
ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run")


def _async_playwright(program: str = CHROMIUM) -> Any:
    """Playwright's ``async_playwright``, once ``program`` (the browser) is there."""
    if not os.path.exists(program):
        pytest.fail(MISSING_FULL if program == FULL_CHROMIUM else MISSING, pytrace=False)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: .venv/bin/pip install playwright "
                    "(the Python package only; never `playwright install`)", pytrace=False)
    return async_playwright


class _Shared:
    """The process's shared browser: its Playwright, its browser, and the loop they run in."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.playwright: Any = None
        self.browser: Any = None

    async def get(self) -> Any | None:
        """The shared browser, started if need be; None in an event loop other than its own."""
        loop = asyncio.get_running_loop()
        if self.loop is not None and self.loop is not loop:
            if not self.loop.is_closed():
                return None
            self.loop = self.playwright = self.browser = None  # its loop is gone, and it too
        if self.browser is not None and self.browser.is_connected():
            return self.browser
        await self.close()
        self.playwright = await _async_playwright()().start()
        self.loop = loop
        self.browser = await self.playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=list(ARGS))
        return self.browser

    async def close(self) -> None:
        if self.loop is not asyncio.get_running_loop():
            return
        browser, playwright = self.browser, self.playwright
        self.loop = self.playwright = self.browser = None
        with contextlib.suppress(Exception):
            if browser is not None:
                await browser.close()
        with contextlib.suppress(Exception):
            if playwright is not None:
                await playwright.stop()


SHARED = _Shared()


@contextlib.asynccontextmanager
async def browser_context(extra_args: Sequence[str] = (), *, full: bool = False,
                          **options: Any) -> AsyncIterator[Any]:
    """A new browser context with ``options`` (viewport, locale, permissions...), closed after:
    in the shared browser, or with ``extra_args`` in a browser of its own; ``full``: in the
    whole Chromium (:data:`FULL_CHROMIUM`), of its own too."""
    browser = None if extra_args or full else await SHARED.get()
    if browser is not None:
        context = await browser.new_context(**options)
        try:
            yield context
        finally:
            with contextlib.suppress(Exception):  # a browser a test took down
                await context.close()
        return
    program = FULL_CHROMIUM if full else CHROMIUM
    async with _async_playwright(program)() as pw:
        own = await pw.chromium.launch(executable_path=program, headless=True,
                                       args=[*ARGS, *extra_args])
        try:
            yield await own.new_context(**options)
        finally:
            await own.close()
