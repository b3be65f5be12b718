"""The specialist's desktop client: a local web page served by the client process
(clients/desktop/app.py), so keys and decrypted images never leave it."""

from __future__ import annotations

__all__: list[str] = []
