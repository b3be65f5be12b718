"""Which copy of a consult handed over several times the phone lists (clients/phone/src/app/
copies.ts, run under Node; PROTOCOL.md §16.4, HAZ-02 C16 of docs/HAZARD_LOG.md): the original
when held, else the copy its author's own device sealed, else the first in the thread's order,
as clients/sdk/handover.py ``one_per_consult`` chooses. The phone opens the copies of one
delivery side by side, so they reach the thread in either order; the choice must not depend on
it. The whole screen: tests/phone/test_phone_handover_copies.py."""

from __future__ import annotations

import itertools
from typing import Any

from tests.phone.node import run_driver

CLAIM = {"message_id": "original", "sender_user_id": "intern", "sender_device_id": "phone",
         "sent_at": 1_700_000_000}


def view(message_id: str, seq: int, *, by_author: bool = False, contradicted: bool = False,
         text: str = "Ankle, bed 2: Weber B?") -> dict[str, Any]:
    return {"message_id": message_id, "thread_id": "t", "from_user_id": "someone",
            "from_name": "Someone", "mine": False, "text": text, "subject": None,
            "sent_at": 1_700_000_600, "status": "received", "thread_seq": seq, "read": False,
            "handover": {"resealed_by": "Someone", "resealed_at": 1_700_000_600,
                         "confirmed": by_author or not contradicted,
                         "contradicted": contradicted, "by_author": by_author}}


def shown(*arrivals: dict[str, Any]) -> list[str]:
    answer: list[str] = run_driver({"op": "copies_shown", "claim": CLAIM,
                                    "arrivals": list(arrivals)})["shown"]
    return answer


def test_the_first_copy_in_the_thread_is_listed_whichever_is_opened_first() -> None:
    copies = [view("copy-1", 5), view("copy-2", 6), view("copy-3", 7)]
    for order in itertools.permutations(copies):
        assert shown(*order) == ["copy-1"], [c["message_id"] for c in order]


def test_the_copy_its_author_sealed_is_listed_before_an_earlier_one() -> None:
    copies = [view("copy-1", 5), view("by-author", 6, by_author=True), view("copy-3", 7)]
    for order in itertools.permutations(copies):
        assert shown(*order) == ["by-author"], [c["message_id"] for c in order]


def test_the_original_held_is_listed_and_its_copies_are_not() -> None:
    original = {**view("original", 2), "handover": None, "from_user_id": "intern"}
    assert shown(original, view("copy-2", 6), view("by-author", 5, by_author=True)) == [
        "original"]


def test_a_copy_that_differs_is_listed_on_its_own() -> None:
    assert shown(view("copy-2", 6), view("copy-1", 5, text="Ankle, bed 3: Weber C?"),
                 view("contradicting", 4, contradicted=True)) == [
        "copy-2", "copy-1", "contradicting"]
