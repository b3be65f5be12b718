"""The phone tests' relay and app (tests/phone/phone_world.py): ``phone`` is the world and the
app's origin, made with the relay settings a module's ``phone_settings`` names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.identity_world import World
from tests.phone.phone_world import phone_world


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    """The keyword arguments of :func:`phone_world`; a module overrides it for its own."""
    return {}


@pytest.fixture
async def phone(db_dsn: str, tmp_path: Path, phone_settings: dict[str, Any]
                ) -> AsyncIterator[tuple[World, str]]:
    async with phone_world(db_dsn, tmp_path, **phone_settings) as found:
        yield found
