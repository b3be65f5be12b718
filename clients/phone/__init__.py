"""The intern's phone app: TypeScript in this folder (see README.md), served by
:mod:`clients.phone.serve` (``lightbox-phone``), never by the relay."""

__all__: list[str] = []
