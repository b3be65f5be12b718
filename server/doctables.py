"""Tables in the docs generated from the code (``make docs`` rewrites them; tests check them).

Blocks between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers are replaced:
``error-codes`` (docs/SECURITY.md), ``limits`` (docs/SECURITY.md), ``settings`` (README.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from server.problems import error_table_markdown
from server.settings import describe

__all__ = ["BLOCKS", "limits_table", "render_blocks", "settings_table", "update_docs"]

ROOT = Path(__file__).resolve().parent.parent


def settings_table(*, limits_only: bool = False) -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for s in describe():
        if s.limit or not limits_only:
            lines.append(f"| `{s.env}` | `{s.default}` | {s.help} |")
    return "\n".join(lines) + "\n"


def limits_table() -> str:
    return settings_table(limits_only=True)


BLOCKS: dict[str, Callable[[], str]] = {
    "error-codes": error_table_markdown,
    "limits": limits_table,
    "settings": settings_table,
}


def render_blocks(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"<!-- BEGIN {name} -->\n{BLOCKS[name]()}<!-- END {name} -->"

    return re.sub(r"<!-- BEGIN ([\w-]+) -->\n.*?<!-- END \1 -->", sub, text, flags=re.S)


def update_docs() -> list[Path]:
    changed = []
    docs = ROOT / "docs"
    for path in (ROOT / "README.md", docs / "SECURITY.md", docs / "OPERATIONS.md"):
        if not path.exists():
            continue
        old = path.read_text()
        new = render_blocks(old)
        if new != old:
            path.write_text(new)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for p in update_docs():
        print(f"updated {p.relative_to(ROOT)}")
