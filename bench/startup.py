"""What each command costs to start (docs/BENCHMARKS.md "Commands' start-up"): the CPU a fresh
process spends on ``--help`` (its imports and its argument parser, nothing else), beside the
interpreter's own start measured in the same run, its floor.

    .venv/bin/python -m bench.startup [--runs 9] [--only TEXT] [--out FILE]

Each command runs ``--runs`` times after one run that writes its bytecode cache (into a folder
of its own, so that no figure includes compiling); the figure is the median of the process's
user + system CPU (``os.wait4``), and its wall time. Start-up is what a clinician waits for at
every ``lightbox`` command and IT at every ``lightbox-server`` one, and what the test suite pays
each time it runs one (hundreds of times a run).

Writes JSON to bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).with_name("results") / "startup.json"
BIN = Path(sys.executable).parent

# (what it is, the command line); the first is the floor.
COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("the interpreter alone (floor)", [sys.executable, "-c", "pass"]),
    ("lightbox --help (clinician)", [str(BIN / "lightbox"), "--help"]),
    ("lightbox-admin --help (IT)", [str(BIN / "lightbox-admin"), "--help"]),
    ("lightbox-server --help (relay host)", [str(BIN / "lightbox-server"), "--help"]),
    ("lightbox-server audit head --help", [str(BIN / "lightbox-server"), "audit", "head",
                                           "--help"]),
    ("lightbox-gateway --help (record gateway)", [str(BIN / "lightbox-gateway"), "--help"]),
    ("lightbox-phone --help (phone app's server)", [str(BIN / "lightbox-phone"), "--help"]),
    # What the relay's own start imports before it listens (the application, SCIM, alembic).
    ("the relay's modules (import server.app, server.runner)",
     [sys.executable, "-c", "import server.app, server.runner, server.migrations; "
                            "server.migrations.head_revision()"]),
)


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """CPU seconds (user + system) and wall seconds of one run of ``argv``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {err.strip()}")
    return usage.ru_utime + usage.ru_stime, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only the commands whose name has TEXT (repeatable); the floor "
                             "always runs")
    args = parser.parse_args(argv)
    commands = [c for i, c in enumerate(COMMANDS)
                if i == 0 or not args.only or any(t in c[0] for t in args.only)]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        rows: list[dict[str, Any]] = []
        for name, command in commands:
            run_once(command, env)  # writes the bytecode cache
            runs = [run_once(command, env) for _ in range(args.runs)]
            rows.append({"command": name,
                         "cpu_ms": round(statistics.median(c for c, _ in runs) * 1000, 1),
                         "wall_ms": round(statistics.median(w for _, w in runs) * 1000, 1)})
    floor = rows[0]["cpu_ms"]
    print(f"{'command':<58}{'CPU ms':>9}{'wall ms':>9}{'x floor':>9}")
    for row in rows:
        row["x_floor"] = round(row["cpu_ms"] / floor, 1) if floor else None
        print(f"{row['command']:<58}{row['cpu_ms']:>9}{row['wall_ms']:>9}{row['x_floor']:>9}")
    print(f"median of {args.runs} runs each; load average at the end "
          f"{os.getloadavg()[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
