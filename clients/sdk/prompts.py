"""Secrets for the command-line tools: from an environment variable (scripts, tests) or a
no-echo prompt (people). Nothing here ever prints a secret."""

from __future__ import annotations

import getpass
import os
import sys

from clients.sdk.errors import FlowError

__all__ = ["PromptError", "read_secret", "yes"]


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


YES, NO = frozenset({"y", "yes"}), frozenset({"n", "no"})


def yes(question: str) -> bool:
    """A yes or a no at the terminal, asked again until it is one of them: a slip ("maybe",
    "agreed", an empty line) is never taken for the patient's "no", which is signed and filed
    in the record for good (CLINICAL_SAFETY.md). No answer at all (end of input) records
    nothing."""
    while True:
        try:
            answer = input(f"{question} (yes/no): ").strip().lower()
        except EOFError:
            print(file=sys.stderr)
            raise FlowError("no answer was given: nothing was sent, registered or filed",
                            code="consent_missing") from None
        if answer in YES | NO:
            return answer in YES
        print("Please answer yes or no.", flush=True)
