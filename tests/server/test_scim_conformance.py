"""scim2-tester (written by others to check SCIM servers against RFC 7643/7644) against the real
relay's ``/scim/v2``: discovery, then create, read, query with attributes, search, replace,
PATCH add/remove/replace of every attribute and delete, for Users and Groups. Every check must
succeed; the names of what ran are printed for the record."""

from __future__ import annotations

import asyncio
from pathlib import Path

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from tests.scim_world import scim_world


def _run_checks(base_url: str, token: str) -> list[tuple[str, str, str, str]]:
    with Client(base_url=base_url, headers={"authorization": f"Bearer {token}"}) as http:
        client = SyncSCIMClient(http)
        results = check_server(client)
    return [(r.resource_type or "-", r.title or "-", r.status.name, r.reason or "")
            for r in results]


async def test_scim2_tester_finds_no_failure(db_dsn: str, tmp_path: Path) -> None:
    async with scim_world(db_dsn, tmp_path) as sw:
        results = await asyncio.to_thread(_run_checks, sw.world.relay.base_url + "/scim/v2",
                                          sw.token)
    for row in results:
        print(" | ".join(row))
    failed = [r for r in results if r[2] not in {Status.SUCCESS.name}]
    assert not failed, failed
    assert len(results) > 20
