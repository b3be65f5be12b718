"""protocol/ is sans-I/O: importing all of it loads no event loop, network, web or DB module."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import protocol
from tests.helpers import ROOT

# `socket` is not listed: PyJWT loads urllib.request for its JWKS client. protocol/ itself may
# not import it (ruff banned-api, protocol/ruff.toml), which is the rule that matters.
FORBIDDEN = ["asyncio", "asyncpg", "starlette", "uvicorn", "websockets", "httpx", "sqlalchemy",
             "server", "clients"]


def test_importing_every_protocol_module_loads_no_io_module() -> None:
    modules = [f"protocol.{m.name}" for m in pkgutil.iter_modules(protocol.__path__)]
    assert "protocol.errors" in modules
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "", f"protocol/ imported {out.stdout.strip()}"
