"""Counts written for people: ``1 case``, ``2 cases``, ``0 cases`` (docs/USER_GUIDE.md shows
them). Every CLI line that states how many of something there are says it through here, so
"1 cases" cannot come back in one command while the others are right.

English only, as is every word the programs print; an irregular plural is given by the caller
(``counted(n, "person", "people")``). Machine-readable output (CSV, JSON) is not for this."""

from __future__ import annotations

__all__ = ["counted", "for_count"]


def for_count(count: int, singular: str, plural: str | None = None) -> str:
    """The word that agrees with ``count``: ``singular`` for exactly one, else ``plural``
    (by default ``singular`` + "s"). Also for verbs: ``for_count(n, "awaits", "await")``."""
    if count == 1:
        return singular
    return singular + "s" if plural is None else plural


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` and the noun that agrees with it: ``counted(1, "open case")`` is
    ``"1 open case"``, ``counted(0, "entry", "entries")`` is ``"0 entries"``."""
    return f"{count} {for_count(count, singular, plural)}"
