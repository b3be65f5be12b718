"""Secrets for the command-line tools: from an environment variable (scripts, tests) or a
no-echo prompt (people). Nothing here ever prints a secret."""

from __future__ import annotations

import getpass
import os
import sys

__all__ = ["PromptError", "read_secret"]


class PromptError(Exception):
    """No secret could be read (no variable set and no terminal to ask on), or the two entries
    of a new secret differ."""


def read_secret(env: str, prompt: str, *, confirm: bool = False) -> str:
    """``$env`` if set, else ask twice (``confirm``) or once on the terminal without echo."""
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise PromptError(f"no terminal to ask for it: set {env}")
    first = getpass.getpass(f"{prompt}: ")
    if not first:
        raise PromptError("empty input")
    if confirm and getpass.getpass(f"{prompt} (again): ") != first:
        raise PromptError("the two entries differ")
    return first
