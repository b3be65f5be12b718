"""The tests build the phone app at most once for all of ``make test``'s workers
(``tests/phone/node.py``): build.mjs empties ``dist`` before writing it, so a build while
another worker's browser test served the page answered 500 for ``index.html``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.phone.node import PHONE, build, inputs_digest


def _page_identity() -> tuple[int, int]:
    page = (PHONE / "dist" / "index.html").stat()
    return page.st_ino, page.st_mtime_ns


def test_a_worker_finding_the_app_built_from_these_sources_does_not_build_it_again() -> None:
    build()
    before = _page_identity()
    # Another worker: a process of its own, whose build() has not run yet.
    done = subprocess.run([sys.executable, "-c", "from tests.phone.node import build; build()"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert _page_identity() == before


def test_any_change_to_what_the_build_reads_changes_the_digest(tmp_path: Path) -> None:
    copy = tmp_path / "phone"
    shutil.copytree(PHONE, copy, symlinks=True,
                    ignore=shutil.ignore_patterns("node_modules", "dist", "dist-test"))
    first = inputs_digest(copy)
    assert inputs_digest(copy) == first
    (copy / "dist").mkdir()
    (copy / "dist" / "index.html").write_text("an output is not an input")
    assert inputs_digest(copy) == first
    changed = []
    for edit in (lambda: (copy / "src" / "app" / "copies.ts").write_text("// edited\n"),
                 lambda: (copy / "static" / "extra.css").write_text("p {}\n"),
                 lambda: (copy / "test" / "driver.ts").unlink(),
                 lambda: (copy / "build.mjs").write_text("// edited\n")):
        edit()
        changed.append(inputs_digest(copy))
    assert len({first, *changed}) == 5
