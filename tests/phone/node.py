"""Running the phone app's TypeScript under Node from the tests.

The protocol core in ``clients/phone/src/protocol`` is bundled by ``clients/phone/build.mjs``
into ``clients/phone/dist-test/*.mjs``; :func:`build` runs it once per session (esbuild takes
well under a second), so a test never runs a stale bundle. Node and the npm packages are
installed by ``make install`` (``npm ci``); when either is missing the tests fail with that
sentence, never skip."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import ROOT

__all__ = ["PHONE", "build", "node", "run_driver"]

PHONE = ROOT / "clients" / "phone"


def node() -> str:
    found = shutil.which("node")
    assert found, "Node.js is not installed: the phone app's tests need node (make install)"
    return found


@functools.cache
def build() -> Path:
    """Build the Node test bundles (and the app) once per session; their folder."""
    assert (PHONE / "node_modules").is_dir(), (
        "clients/phone/node_modules is missing: run make install (npm ci)")
    done = subprocess.run([node(), "build.mjs"], cwd=PHONE, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"the phone build failed:\n{done.stdout}\n{done.stderr}"
    return PHONE / "dist-test"


def run_driver(command: dict[str, Any]) -> dict[str, Any]:
    """Run one command of ``clients/phone/test/driver.ts`` (JSON in, JSON out)."""
    script = build() / "driver.mjs"
    done = subprocess.run([node(), str(script)], input=json.dumps(command), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"driver failed ({done.returncode}):\n{done.stderr}"
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer
