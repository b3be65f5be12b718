"""Fixtures the relay's module tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.db import Database
from tests.identity_world import World


@pytest.fixture
async def relay_db(world: World) -> AsyncIterator[Database]:
    """A pool on the relay's database, on the test's own event loop, for calling a service
    directly beside the running relay (the test module's ``world`` fixture)."""
    db = Database(world.dsn, min_size=1, max_size=2)
    await db.open()
    try:
        yield db
    finally:
        await db.close()
