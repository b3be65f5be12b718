"""The vault's images and their tombstones (clients/sdk/vault.py has the design): each image
under a random key of its own, wrapped by the vault's image-keys key; shredding deletes the
key and the ciphertext in one transaction and leaves a tombstone, so an image expired before it
was ever fetched is refused later (docs/PROTOCOL.md §15).

:class:`VaultImages` works inside its :class:`~clients.sdk.vault.Vault` (its lock, connection
and keys); the vault exposes its methods as its own (``vault.put_image`` ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3

import msgspec

from clients.sdk.vaultrows import (
    MAX_IMAGE_BYTES,
    ImageInfo,
    ImageShredded,
    ItemNotFound,
    StoredImage,
    Tombstone,
    VaultCore,
    VaultCorrupt,
    check_id,
    decode_row,
    open_row,
    row_label,
    seal_row,
)
from protocol.keys import SecretBytes
from protocol.local import LOCAL_KEY_BYTES, new_local_key

__all__ = ["VaultImages"]


class VaultImages:
    def __init__(self, vault: VaultCore) -> None:
        self._vault = vault

    def put_image(
        self,
        attachment_id: str,
        data: bytes,
        *,
        media_type: str,
        width: int | None = None,
        height: int | None = None,
        thread_id: str | None = None,
        message_id: str | None = None,
        record_reference: str | None = None,
    ) -> ImageInfo:
        """Encrypt ``data`` under a fresh key of its own and store it. Storing an id again
        replaces it; an id that was shredded is refused (ImageShredded)."""
        check_id(attachment_id, "attachment_id")
        if not isinstance(data, bytes):
            raise TypeError("image data must be bytes")
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"image over the {MAX_IMAGE_BYTES} byte limit")
        with self._vault._mutex:
            db = self._vault._use()
            keys = self._vault._k()
            tombstone = self._tombstone(db, attachment_id)
            if tombstone is not None:
                raise ImageShredded(tombstone)
            image_key = new_local_key()
            info = ImageInfo(attachment_id=attachment_id, media_type=media_type,
                             size=len(data), sha256=hashlib.sha256(data).digest(),
                             stored_at=self._vault._now(), width=width, height=height,
                             thread_id=thread_id,
                             message_id=message_id, record_reference=record_reference)
            row = (
                attachment_id,
                seal_row(keys.image_keys, row_label("image-key", attachment_id),
                         image_key.reveal()),
                seal_row(image_key, row_label("image-info", attachment_id),
                         msgspec.msgpack.encode(info)),
                seal_row(image_key, row_label("image-data", attachment_id), data),
            )
            with self._vault._sql(db) as conn:
                conn.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)", row)
            return info

    def image_info(self, attachment_id: str) -> ImageInfo:
        with self._vault._mutex:
            db = self._vault._use()
            image_key, sealed_info = self._image_row(db, attachment_id, "sealed_info")
            return self._decode_info(image_key, attachment_id, sealed_info)

    def get_image(self, attachment_id: str) -> StoredImage:
        """The decrypted image, in memory. ImageShredded after :meth:`shred`."""
        with self._vault._mutex:
            db = self._vault._use()
            image_key, sealed_info = self._image_row(db, attachment_id, "sealed_info")
            info = self._decode_info(image_key, attachment_id, sealed_info)
            _, sealed_data = self._image_row(db, attachment_id, "sealed_data")
            data = open_row(image_key, row_label("image-data", attachment_id), sealed_data)
            if len(data) != info.size or hashlib.sha256(data).digest() != info.sha256:
                raise VaultCorrupt(f"image {attachment_id} is damaged")
            return StoredImage(info=info, data=data)

    def images(self) -> list[ImageInfo]:
        """Every image still held (not shredded), oldest first."""
        with self._vault._mutex:
            db = self._vault._use()
            with self._vault._sql(db) as conn:
                rows = conn.execute(
                    "SELECT attachment_id, wrapped_key, sealed_info FROM images").fetchall()
            found = [self._decode_info(self._unwrap(aid, wrapped), aid, sealed)
                     for aid, wrapped, sealed in rows]
        return sorted(found, key=lambda i: i.stored_at)

    def set_record_reference(self, attachment_id: str, record_reference: str) -> None:
        """Remember where the record keeps this image (from the filing receipt); the
        tombstone keeps it after shredding. A tombstone without one (its expiry order came
        before the receipt, or before the image was ever fetched) takes it; one that has a
        reference keeps it."""
        with self._vault._mutex:
            db = self._vault._use()
            try:
                image_key, sealed_info = self._image_row(db, attachment_id, "sealed_info")
            except ImageShredded as exc:
                if exc.tombstone.record_reference is not None:
                    return
                sealed_reference = seal_row(self._vault._k().tombstones,
                                            row_label("tombstones", attachment_id),
                                         record_reference.encode())
                with self._vault._sql(db) as conn:
                    conn.execute("UPDATE tombstones SET sealed_reference = ? "
                                 "WHERE attachment_id = ?", (sealed_reference, attachment_id))
                return
            info = msgspec.structs.replace(
                self._decode_info(image_key, attachment_id, sealed_info),
                record_reference=record_reference)
            sealed = seal_row(image_key, row_label("image-info", attachment_id),
                           msgspec.msgpack.encode(info))
            with self._vault._sql(db) as conn:
                conn.execute("UPDATE images SET sealed_info = ? WHERE attachment_id = ?",
                             (sealed, attachment_id))

    def shred(self, attachment_id: str, *, record_reference: str | None = None) -> Tombstone:
        """Delete the image's key and ciphertext for good and leave a tombstone.

        Idempotent: shredding again returns the existing tombstone (expiry orders can arrive
        twice). ItemNotFound if the vault never held the image.
        """
        with self._vault._mutex:
            db = self._vault._use()
            keys = self._vault._k()
            existing = self._tombstone(db, attachment_id)
            if existing is not None:
                return existing
            if record_reference is None:
                record_reference = self.image_info(attachment_id).record_reference
            shredded_at = self._vault._now()
            sealed_reference = None if record_reference is None else seal_row(
                keys.tombstones, row_label("tombstones", attachment_id), record_reference.encode())
            with self._vault._sql(db) as conn:
                deleted = conn.execute("DELETE FROM images WHERE attachment_id = ?",
                                       (attachment_id,)).rowcount
                if deleted != 1:
                    raise ItemNotFound(f"no image {attachment_id} in this vault")
                conn.execute("INSERT INTO tombstones VALUES (?, ?, ?)",
                             (attachment_id, shredded_at, sealed_reference))
            return Tombstone(attachment_id, record_reference, shredded_at)

    def expire(self, attachment_id: str, *, record_reference: str | None = None) -> Tombstone:
        """Apply an expiry order (docs/PROTOCOL.md §15): shred the image if it is held, and
        leave a tombstone even if it never was, so that a delivery or download arriving after
        the order is refused by :meth:`put_image` (ImageShredded). Idempotent."""
        check_id(attachment_id, "attachment_id")
        with self._vault._mutex:
            db = self._vault._use()
            existing = self._tombstone(db, attachment_id)
            if existing is not None:
                return existing
            with contextlib.suppress(ItemNotFound):
                return self.shred(attachment_id, record_reference=record_reference)
            shredded_at = self._vault._now()
            sealed_reference = None if record_reference is None else seal_row(
                self._vault._k().tombstones, row_label("tombstones", attachment_id),
                record_reference.encode())
            with self._vault._sql(db) as conn:
                conn.execute("INSERT INTO tombstones VALUES (?, ?, ?)",
                             (attachment_id, shredded_at, sealed_reference))
            return Tombstone(attachment_id, record_reference, shredded_at)

    def tombstone(self, attachment_id: str) -> Tombstone | None:
        with self._vault._mutex:
            return self._tombstone(self._vault._use(), attachment_id)

    def tombstones(self) -> list[Tombstone]:
        with self._vault._mutex:
            db = self._vault._use()
            with self._vault._sql(db) as conn:
                ids = [r[0] for r in conn.execute(
                    "SELECT attachment_id FROM tombstones ORDER BY shredded_at").fetchall()]
            return [t for t in (self._tombstone(db, i) for i in ids) if t is not None]

    def _tombstone(self, db: sqlite3.Connection, attachment_id: str) -> Tombstone | None:
        with self._vault._sql(db) as conn:
            row = conn.execute("SELECT shredded_at, sealed_reference FROM tombstones "
                               "WHERE attachment_id = ?", (attachment_id,)).fetchone()
        if row is None:
            return None
        reference = None if row[1] is None else open_row(
            self._vault._k().tombstones, row_label("tombstones", attachment_id), row[1]).decode()
        return Tombstone(attachment_id, reference, float(row[0]))

    def _image_row(self, db: sqlite3.Connection, attachment_id: str,
                   column: str) -> tuple[SecretBytes, object]:
        assert column in ("sealed_info", "sealed_data")
        with self._vault._sql(db) as conn:
            row = conn.execute(f"SELECT wrapped_key, {column} FROM images "
                               "WHERE attachment_id = ?", (attachment_id,)).fetchone()
        if row is None:
            tombstone = self._tombstone(db, attachment_id)
            if tombstone is not None:
                raise ImageShredded(tombstone)
            raise ItemNotFound(f"no image {attachment_id} in this vault")
        return self._unwrap(attachment_id, row[0]), row[1]

    def _unwrap(self, attachment_id: str, wrapped: object) -> SecretBytes:
        key = open_row(self._vault._k().image_keys, row_label("image-key", attachment_id), wrapped)
        if len(key) != LOCAL_KEY_BYTES:
            raise VaultCorrupt(f"the key of image {attachment_id} is damaged")
        return SecretBytes(key)

    def _decode_info(self, image_key: SecretBytes, attachment_id: str,
                     sealed: object) -> ImageInfo:
        return decode_row(image_key, "image-info", attachment_id, sealed, ImageInfo,
                          f"the record of image {attachment_id}")
