"""The sender's side of filing (docs/PROTOCOL.md §15): an image shared for direct care
(or an external consult) is also sealed to the organisation's record gateway device(s), which
file it in PACS; the relay refuses it without them (``filing_gateway_missing``) when the
organisation requires filing.

:func:`gateway_bundles` fetches the gateways (``GET /v1/filing/gateways``), verifies each chain
against the pinned organisation key exactly like any recipient (a relay cannot slip in a
"gateway" the organisation never certified: the user certificate must be a service account with
the ``record_gateway`` role, the device certificate of kind ``gateway``), and claims a prekey for
each. :func:`needs_gateway` says which images need them. The SDK client's ``send_image`` adds
these bundles to the thread's recipients.
"""

from __future__ import annotations

import time

from clients.sdk.errors import FlowError
from clients.sdk.http import RelayHTTP
from protocol import certs
from protocol.envelope import RecipientBundle
from protocol.errors import ErrorCode, ProtocolError
from protocol.filing import GatewayList
from protocol.model import DeviceKind, Purpose

__all__ = ["FILING_PURPOSES", "gateway_bundles", "gateways", "needs_gateway"]

FILING_PURPOSES = frozenset({Purpose.DIRECT_CARE, Purpose.EXTERNAL_CONSULT})


def needs_gateway(purpose: Purpose, attachment_count: int) -> bool:
    return attachment_count > 0 and purpose in FILING_PURPOSES


async def gateways(relay: RelayHTTP) -> GatewayList:
    r = await relay._device("GET", "/v1/filing/gateways")
    return relay._decode(r, GatewayList)


async def gateway_bundles(relay: RelayHTTP, *, trusted_orgs: dict[str, bytes],
                          revocations: certs.RevocationSet | None,
                          at: int | None = None) -> list[RecipientBundle]:
    """Verified recipient bundles for every record gateway device of the organisation."""
    now = int(time.time()) if at is None else at
    answer = await gateways(relay)
    wanted: dict[str, certs.VerifiedDevice] = {}
    for user in answer.users:
        for bundle in user.devices:
            try:
                verified = certs.verify_chain(user.user_certificate, bundle.device_certificate,
                                              trusted_orgs=trusted_orgs, at=now,
                                              revocations=revocations)
            except ProtocolError as exc:
                raise FlowError("a record gateway's certificate does not verify",
                                code=ErrorCode.CERTIFICATE_INVALID.value) from exc
            if not verified.user.is_record_gateway or verified.device.kind is not \
                    DeviceKind.GATEWAY:
                raise FlowError("the relay offered a device that is not a record gateway",
                                code=ErrorCode.CERTIFICATE_INVALID.value)
            wanted[verified.device_id] = verified
    if not wanted:
        return []
    claimed = await relay.claim_keys(sorted(wanted))
    out = []
    for key in claimed.keys:
        known = wanted.get(key.device_id)
        if known is None:
            raise FlowError("the relay answered for a device we did not ask for",
                            code=ErrorCode.CERTIFICATE_INVALID.value)
        try:
            out.append(RecipientBundle.from_tokens(known, key.signed_prekey,
                                                   key.one_time_prekey))
        except ProtocolError as exc:
            raise FlowError("a gateway's prekey does not verify",
                            code=ErrorCode.CERTIFICATE_INVALID.value) from exc
    return out
