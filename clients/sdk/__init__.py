"""The Lightbox client SDK: the relay's HTTP API, the device's key store, and the identity
flows (enrolment, device linking, login, verified key directory) built on them, and encrypted
image attachments with the recipient-side consent check (clients/sdk/attachments.py).

Exception tree (every SDK error)::

    SDKError
    ├── RelayRequestError     the relay answered with an RFC 9457 problem document (``code``)
    ├── RelayResponseError    the relay's answer does not match the contract
    ├── RelayUnavailable      the relay could not be reached
    ├── SessionEnded          the relay ended the session and this program cannot sign in again
    ├── LoggedOut             the user logged out on this device since this program started
    ├── KeyStoreError         the local key store is missing, exists already, or will not open
    ├── DeviceWiped           the organisation revoked this device and it erased its data
    └── FlowError             a client-side check failed (``code``: an ErrorCode value)
        └── ConsentImageMismatch  a received image its consent does not name: never shown
"""

from __future__ import annotations

__all__: list[str] = []
