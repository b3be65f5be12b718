"""Attachment encryption: libsodium secretstream XChaCha20-Poly1305 in 64 KiB chunks.

Why (docs/ARCHITECTURE.md §5, docs/PROTOCOL.md §6): images are encrypted on the device before a
resumable upload, so the relay only ever holds ciphertext; the key, plaintext SHA-256, size and type
travel only inside the sealed message body (:class:`AttachmentDescriptor`).

Stream layout: ``header[24] || chunk_1 || ... || chunk_n``. Every chunk carries exactly
65 536 plaintext bytes (+17 bytes of overhead) except the last, which carries 0..65 536 bytes and
the tag TAG_FINAL; all other chunks carry TAG_MESSAGE. secretstream authenticates the order
of chunks, so reordering, duplication or splicing fails authentication; truncation is detected
because :meth:`AttachmentDecryptor.finish` requires a TAG_FINAL chunk (NOTES.md), and any byte
after it is refused as trailing data.

Both directions are sans-I/O and incremental: feed bytes in any split, get bytes out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from protocol import _sodium
from protocol._sodium import Rng, random_bytes
from protocol.canonical import Bytes32, UuidStr
from protocol.errors import LimitExceeded, VerificationError

__all__ = [
    "CHUNK_SIZE",
    "CIPHERTEXT_CHUNK_SIZE",
    "KEY_BYTES",
    "MAX_ATTACHMENT_SIZE",
    "AttachmentDecryptor",
    "AttachmentDescriptor",
    "AttachmentEncryptor",
    "EncryptedAttachment",
    "ciphertext_size",
    "decrypt_attachment",
    "encrypt_attachment",
]

KEY_BYTES: Final = _sodium.SECRETSTREAM_KEY_BYTES  # 32
HEADER_BYTES: Final = _sodium.SECRETSTREAM_HEADER_BYTES  # 24
CHUNK_SIZE: Final = 64 * 1024  # plaintext bytes per chunk
CIPHERTEXT_CHUNK_SIZE: Final = CHUNK_SIZE + _sodium.SECRETSTREAM_ABYTES  # 65 553
MAX_ATTACHMENT_SIZE: Final = 64 * 1024 * 1024  # plaintext bytes (default decrypt limit)


class AttachmentDescriptor(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything needed to fetch, decrypt and check one attachment. Travels only inside a
    sealed message body: it contains the key."""

    attachment_id: UuidStr
    key: Bytes32
    sha256: Bytes32  # of the plaintext
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_ATTACHMENT_SIZE)]  # plaintext bytes
    media_type: Annotated[str, msgspec.Meta(pattern=r"^[a-z]+/[a-z0-9.+-]{1,100}$")]
    width: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    height: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None

    def __repr__(self) -> str:  # never print the key
        return (
            f"AttachmentDescriptor(attachment_id={self.attachment_id!r}, size={self.size}, "
            f"media_type={self.media_type!r}, key=<hidden>)"
        )


def ciphertext_size(plaintext_size: int) -> int:
    """Exact size of the encrypted stream for ``plaintext_size`` bytes (upload declarations)."""
    if plaintext_size < 0:
        raise ValueError("negative size")
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return HEADER_BYTES + plaintext_size + chunks * _sodium.SECRETSTREAM_ABYTES


class _Digesting:
    """The plaintext's running SHA-256 and size, kept alike by both directions of the stream."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the plaintext so far (of all of it once the stream is finished)."""
        return self._hash.digest()

    @property
    def size(self) -> int:
        return self._size


class AttachmentEncryptor(_Digesting):
    """Incremental encryption: ``header + feed(...) + ... + finish()`` is the stream.

    A full chunk is only emitted once a byte beyond it arrives, so :meth:`finish` always has
    the last chunk (0..64 KiB) to tag TAG_FINAL.
    """

    def __init__(self, key: bytes, *, rng: Rng = random_bytes) -> None:
        super().__init__()
        self.header = rng(HEADER_BYTES)
        self._stream = _sodium.SecretStreamPush(key, self.header)
        self._buffer = bytearray()
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Take plaintext; return the ciphertext chunks now complete (maybe ``b""``)."""
        if self._finished:
            raise ValueError("encryptor already finished")
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
        out = []
        while len(self._buffer) > CHUNK_SIZE:
            out.append(self._stream.push(bytes(self._buffer[:CHUNK_SIZE]), final=False))
            del self._buffer[:CHUNK_SIZE]
        return b"".join(out)

    def finish(self) -> bytes:
        """Return the last chunk, tagged TAG_FINAL."""
        if self._finished:
            raise ValueError("encryptor already finished")
        self._finished = True
        last = self._stream.push(bytes(self._buffer), final=True)
        self._buffer.clear()
        return last


class AttachmentDecryptor(_Digesting):
    """Incremental decryption of a stream made by :class:`AttachmentEncryptor`.

    Feed ciphertext in any split; plaintext comes out chunk by chunk. Any tampering,
    reordering, duplication or trailing data raises VerificationError at once; truncation
    raises in :meth:`finish`. Plaintext released before an error is unauthenticated as a
    whole: callers must discard it unless :meth:`finish` succeeds.
    """

    def __init__(self, key: bytes, *, max_size: int = MAX_ATTACHMENT_SIZE) -> None:
        super().__init__()
        self._key = key
        self._max_size = max_size
        self._stream: _sodium.SecretStreamPull | None = None
        self._buffer = bytearray()
        self._final_seen = False
        self._failed = False

    def _fail(self, reason: str) -> VerificationError:
        self._failed = True
        return VerificationError(reason)

    def _pull(self, chunk: bytes) -> bytes:
        assert self._stream is not None
        try:
            plaintext, tag = self._stream.pull(chunk)
        except VerificationError as exc:
            raise self._fail(exc.reason) from exc
        if tag == _sodium.SECRETSTREAM_TAG_FINAL:
            self._final_seen = True
        elif tag != _sodium.SECRETSTREAM_TAG_MESSAGE:
            raise self._fail(f"unexpected secretstream tag {tag}")
        elif len(chunk) != CIPHERTEXT_CHUNK_SIZE:
            raise self._fail("short chunk before the final chunk")
        self._size += len(plaintext)
        if self._size > self._max_size:
            self._failed = True
            raise LimitExceeded("attachment larger than allowed")
        self._hash.update(plaintext)
        return plaintext

    def feed(self, data: bytes) -> bytes:
        """Take ciphertext; return plaintext of the chunks now complete (maybe ``b""``)."""
        if self._failed:
            raise VerificationError("decryptor already failed")
        if self._final_seen and data:
            raise self._fail("data after the final chunk")
        self._buffer += data
        if self._stream is None:
            if len(self._buffer) < HEADER_BYTES:
                return b""
            self._stream = _sodium.SecretStreamPull(self._key, bytes(self._buffer[:HEADER_BYTES]))
            del self._buffer[:HEADER_BYTES]
        out = []
        while len(self._buffer) >= CIPHERTEXT_CHUNK_SIZE and not self._final_seen:
            out.append(self._pull(bytes(self._buffer[:CIPHERTEXT_CHUNK_SIZE])))
            del self._buffer[:CIPHERTEXT_CHUNK_SIZE]
        if self._final_seen and self._buffer:
            raise self._fail("data after the final chunk")
        return b"".join(out)

    def finish(self) -> bytes:
        """Decrypt what is left, which must end the stream with TAG_FINAL (else truncation)."""
        if self._failed:
            raise VerificationError("decryptor already failed")
        out = b""
        if not self._final_seen:
            if self._stream is None or not self._buffer:
                raise self._fail("stream truncated: no final chunk")
            out = self._pull(bytes(self._buffer))
            self._buffer.clear()
            if not self._final_seen:
                raise self._fail("stream truncated: last chunk is not final")
        return out


@dataclass(frozen=True, slots=True)
class EncryptedAttachment:
    """Result of :func:`encrypt_attachment`: upload ``ciphertext``, seal the rest."""

    key: bytes
    ciphertext: bytes
    sha256: bytes
    size: int

    def __repr__(self) -> str:
        return f"EncryptedAttachment(size={self.size}, key=<hidden>)"

    def descriptor(
        self,
        attachment_id: str,
        media_type: str,
        *,
        width: int | None = None,
        height: int | None = None,
    ) -> AttachmentDescriptor:
        return AttachmentDescriptor(
            attachment_id=attachment_id,
            key=self.key,
            sha256=self.sha256,
            size=self.size,
            media_type=media_type,
            width=width,
            height=height,
        )


def encrypt_attachment(data: bytes, *, rng: Rng = random_bytes) -> EncryptedAttachment:
    """Encrypt a whole attachment under a fresh key (32 bytes from ``rng``, then the header)."""
    key = rng(KEY_BYTES)
    enc = AttachmentEncryptor(key, rng=rng)
    ciphertext = enc.header + enc.feed(data) + enc.finish()
    return EncryptedAttachment(key=key, ciphertext=ciphertext, sha256=enc.sha256, size=enc.size)


def decrypt_attachment(
    blob: bytes,
    key: bytes,
    *,
    expected_sha256: bytes | None = None,
    expected_size: int | None = None,
    max_size: int = MAX_ATTACHMENT_SIZE,
) -> bytes:
    """Decrypt a whole stream; check the descriptor's hash and size when given.

    VerificationError on any failure (LimitExceeded above ``max_size``).
    """
    if len(key) != KEY_BYTES:
        raise VerificationError("attachment key has the wrong length")
    dec = AttachmentDecryptor(key, max_size=max_size)
    plaintext = dec.feed(blob) + dec.finish()
    if expected_size is not None and dec.size != expected_size:
        raise VerificationError("attachment size differs from its descriptor")
    if expected_sha256 is not None and not _sodium.constant_time_equal(dec.sha256, expected_sha256):
        raise VerificationError("attachment SHA-256 differs from its descriptor")
    return plaintext
