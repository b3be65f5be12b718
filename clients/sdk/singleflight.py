"""At most one run of an async operation at a time, shared by every caller that arrives while
it runs. The SDK uses it for the access-token refresh: presenting the same refresh token twice
would look like a stolen copy to the relay, which then ends the session (docs/SECURITY.md
"Identity and sessions")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """At most one run of an async operation at a time: callers arriving while it runs wait for
    that run and share its result or its exception. The run is shielded, so a caller that is
    cancelled does not cancel it for the others (a refresh whose answer is lost would leave
    the device holding a rotated-away token)."""

    def __init__(self) -> None:
        self._task: asyncio.Future[T] | None = None

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self._task is None:
            task = asyncio.ensure_future(operation())
            self._task = task
            task.add_done_callback(self._done)
        return await asyncio.shield(self._task)

    def _done(self, task: asyncio.Future[T]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have gone meanwhile
