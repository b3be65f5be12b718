"""External consults, the client half (clients/sdk/external.py): the clinical-necessity statement
is required for a recipient in another organisation, sealed in the body, and flagged."""

from __future__ import annotations

import pytest

from clients.sdk.errors import FlowError
from clients.sdk.external import MIN_NECESSITY, NecessityMissing, apply_external, is_external
from protocol.body import Body, decode_body, encode_body
from protocol.model import Purpose

NEED = "No paediatric hand surgeon on site; needs an opinion on fixation tonight."


def test_an_outside_recipient_needs_the_statement_which_is_sealed_and_flagged() -> None:
    body, external = apply_external(Body(text="opinion please"), sender_org="a.example",
                                    recipient_orgs=["a.example", "b.example"], necessity=NEED,
                                    purpose=Purpose.EXTERNAL_CONSULT)
    assert external is True
    assert decode_body(encode_body(body)).necessity == NEED  # it travels sealed


@pytest.mark.parametrize("necessity", [None, "", "   ", "urgent", "x" * (MIN_NECESSITY - 1)])
def test_an_external_consult_without_a_real_statement_is_refused(necessity: str | None) -> None:
    with pytest.raises(NecessityMissing) as missing:
        apply_external(Body(text="opinion please"), sender_org="a.example",
                       recipient_orgs=["b.example"], necessity=necessity,
                       purpose=Purpose.EXTERNAL_CONSULT)
    assert missing.value.code == "external_necessity_missing"
    assert "b.example" in str(missing.value)


def test_a_direct_care_message_to_another_organisation_is_refused() -> None:
    with pytest.raises(FlowError, match="external consult"):
        apply_external(Body(text="hi"), sender_org="a.example", recipient_orgs=["b.example"],
                       necessity=NEED, purpose=Purpose.DIRECT_CARE)


def test_an_internal_message_is_not_flagged() -> None:
    body = Body(text="hi")
    assert apply_external(body, sender_org="a.example", recipient_orgs=["a.example"],
                          necessity=None, purpose=Purpose.DIRECT_CARE) == (body, False)
    assert not is_external("a.example", ["a.example"]) and is_external("a", ["a", "b"])


def test_a_statement_already_in_the_body_counts() -> None:
    body, external = apply_external(Body(text="hi", necessity=NEED), sender_org="a.example",
                                    recipient_orgs=["b.example"], necessity=None,
                                    purpose=Purpose.EXTERNAL_CONSULT)
    assert external and body.necessity == NEED
