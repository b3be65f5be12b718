"""Running the phone app's TypeScript under Node from the tests.

The protocol core in ``clients/phone/src/protocol`` is bundled by ``clients/phone/build.mjs``
into ``clients/phone/dist-test/*.mjs``, and the app into ``clients/phone/dist``. :func:`build`
makes sure both are built from the sources as they are now, so a test never runs a stale
bundle, and builds at most once for all of ``make test``'s workers: build.mjs empties ``dist``
before writing it again, so a second build while another worker's browser test served the page
would answer 500 for ``index.html``. The build runs under an exclusive lock, and only when the
digest of its inputs differs from the one the last build left beside it. Node and the npm
packages are installed by ``make install`` (``npm ci``); when either is missing the tests fail
with that sentence, never skip."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import ROOT

__all__ = ["PHONE", "build", "inputs_digest", "node", "run_driver"]

PHONE = ROOT / "clients" / "phone"


def node() -> str:
    found = shutil.which("node")
    assert found, "Node.js is not installed: the phone app's tests need node (make install)"
    return found


# What build.mjs reads: a change to any of them makes the next build() build again.
_INPUTS = ("build.mjs", "package-lock.json", "tsconfig.json", "src", "static", "test")
# Written after a successful build, inside the folder build.mjs empties first, so a build that
# failed half-way leaves no digest and is done again.
_BUILT_FROM = PHONE / "dist-test" / ".built-from.sha256"


def inputs_digest(root: Path = PHONE) -> str:
    """SHA-256 over the build's inputs: each file's path and contents, in sorted order."""
    digest = hashlib.sha256()
    for name in _INPUTS:
        top = root / name
        for path in sorted([top] if top.is_file() else
                           (p for p in top.rglob("*") if p.is_file())):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.cache
def build() -> Path:
    """Build the Node test bundles and the app unless they are built from these sources; the
    test bundles' folder. Once per worker, and at most one build across workers."""
    assert (PHONE / "node_modules").is_dir(), (
        "clients/phone/node_modules is missing: run make install (npm ci)")
    with open(PHONE / "node_modules" / ".tests-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        wanted = inputs_digest()
        if not (_BUILT_FROM.is_file() and _BUILT_FROM.read_text() == wanted
                and (PHONE / "dist" / "index.html").is_file()):
            done = subprocess.run([node(), "build.mjs"], cwd=PHONE, capture_output=True,
                                  text=True, timeout=120, check=False)
            assert done.returncode == 0, f"the phone build failed:\n{done.stdout}\n{done.stderr}"
            _BUILT_FROM.write_text(wanted)
    return PHONE / "dist-test"


def run_driver(command: dict[str, Any]) -> dict[str, Any]:
    """Run one command of ``clients/phone/test/driver.ts`` (JSON in, JSON out)."""
    script = build() / "driver.mjs"
    done = subprocess.run([node(), str(script)], input=json.dumps(command), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"driver failed ({done.returncode}):\n{done.stderr}"
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer
