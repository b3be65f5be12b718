"""Check docs/HAZARD_LOG.md: every hazard is complete and every test it names exists.

The hazard log (docs/HAZARD_LOG.md, laid out as its "How to read this log" section says) is a
clinical risk management file in the manner of DCB0129: each hazard has its causes, effect,
controls, an initial and a residual risk rating, and each control names the tests that prove
it. A control whose test was renamed or deleted is a control nobody proves any more, so
``make lint`` runs this script and fails on:

- a hazard without one of the required fields, or with a rating outside the matrix;
- a control that names no test, or a hazard that names none at all;
- a test id (``tests/path/test_file.py::test_name``, optionally ``::Class::test_name`` and a
  ``[param]`` suffix) whose file or function does not exist;
- two hazards with the same id.

Test functions are found by parsing the test files (``ast``): fast, no database, no import of
the test modules. ``--run`` also runs every named test with pytest (slow: the tests need the
real Postgres, Orthanc and browser the suite starts), so the log's claim "this test passes" can
be checked on demand; ``make test`` checks it anyway.

Exit status: 0 when the log is sound, 1 with one line per problem otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "REQUIRED_FIELDS",
    "Control",
    "Hazard",
    "check",
    "cited_tests",
    "main",
    "parse_hazard_log",
]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOG = ROOT / "docs" / "HAZARD_LOG.md"

# The fields every hazard carries, as bold list items (`- **Causes**: ...`).
REQUIRED_FIELDS = ("Causes", "Effect", "Initial risk", "Controls", "Residual risk")
_RATING = re.compile(r"severity (\d) x likelihood (\d) = (\d+)")
_HEADING = re.compile(r"^### (HAZ-\d{2,3}) (.+)$")
_FIELD = re.compile(r"^- \*\*([A-Za-z ]+)\*\*: ?(.*)$")
_CONTROL = re.compile(r"^  - (C\d+) (.+)$")
TEST_ID = re.compile(
    r"`(tests/[\w/]+\.py)::((?:[A-Z]\w*::)?test_\w+)(?:\[[^\]`]*\])?`")


@dataclasses.dataclass(frozen=True)
class Control:
    ident: str
    text: str
    tests: tuple[str, ...]


@dataclasses.dataclass
class Hazard:
    ident: str
    title: str
    line: int
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    controls: list[Control] = dataclasses.field(default_factory=list)

    @property
    def tests(self) -> list[str]:
        return [t for c in self.controls for t in c.tests]


def cited_tests(text: str) -> list[str]:
    """The test ids cited in ``text`` (``path::name``, a ``[param]`` suffix dropped)."""
    return [f"{path}::{name}" for path, name in TEST_ID.findall(text)]


def parse_hazard_log(text: str) -> list[Hazard]:
    """Each ``### HAZ-nn title`` section with its fields and controls.

    A control is a nested list item under ``Controls`` (``  - C1 what it does: tests``); its
    text runs on over indented continuation lines."""
    hazards: list[Hazard] = []
    current: Hazard | None = None
    field: str | None = None
    control: list[str] | None = None

    def close_control() -> None:
        nonlocal control
        if current is not None and control is not None:
            ident, body = control[0], " ".join(control[1:])
            current.controls.append(Control(ident, body, tuple(cited_tests(body))))
        control = None

    for number, line in enumerate(text.splitlines(), start=1):
        heading = _HEADING.match(line)
        if heading or line.startswith("## ") or line.startswith("### "):
            close_control()
            field = None
            current = None
            if heading:
                current = Hazard(heading.group(1), heading.group(2).strip(), number)
                hazards.append(current)
            continue
        if current is None:
            continue
        found = _FIELD.match(line)
        if found:
            close_control()
            field = found.group(1)
            current.fields[field] = found.group(2).strip()
            continue
        item = _CONTROL.match(line)
        if item and field == "Controls":
            close_control()
            control = [item.group(1), item.group(2).strip()]
            continue
        if line.startswith("    ") and control is not None:
            control.append(line.strip())
        elif line.startswith("  ") and field is not None and control is None:
            current.fields[field] += " " + line.strip()
        elif not line.strip():
            close_control()
    close_control()
    return hazards


def _functions(path: Path) -> set[str]:
    """``test_x`` and ``Class::test_x`` for every test function defined in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, funcs) and node.name.startswith("test_"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, funcs) and sub.name.startswith("test_"):
                    names.add(f"{node.name}::{sub.name}")
    return names


def _rating_problems(hazard: Hazard, field: str) -> list[str]:
    value = hazard.fields.get(field, "")
    rating = _RATING.search(value)
    if rating is None:
        return [f"{hazard.ident}: {field} is not 'severity S x likelihood L = R'"]
    s, likelihood, r = (int(g) for g in rating.groups())
    if not (1 <= s <= 5 and 1 <= likelihood <= 5) or r != s * likelihood:
        return [f"{hazard.ident}: {field} '{rating.group(0)}' is not on the 5 x 5 matrix"]
    return []


def check(hazards: Sequence[Hazard], root: Path = ROOT) -> list[str]:
    """Every problem with the log, one sentence each; empty when it is sound."""
    problems: list[str] = []
    if not hazards:
        return ["the hazard log lists no hazard (no '### HAZ-nn title' heading)"]
    seen: set[str] = set()
    cache: dict[str, set[str] | None] = {}
    for hazard in hazards:
        if hazard.ident in seen:
            problems.append(f"{hazard.ident}: the id is used twice")
        seen.add(hazard.ident)
        for name in REQUIRED_FIELDS:
            if name not in hazard.fields:
                problems.append(f"{hazard.ident}: no '{name}' field")
        problems += _rating_problems(hazard, "Initial risk")
        problems += _rating_problems(hazard, "Residual risk")
        if not hazard.controls:
            problems.append(f"{hazard.ident}: no control (a '  - C1 ...' item under Controls)")
        for control in hazard.controls:
            if not control.tests:
                problems.append(f"{hazard.ident} {control.ident}: names no test")
        for test in hazard.tests:
            path, _, name = test.partition("::")
            if path not in cache:
                file = root / path
                cache[path] = _functions(file) if file.is_file() else None
            names = cache[path]
            if names is None:
                problems.append(f"{hazard.ident}: {test}: no such test file")
            elif name not in names:
                problems.append(f"{hazard.ident}: {test}: no such test")
    return problems


def _run(tests: Iterable[str], root: Path) -> int:
    ids = sorted(set(tests))
    return subprocess.call([sys.executable, "-m", "pytest", "-q", *ids], cwd=root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="check_hazard_log", description="Check that every hazard names tests that exist.")
    parser.add_argument("log", nargs="?", type=Path, default=DEFAULT_LOG)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the repository the test ids are relative to")
    parser.add_argument("--run", action="store_true",
                        help="also run every named test with pytest")
    args = parser.parse_args(argv)
    try:
        text = args.log.read_text()
    except OSError as exc:
        print(f"check_hazard_log: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return 2
    hazards = parse_hazard_log(text)
    problems = check(hazards, args.root)
    for problem in problems:
        print(f"{args.log}: {problem}", file=sys.stderr)
    if problems:
        return 1
    tests = [t for h in hazards for t in h.tests]
    print(f"{args.log}: {len(hazards)} hazards, {len(set(tests))} tests named, all present")
    if args.run:
        return 1 if _run(tests, args.root) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
