"""``lightbox-gateway``'s log when it loses the relay and has it again, and when a service
manager stops it (docs/USER_GUIDE.md, "The record gateway" §4): run as IT runs it, against a
real relay stopped and started again on the same port three times, then stopped with SIGTERM.
Each loss is one line with its reason, each return one line, the stop one line and exit
status 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from tests.clients.test_gateway import GATEWAY_PASSWORD, Process, _enrol_gateway, _program
from tests.helpers import make_settings, running_relay, seconds
from tests.identity_world import World

PREFIX = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} INFO lightbox\.gateway: "
LOST = (PREFIX + r"relay connection lost \(closed by the relay: 1001 going_away\); "
        r"reconnecting, and the relay holds deliveries meanwhile$")
BACK = (PREFIX + r"relay connection back after \d+ s: deliveries held at the relay meanwhile "
        r"come now$")
STOPPED = (PREFIX + r"stopped on SIGTERM: deliveries not yet filed stay at the relay for the "
           r"next start$")


async def _said(gateway: Process, pattern: str, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` lines of the log match ``pattern``."""
    try:
        async with asyncio.timeout(seconds(timeout)):
            while sum(bool(re.search(pattern, line)) for line in gateway.lines) < count:
                assert gateway.proc.returncode is None, gateway.log
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not {count} times {pattern!r}:\n{gateway.log}") from None


async def test_the_gateway_logs_each_lost_and_regained_relay_and_its_sigterm_stop(
        world: World, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTBOX_")}
    env |= {"LIGHTBOX_HOME": str(tmp_path / "home"), "LIGHTBOX_PASSWORD": GATEWAY_PASSWORD,
            "LIGHTBOX_INSECURE_FAST_KDF": "1", "LOG_LEVEL": "INFO",
            "LIGHTBOX_PACS_URL": "http://127.0.0.1:9/dicom-web"}
    await _enrol_gateway(world, env)
    gateway = await _program("clients.gateway.cli", env=env)
    port = int(world.relay.base_url.rsplit(":", 1)[1])
    settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json", port=port)
    try:
        await gateway.line(r"record gateway record\.gateway \(device .*\) started")
        await asyncio.sleep(1)  # connected (the first connection is not told)
        # Stopped off this loop, as in tests/clients/test_watch_relay_down.py.
        await asyncio.to_thread(world.relay.stop)
        for cycle in (1, 2, 3):
            await _said(gateway, LOST, cycle)
            async with running_relay(world.dsn, settings, clock=world.clock):
                await _said(gateway, BACK, cycle)
        await _said(gateway, LOST, 4)
        async with running_relay(world.dsn, settings, clock=world.clock):
            await _said(gateway, BACK, 4)
            gateway.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(seconds(30)):
                rc = await gateway.proc.wait()
    finally:
        await gateway.stop()
    told = [line.rstrip("\n") for line in gateway.lines if "started" not in line]
    assert rc == 0, gateway.log
    assert "Traceback" not in gateway.log, gateway.log
    # In order: lost, back, four times, then the stop; nothing else.
    assert len(told) == 9, gateway.log
    for i, line in enumerate(told[:8]):
        assert re.match(LOST if i % 2 == 0 else BACK, line), line
    assert re.match(STOPPED, told[8]), told[8]
