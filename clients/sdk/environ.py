"""Numbers a client reads from its environment (``LIGHTBOX_...`` settings, docs/OPERATIONS.md):
the default when the variable is unset, the value when it parses and lies within its bounds, and
otherwise ``None``, so that the caller refuses to start with its own error and sentence rather
than run with a setting the operator did not mean."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

__all__ = ["number_setting"]

N = TypeVar("N", int, float)


def number_setting(name: str, default: N, parse: Callable[[str], N],
                   valid: Callable[[N], bool]) -> N | None:
    """``default`` if ``name`` is unset; ``parse(value)`` if it parses and is ``valid``; else
    None (the caller says what it expects)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = parse(raw)
    except ValueError:
        return None
    return value if valid(value) else None
