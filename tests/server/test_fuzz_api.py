"""schemathesis ``--checks all`` against a real relay, anonymous and as an enrolled device and
IT (through tests/signing_proxy.py): no 5xx, no answer that breaks the OpenAPI document, no
valid request refused and no invalid one accepted, beyond the refusals the document cannot
express (listed with their reasons in schemathesis.toml).

The suite runs a short, bounded pass; ``make fuzz-api`` a long one (``FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, seconds
from tests.identity_world import World, identity_world
from tests.signing_proxy import SIGN_ME, signing_proxy

# The suite's pass: the fuzzing phase, a few examples per operation (about a minute). `make
# fuzz-api`: every phase (examples, coverage, fuzzing, stateful), FUZZ_EXAMPLES each.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2"))
PHASES = os.environ.get("FUZZ_PHASES", "fuzzing")
SEED = os.environ.get("FUZZ_SEED", "20261203")
LIMIT = 900 if PHASES == "fuzzing" else 3600  # seconds for the whole test


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    # Tokens that outlive a long run; the lockouts and rate limits stay as they are.
    async with identity_world(db_dsn, tmp_path, access_token_ttl=7200,
                              admin_token_ttl=7200) as w:
        yield w


async def schemathesis(base_url: str, report: Path, *args: str) -> tuple[int, str]:
    """Run the CLI (as a user would) against ``base_url``; its exit code and output."""
    report.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file", str(ROOT / "schemathesis.toml"), "run", *args,
        f"{base_url}/openapi.json", "--checks", "all",
        "--exclude-checks", "ensure_resource_availability",  # why: schemathesis.toml
        "--request-timeout", "60", "--phases", PHASES,
        "--max-examples", str(EXAMPLES),
        "--seed", SEED, "--workers", "1", "--no-color", "--report", "junit",
        "--report-dir", str(report),
        cwd=report,  # its caches (.schemathesis, .hypothesis) stay out of the repository
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), seconds(LIMIT / 2))
    assert proc.returncode is not None
    text = out.decode(errors="replace")
    (report / "output.txt").write_text(text)
    kept = ROOT / "test-artefacts" / "fuzz"  # the last run's output, for people to read
    kept.mkdir(parents=True, exist_ok=True)
    (kept / f"{report.name}.txt").write_text(text)
    return proc.returncode, text


@pytest.mark.timeout(LIMIT)
async def test_schemathesis_finds_no_5xx_and_no_mismatch_anonymous_or_signed(
        world: World, tmp_path: Path) -> None:
    device = await world.onboard(world.org.user("fuzz.tester"))
    anonymous = await schemathesis(world.relay.base_url, tmp_path / "anonymous")
    with signing_proxy(world.relay.base_url, device, world.admin_token) as proxy:
        signed = await schemathesis(proxy, tmp_path / "signed",
                                    "--header", f"Authorization: Bearer {SIGN_ME}")
    for code, out in (anonymous, signed):
        assert code == 0, out[-6000:]
