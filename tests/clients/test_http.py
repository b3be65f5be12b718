"""clients/sdk/http.py: the routes, against a real relay (the request machinery has its own
tests: test_transport.py, test_answers.py, test_proof.py, test_singleflight.py)."""

from __future__ import annotations

import pytest

from clients.sdk.errors import RelayRequestError
from clients.sdk.http import RelayHTTP
from protocol.canonical import b64url_decode
from tests.helpers import RunningRelay


async def test_public_routes_answer_without_a_session(relay: RunningRelay) -> None:
    async with RelayHTTP(relay.base_url) as client:
        challenge = await client.challenge()
        assert len(b64url_decode(challenge.nonce)) == 32
        assert isinstance((await client.revocations()).lists, list)
        with pytest.raises(RelayRequestError) as exc:
            await client.enrol_fetch(b"\x00" * 32)
        assert exc.value.code == "enrolment_code_invalid"
