"""Sans-I/O state machines of a relay websocket connection, one per side.

Like python-websockets' ``protocol.py``: bytes in, events out; frames in, bytes out; no
sockets, no event loop, no clock reads (times and nonces are passed in). The I/O layer feeds
each binary websocket message (RFC 6455 §5.6) to :meth:`receive_data`, handles the returned
events, writes whatever :meth:`data_to_send` returns, and closes the websocket with
:attr:`close_code` as soon as it is set (after flushing the pending ``error`` frame).

Server states::

    AWAIT_HELLO --hello--> AWAIT_AUTH --auth--> VERIFYING --accept()--> READY
         \\                    \\                   \\--reject()--> CLOSED
          `---- any error ----`-----------------`--> CLOSED        READY --close()--> CLOSED

``VERIFYING`` is the time the server layer takes to check the access token and the challenge
signature (a database lookup, so it cannot be a synchronous callback): the session emits
:class:`AuthRequested` and waits for :meth:`ServerSession.accept` or
:meth:`ServerSession.reject`; it knows nothing of tokens or databases. On the client, signing
the challenge is a fast local operation, so :class:`ClientSession` takes a ``sign`` callback.

Error handling (the ``error`` frame goes out before the close):

* before authentication, anything but the expected handshake frame, or any decode error,
  is fatal: ``unexpected_frame`` closes with 1008, ``unsupported_version`` with 4008, other
  decode errors with 4000;
* a frame larger than the maximum frame size closes with 1009 in every state;
* once ready, a malformed frame, a frame in the wrong direction, a repeated handshake frame or
  an overflowing send window is answered with a non-fatal ``error`` and the connection stays
  usable; after ``max_bad_frames`` such frames the session closes with 4000.

Bundles (docs/PROTOCOL.md §3.6): once the I/O layer has seen the ``lightbox.bundle``
subprotocol selected in the websocket handshake, it calls :meth:`use_bundles`. From ``ready``
on, :meth:`data_to_send` then joins consecutive frames into ``bundle`` frames, and
:meth:`receive_data` takes a received ``bundle`` apart: each frame in it is checked and
answered exactly as if it had come alone, in order (one malformed frame in a bundle costs
that frame, not its neighbours). Without the subprotocol a ``bundle`` is an
``unexpected_frame``, like any frame out of place.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from protocol import _sodium
from protocol.errors import (
    CloseCode,
    DecodeError,
    ErrorCode,
    LimitExceeded,
    ProtocolError,
    VerificationError,
)
from protocol.frames import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_FRAME,
    DIRECTION,
    NONCE_SIZE,
    Accepted,
    Auth,
    Bundle,
    Challenge,
    Direction,
    Error,
    Frame,
    Hello,
    Limits,
    Ping,
    Pong,
    Ready,
    Send,
    challenge_signing_bytes,
    decode_frame,
    encode_frame,
    negotiate,
    pack_bundles,
    peek_req_id,
)
from protocol.model import SUPPORTED_VERSIONS

__all__ = [
    "DEFAULT_MAX_BAD_FRAMES",
    "AuthRequested",
    "ClientSession",
    "ClientState",
    "ErrorEvent",
    "Event",
    "FrameReceived",
    "ServerSession",
    "ServerState",
    "SessionReady",
    "verify_challenge",
]

DEFAULT_MAX_BAD_FRAMES: Final = 8
"""Rejected frames tolerated on a ready connection before it is closed with 4000."""


class ServerState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    VERIFYING = "verifying"
    READY = "ready"
    CLOSED = "closed"


class ClientState(enum.Enum):
    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_READY = "await_ready"
    READY = "ready"
    CLOSED = "closed"


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """Server: the client answered the challenge. Verify, then ``accept()`` or ``reject()``.

    Check that ``hello.access_token`` is valid and names ``hello.device_id``, then that
    ``signature`` verifies under that device's Ed25519 key over :attr:`signed_bytes`
    (:func:`verify_challenge` does the latter).
    """

    hello: Hello = field(repr=False)  # holds the access token: keep it out of logs
    version: int
    nonce: bytes
    signature: bytes

    @property
    def signed_bytes(self) -> bytes:
        return challenge_signing_bytes(self.nonce, self.hello.access_token)


@dataclass(frozen=True, slots=True)
class SessionReady:
    """Client: the relay accepted the handshake."""

    ready: Ready


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A valid frame, allowed in the current state, from the right direction."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A received frame was rejected. ``close_code`` is set when the connection must close."""

    code: ErrorCode
    detail: str
    req_id: str | None = None
    close_code: CloseCode | None = None

    @property
    def fatal(self) -> bool:
        return self.close_code is not None


Event: TypeAlias = AuthRequested | SessionReady | FrameReceived | ErrorEvent


def verify_challenge(
    device_public_key: bytes, nonce: bytes, access_token: str, signature: bytes
) -> None:
    """Check a device's ``auth`` answer; raises VerificationError(code=challenge_failed)."""
    message = challenge_signing_bytes(nonce, access_token)
    if not _sodium.ed25519_verify(device_public_key, message, signature):
        raise VerificationError("challenge signature", code=ErrorCode.CHALLENGE_FAILED)


# --- shared machinery ------------------------------------------------------------------------


@dataclass(slots=True)
class _Core:
    max_frame_size: int
    max_bad_frames: int
    outgoing: list[bytes] = field(default_factory=list)
    close_code: CloseCode | None = None
    close_reason: str = ""
    bad_frames: int = 0
    bundles: bool = False  # the lightbox.bundle subprotocol was selected
    plain: int = 0  # the first ``plain`` outgoing frames go alone (queued before ready)


class _Session:
    """What both sides of a connection share: the core (outgoing buffer, close state) and the
    ``send`` frames awaiting an answer."""

    def __init__(self, max_frame_size: int, max_bad_frames: int) -> None:
        self._core = _Core(max_frame_size, max_bad_frames)
        self._in_flight: set[str] = set()

    @property
    def close_code(self) -> CloseCode | None:
        """Set once the connection must close; the I/O layer closes with it."""
        return self._core.close_code

    @property
    def close_reason(self) -> str:
        return self._core.close_reason

    @property
    def in_flight(self) -> int:
        """``send`` frames not yet answered by ``accepted`` or ``error``."""
        return len(self._in_flight)

    def use_bundles(self) -> None:
        """The websocket handshake selected the ``lightbox.bundle`` subprotocol: once ready,
        frames may travel in ``bundle`` frames both ways (docs/PROTOCOL.md §3.6)."""
        self._core.bundles = True

    @property
    def bundles(self) -> bool:
        return self._core.bundles

    def data_to_send(self) -> list[bytes]:
        """Binary websocket messages to write, in order (the buffer is emptied). With bundles,
        the frames queued since ``ready`` are joined into ``bundle`` frames no larger than the
        relay's announced ``max_frame``."""
        core = self._core
        out, core.outgoing = core.outgoing, []
        if not core.bundles or len(out) - core.plain < 2:
            core.plain = 0
            return out
        plain, core.plain = core.plain, 0
        return out[:plain] + pack_bundles(out[plain:], self._bundle_max())

    def _bundle_max(self) -> int:
        return DEFAULT_MAX_FRAME

    def _push(self, data: bytes, ready: bool) -> None:
        """Queue one encoded frame; one queued before ``ready`` is never bundled."""
        core = self._core
        core.outgoing.append(data)
        if not ready:
            core.plain = len(core.outgoing)


def _frame_name(frame: Frame) -> str:
    return str(type(frame).__struct_config__.tag)


# Close codes for errors that end a connection before authentication.
_HANDSHAKE_CLOSE: Final[dict[ErrorCode, CloseCode]] = {
    ErrorCode.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED_VERSION,
    ErrorCode.UNEXPECTED_FRAME: CloseCode.POLICY_VIOLATION,
}


class ServerSession(_Session):
    """The relay's side of one connection.

    ``nonce`` is the 32 random bytes of this connection's challenge and ``now`` the server time
    to announce in it: both are injected (sans-I/O, reproducible tests).
    """

    def __init__(
        self,
        *,
        nonce: bytes,
        now: int,
        supported_versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        limits: Limits | None = None,
        max_bad_frames: int = DEFAULT_MAX_BAD_FRAMES,
    ) -> None:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"challenge nonce must be {NONCE_SIZE} bytes")
        self.limits = limits or Limits()
        self.state = ServerState.AWAIT_HELLO
        self.hello: Hello | None = None
        self.version: int | None = None
        self._nonce = nonce
        self._now = now
        self._supported = supported_versions
        super().__init__(self.limits.max_frame, max_bad_frames)

    # -- input --

    def receive_data(self, data: bytes) -> list[Event]:
        """Process one binary websocket message from the client."""
        if self.state is ServerState.CLOSED:
            return []
        frame = self._decode(data)
        if isinstance(frame, ErrorEvent):
            return [frame]
        if isinstance(frame, Bundle) and self.state is ServerState.READY:
            if not self._core.bundles:
                return [self._unexpected(frame, "the lightbox.bundle subprotocol was not "
                                                "selected for this connection")]
            return self._receive_bundle(frame)
        return self._receive_frame(frame)

    def _decode(self, data: bytes) -> Frame | ErrorEvent:
        try:
            return decode_frame(data, max_frame_size=self._core.max_frame_size)
        except DecodeError as exc:
            # Never parse an oversize frame, not even to find its req_id.
            too_large = exc.code is ErrorCode.FRAME_TOO_LARGE
            return self._reject_input(exc.code, str(exc),
                                      None if too_large else peek_req_id(data))

    def _receive_bundle(self, bundle: Bundle) -> list[Event]:
        """Each frame of a bundle, in order, as if it had come alone (PROTOCOL.md §3.6)."""
        events: list[Event] = []
        for data in bundle.frames:
            if self.state is ServerState.CLOSED:
                break
            frame = self._decode(data)
            if isinstance(frame, ErrorEvent):
                events.append(frame)
            else:  # a bundle in it is refused there, as out of place
                events.extend(self._receive_frame(frame))
        return events

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if DIRECTION[type(frame)] is Direction.SERVER_TO_CLIENT:
            return [self._unexpected(frame, "server-to-client frame sent by the client")]
        if self.state is ServerState.AWAIT_HELLO:
            if not isinstance(frame, Hello):
                return [self._unexpected(frame, "expected hello")]
            return self._on_hello(frame)
        if self.state is ServerState.AWAIT_AUTH:
            if not isinstance(frame, Auth):
                return [self._unexpected(frame, "expected auth")]
            assert self.hello is not None
            assert self.version is not None
            self.state = ServerState.VERIFYING
            return [AuthRequested(self.hello, self.version, self._nonce, frame.signature)]
        if self.state is ServerState.VERIFYING:
            return [self._unexpected(frame, "authentication in progress")]
        # READY
        if isinstance(frame, Hello | Auth):
            return [self._unexpected(frame, "already authenticated")]
        if isinstance(frame, Bundle):
            return [self._unexpected(frame, "bundle inside a bundle")]
        if isinstance(frame, Send) and frame.req_id not in self._in_flight:
            if len(self._in_flight) >= self.limits.send_window:
                return [
                    self._reject_input(
                        ErrorCode.RATE_LIMITED, "send window full", frame.req_id, retry_after=1.0
                    )
                ]
            self._in_flight.add(frame.req_id)
        if isinstance(frame, Ping):
            self._queue(Pong(nonce=frame.nonce))
        return [FrameReceived(frame)]

    def _on_hello(self, hello: Hello) -> list[Event]:
        try:
            version = negotiate(hello.versions, self._supported)
        except DecodeError as exc:
            return [self._reject_input(exc.code, str(exc), None)]
        self.hello, self.version = hello, version
        self.state = ServerState.AWAIT_AUTH
        self._queue(Challenge(version=version, nonce=self._nonce, server_time=self._now))
        return []

    # -- output --

    def accept(
        self,
        *,
        session_id: str,
        user_id: str,
        server_time: int,
        expires_at: int,
        heartbeat: int = DEFAULT_HEARTBEAT,
    ) -> None:
        """The server layer verified token and signature: send ``ready``."""
        if self.state is not ServerState.VERIFYING:
            raise ProtocolError("accept() outside VERIFYING", code=ErrorCode.UNEXPECTED_FRAME)
        assert self.hello is not None
        assert self.version is not None
        self._queue(
            Ready(
                session_id=session_id,
                device_id=self.hello.device_id,
                user_id=user_id,
                version=self.version,
                server_time=server_time,
                heartbeat=heartbeat,
                expires_at=expires_at,
                limits=self.limits,
            )
        )
        self.state = ServerState.READY

    def reject(
        self,
        code: ErrorCode = ErrorCode.CHALLENGE_FAILED,
        detail: str = "",
        close_code: CloseCode = CloseCode.AUTH_FAILED,
    ) -> None:
        """Authentication failed: send a fatal ``error`` and close."""
        self.close(close_code, code=code, detail=detail)

    def send(self, frame: Frame) -> None:
        """Queue a server-to-client frame on a ready connection.

        Raises ProtocolError(unexpected_frame) for a client frame, a handshake frame (use
        accept/reject), a fatal ``error`` (use close) or a connection that is not ready.
        """
        if (
            DIRECTION[type(frame)] is Direction.CLIENT_TO_SERVER
            or isinstance(frame, Challenge | Ready | Bundle)
            or (isinstance(frame, Error) and frame.fatal)
        ):
            raise ProtocolError(
                f"send() cannot send {_frame_name(frame)}", code=ErrorCode.UNEXPECTED_FRAME
            )
        if self.state is not ServerState.READY:
            raise ProtocolError(
                f"cannot send in state {self.state.value}", code=ErrorCode.UNEXPECTED_FRAME
            )
        if isinstance(frame, Accepted | Error) and frame.req_id is not None:
            self._in_flight.discard(frame.req_id)
        self._queue(frame)

    def send_encoded(self, data: bytes) -> None:
        """Queue a relay frame that is already encoded (``encode_deliver``, a stored notice),
        in order with the frames :meth:`send` queues; only once ready."""
        if self.state is not ServerState.READY:
            raise ProtocolError(
                f"cannot send in state {self.state.value}", code=ErrorCode.UNEXPECTED_FRAME
            )
        self._push(data, True)

    def close(
        self, close_code: CloseCode, *, code: ErrorCode | None = None, detail: str = ""
    ) -> None:
        """Close the connection, sending a fatal ``error`` first when ``code`` is given
        (for example device_revoked with 4004, or going away with 1001 and no error)."""
        if self.state is ServerState.CLOSED:
            return
        if code is not None:
            self._queue(Error(code=code, detail=detail, fatal=True))
        # The close reason is the stable error code when there is one (the detail is in the
        # error frame), so clients can act on it without parsing prose.
        self._set_closed(close_code, code.value if code else detail)

    # -- helpers --

    def _queue(self, frame: Frame) -> None:
        self._push(encode_frame(frame), self.state is ServerState.READY)

    def _bundle_max(self) -> int:
        return self.limits.max_frame

    def _set_closed(self, close_code: CloseCode, reason: str) -> None:
        self.state = ServerState.CLOSED
        self._core.close_code = close_code
        self._core.close_reason = reason[:120]  # a close reason fits in 123 bytes (RFC 6455)

    def _unexpected(self, frame: Frame, why: str) -> ErrorEvent:
        req_id = getattr(frame, "req_id", None)
        detail = f"{_frame_name(frame)}: {why}"
        return self._reject_input(ErrorCode.UNEXPECTED_FRAME, detail, req_id)

    def _reject_input(
        self,
        code: ErrorCode,
        detail: str,
        req_id: str | None,
        *,
        retry_after: float | None = None,
    ) -> ErrorEvent:
        """Answer a rejected frame with ``error``; decide whether the connection closes."""
        close_code: CloseCode | None = None
        if code is ErrorCode.FRAME_TOO_LARGE:
            close_code = CloseCode.MESSAGE_TOO_BIG
        elif self.state is not ServerState.READY:
            close_code = _HANDSHAKE_CLOSE.get(code, CloseCode.PROTOCOL_ERROR)
        else:
            self._core.bad_frames += 1
            if self._core.bad_frames > self._core.max_bad_frames:
                close_code = CloseCode.PROTOCOL_ERROR
        self._queue(
            Error(
                req_id=req_id,
                code=code,
                detail=detail[:200],
                retry_after=retry_after,
                fatal=close_code is not None,
            )
        )
        if close_code is not None:
            self._set_closed(close_code, code.value)
        return ErrorEvent(code, detail, req_id, close_code)


class ClientSession(_Session):
    """A device's side of one connection.

    Queues ``hello`` at construction; answers the challenge with ``sign(bytes) -> signature``
    (the device's Ed25519 key, typically ``protocol.keys`` through the local vault).
    """

    def __init__(
        self,
        *,
        access_token: str,
        device_id: str,
        client: str,
        client_version: str,
        sign: Callable[[bytes], bytes],
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        max_frame_size: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.state = ClientState.AWAIT_CHALLENGE
        self.ready: Ready | None = None
        self._versions = versions
        self._token = access_token
        self._sign = sign
        super().__init__(max_frame_size, 0)
        self._queue(
            Hello(
                versions=list(versions),
                access_token=access_token,
                device_id=device_id,
                client=client,
                client_version=client_version,
            )
        )

    def receive_data(self, data: bytes) -> list[Event]:
        """Process one binary websocket message from the relay."""
        if self.state is ClientState.CLOSED:
            return []
        try:
            frame = decode_frame(data, max_frame_size=self._core.max_frame_size)
        except DecodeError as exc:
            return [self._fail(exc.code, str(exc))]
        if isinstance(frame, Bundle):
            if self.state is not ClientState.READY or not self._core.bundles:
                return [self._fail(ErrorCode.UNEXPECTED_FRAME,
                                   "bundle from the relay before ready or without the "
                                   "lightbox.bundle subprotocol")]
            return self._receive_bundle(frame)
        return self._receive_frame(frame)

    def _receive_bundle(self, bundle: Bundle) -> list[Event]:
        """Each frame of a bundle, in order, as if it had come alone (PROTOCOL.md §3.6); the
        first bad one closes, like a bad frame alone."""
        events: list[Event] = []
        for data in bundle.frames:
            if self.state is ClientState.CLOSED:
                break
            try:
                frame = decode_frame(data, max_frame_size=self._core.max_frame_size)
            except DecodeError as exc:
                events.append(self._fail(exc.code, str(exc)))
                break
            if isinstance(frame, Bundle):
                events.append(self._fail(ErrorCode.UNEXPECTED_FRAME, "bundle inside a bundle"))
                break
            events.extend(self._receive_frame(frame))
        return events

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if DIRECTION[type(frame)] is Direction.CLIENT_TO_SERVER:
            return [self._fail(ErrorCode.UNEXPECTED_FRAME, f"{_frame_name(frame)} from the relay")]
        if isinstance(frame, Error):
            if frame.req_id is not None:
                self._in_flight.discard(frame.req_id)
            if frame.fatal or self.state is not ClientState.READY:
                # The relay closes the websocket itself; the client just stops.
                self._set_closed(CloseCode.GOING_AWAY, frame.code.value)
            return [FrameReceived(frame)]
        if self.state is ClientState.AWAIT_CHALLENGE:
            if not isinstance(frame, Challenge):
                return [self._fail(ErrorCode.UNEXPECTED_FRAME, "expected challenge")]
            if frame.version not in self._versions:
                return [
                    self._fail(ErrorCode.UNSUPPORTED_VERSION, "relay chose a version not offered")
                ]
            signature = self._sign(challenge_signing_bytes(frame.nonce, self._token))
            self._queue(Auth(signature=signature))
            self.state = ClientState.AWAIT_READY
            return []
        if self.state is ClientState.AWAIT_READY:
            if not isinstance(frame, Ready):
                return [self._fail(ErrorCode.UNEXPECTED_FRAME, "expected ready")]
            self.ready = frame
            self.state = ClientState.READY
            return [SessionReady(frame)]
        # READY
        if isinstance(frame, Challenge | Ready):
            return [self._fail(ErrorCode.UNEXPECTED_FRAME, "handshake frame after ready")]
        if isinstance(frame, Accepted):
            self._in_flight.discard(frame.req_id)
        if isinstance(frame, Ping):
            self._queue(Pong(nonce=frame.nonce))
        return [FrameReceived(frame)]

    def send(self, frame: Frame) -> None:
        """Queue a client-to-server frame on a ready connection.

        Raises ProtocolError(unexpected_frame) for a relay frame, a handshake frame or a
        connection that is not ready; ProtocolError(rate_limited) when the send window
        announced in ``ready`` is full; LimitExceeded(frame_too_large) when the encoded frame
        exceeds the relay's announced maximum.
        """
        if (DIRECTION[type(frame)] is Direction.SERVER_TO_CLIENT
                or isinstance(frame, Hello | Auth | Bundle)):
            raise ProtocolError(
                f"the client cannot send {_frame_name(frame)}", code=ErrorCode.UNEXPECTED_FRAME
            )
        if self.state is not ClientState.READY or self.ready is None:
            raise ProtocolError(
                f"cannot send in state {self.state.value}", code=ErrorCode.UNEXPECTED_FRAME
            )
        limits = self.ready.limits
        if isinstance(frame, Send) and frame.req_id not in self._in_flight:
            if len(self._in_flight) >= limits.send_window:
                raise ProtocolError("send window full", code=ErrorCode.RATE_LIMITED)
        data = encode_frame(frame)
        if len(data) > limits.max_frame:
            raise LimitExceeded("frame exceeds the relay's maximum", code=ErrorCode.FRAME_TOO_LARGE)
        if isinstance(frame, Send):
            self._in_flight.add(frame.req_id)
        self._push(data, True)

    def _queue(self, frame: Frame) -> None:
        self._push(encode_frame(frame), self.state is ClientState.READY)

    def _bundle_max(self) -> int:
        return self.ready.limits.max_frame if self.ready is not None else DEFAULT_MAX_FRAME

    def _set_closed(self, close_code: CloseCode, reason: str) -> None:
        self.state = ClientState.CLOSED
        self._core.close_code = close_code
        self._core.close_reason = reason[:120]

    def _fail(self, code: ErrorCode, detail: str) -> ErrorEvent:
        """A bad frame from the relay: the relay is not behaving, so close and reconnect."""
        close_code = (
            CloseCode.MESSAGE_TOO_BIG
            if code is ErrorCode.FRAME_TOO_LARGE
            else CloseCode.PROTOCOL_ERROR
        )
        self._set_closed(close_code, code.value)
        return ErrorEvent(code, detail, None, close_code)
