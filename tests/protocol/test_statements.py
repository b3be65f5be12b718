"""protocol.statements: filing statements, expiry confirmations and receipts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import statements
from protocol.errors import VerificationError
from protocol.statements import (
    ExpiryConfirmation,
    FilingStatement,
    ReceiptKind,
    ReceiptStatement,
)
from tests.protocol.crypto_world import T0, flip_char_bit, world

FAST = settings(max_examples=60, deadline=None)
UUID = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"


def _gateway_id() -> str:
    return world().gateway.device_keys.device_id


def _filing() -> FilingStatement:
    return FilingStatement(
        v=1,
        statement_id=UUID,
        device_id=_gateway_id(),
        attachment_id=UUID,
        message_id=UUID,
        thread_id=UUID,
        filed_at=T0,
        receipt_sha256=bytes(range(32)),
    )


def _expiry() -> ExpiryConfirmation:
    return ExpiryConfirmation(
        v=1, device_id=_gateway_id(), attachment_id=UUID, order_id=UUID, shredded_at=T0
    )


def _receipt() -> ReceiptStatement:
    return ReceiptStatement(
        v=1, device_id=_gateway_id(), message_id=UUID, thread_id=UUID, kind=ReceiptKind.READ, at=T0
    )


Kind = tuple[Callable[[], Any], Callable[..., str], Callable[..., Any]]
KINDS: dict[str, Kind] = {
    "filing": (_filing, statements.issue_filing_statement, statements.verify_filing_statement),
    "expiry": (
        _expiry,
        statements.issue_expiry_confirmation,
        statements.verify_expiry_confirmation,
    ),
    "receipt": (_receipt, statements.issue_receipt_statement, statements.verify_receipt_statement),
}


@pytest.mark.parametrize("kind", KINDS)
def test_statement_round_trips_under_the_signers_key(kind: str) -> None:
    make, issue, verify = KINDS[kind]
    gw = world().gateway.device_keys
    token = issue(make(), gw.signing)
    assert verify(token, gw.signing.public, device_id=gw.device_id) == make()


@pytest.mark.parametrize("kind", KINDS)
def test_statement_under_another_devices_key_is_rejected(kind: str) -> None:
    make, issue, verify = KINDS[kind]
    token = issue(make(), world().gateway.device_keys.signing)
    with pytest.raises(VerificationError):
        verify(token, world().bob.device_keys.signing.public)


@pytest.mark.parametrize("kind", KINDS)
def test_statement_naming_another_device_than_expected_is_rejected(kind: str) -> None:
    make, issue, verify = KINDS[kind]
    gw = world().gateway.device_keys
    token = issue(make(), gw.signing)
    with pytest.raises(VerificationError):
        verify(token, gw.signing.public, device_id=world().bob.device_keys.device_id)


@pytest.mark.parametrize("issued", KINDS)
@pytest.mark.parametrize("verified", KINDS)
def test_a_statement_cannot_pass_for_another_kind(issued: str, verified: str) -> None:
    make, issue, _ = KINDS[issued]
    verify = KINDS[verified][2]
    gw = world().gateway.device_keys
    token = issue(make(), gw.signing)
    if issued == verified:
        verify(token, gw.signing.public)
    else:
        with pytest.raises(VerificationError):
            verify(token, gw.signing.public)


def test_issuing_an_unsupported_statement_version_is_refused() -> None:
    with pytest.raises(ValueError):
        statements.issue_receipt_statement(
            msgspec.structs.replace(_receipt(), v=2), world().gateway.device_keys.signing
        )


@FAST
@given(st.sampled_from(sorted(KINDS)), st.integers(min_value=0))
def test_any_single_bit_flip_of_a_statement_is_rejected(kind: str, bit: int) -> None:
    make, issue, verify = KINDS[kind]
    gw = world().gateway.device_keys
    token = issue(make(), gw.signing)
    with pytest.raises(VerificationError):
        verify(flip_char_bit(token, bit), gw.signing.public)
