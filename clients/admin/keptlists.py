"""``lightbox-admin revocations save FILE`` and ``revocations restore FILE``: keep a copy of the
revocation lists the relay serves, and give a relay restored from a backup the newest lists
kept, so that the devices holding them accept the relay's again (docs/OPERATIONS.md "Backups",
"What a restore brings back").

A device refuses a revocation list older than the one it holds (a rollback, docs/PROTOCOL.md
§11): after a restore the relay serves the list of the backup's day until it is given one
numbered at least as high as the devices'. Each list is signed by its organisation's key; the
relay checks that signature, and that the list is not older than the one it holds, when it is
restored, so nothing here needs the organisation key. The file is what ``GET /v1/revocations``
answers (``{"lists": [...]}``): a copy taken with curl restores the same way. It holds user and
device ids and reasons IT wrote, no patient data; keep it with the backups."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from clients.admin.common import CommandError, admin_relay
from clients.admin.session import load_session
from clients.sdk.errors import RelayRequestError
from clients.sdk.failures import run_async
from clients.sdk.keystore import write_private_file
from clients.sdk.wording import counted
from protocol import api, certs
from protocol.canonical import peek_compact
from protocol.errors import ProtocolError

__all__ = ["register"]

# A kept file holds at most one list per organisation the relay trusts: far below this.
MAX_FILE_BYTES = 16 * 1024 * 1024


def _about(token: str) -> str:
    """``revocation list N of ORG (E entries)``, read from the list without its signature
    checked: to name it only (the relay checks it)."""
    try:
        rl = peek_compact(token, certs.RevocationList,
                          max_length=certs.MAX_REVOCATION_LIST_LENGTH)
    except ProtocolError:
        return "a revocation list that cannot be read"
    return (f"revocation list {rl.number} of {rl.org_id} "
            f"({counted(len(rl.entries), 'entry', 'entries')})")


def _save(args: argparse.Namespace) -> int:
    session = load_session()

    async def go() -> api.RevocationLists:
        async with admin_relay(session) as relay:
            return await relay.revocations()

    kept = run_async(go)
    if not kept.lists:  # an earlier copy in the file is worth more than an empty one
        print(f"the relay holds no revocation list: nothing kept, {args.file} left as it was")
        return 0
    path = Path(args.file)
    try:  # atomically: a crash leaves the earlier copy whole
        write_private_file(path, msgspec.json.encode(kept))
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    for token in kept.lists:
        print(f"kept {_about(token)}")
    print(f"in {path}")
    return 0


def _read(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise CommandError(f"no such file: {path}") from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if len(data) > MAX_FILE_BYTES:
            raise ValueError("too large")
        return msgspec.json.decode(data, type=api.RevocationLists).lists
    except (ValueError, msgspec.ValidationError):
        raise CommandError(f"{path} is not a copy of the relay's revocation lists (`lightbox-admin "
                           "revocations save FILE` writes one)") from None


def _restored(answer: Any) -> str:
    if not isinstance(answer, dict):
        return "restored"
    if answer.get("unchanged"):
        return "already held by the relay: nothing changed"
    said = [counted(len(answer.get(key) or []), noun) + " " + verb for key, noun, verb in (
        ("users_suspended", "user", "suspended again"),
        ("devices_revoked", "device", "revoked again"),
        ("users_resumed", "user", "resumed"),
    ) if answer.get(key)]
    return "restored" + (f": {', '.join(said)}" if said else "")


def _restore(args: argparse.Namespace) -> int:
    lists = _read(Path(args.file))
    if not lists:
        raise CommandError(f"{args.file} holds no revocation list: nothing to restore")
    session = load_session()

    async def go() -> list[tuple[str, str | None]]:
        done: list[tuple[str, str | None]] = []
        async with admin_relay(session) as relay:
            for token in lists:
                try:
                    done.append((_restored(await relay.upload_revocations(token)), None))
                except RelayRequestError as exc:
                    # This list refused (older than the relay's, not signed by a key it
                    # trusts...); a session that ended or a relay in trouble ends them all.
                    if exc.status in (401, 429) or exc.status >= 500:
                        raise
                    done.append(("", exc.said))
        return done

    refused = 0
    for token, (said, error) in zip(lists, run_async(go), strict=True):
        if error is None:
            print(f"{_about(token)} {said}")
        else:
            refused += 1
            print(f"{_about(token)} refused: {error}", file=sys.stderr)
    return 1 if refused else 0


def register(sub: Any) -> None:
    """Add ``revocations`` to ``lightbox-admin``'s subparsers (clients/admin/cli.py)."""
    rv = sub.add_parser("revocations", help="keep a copy of the relay's revocation lists, and "
                                            "restore it after a restore of the relay"
                        ).add_subparsers(dest="cmd", required=True)
    save = rv.add_parser("save", help="write the lists the relay serves to FILE")
    save.add_argument("file", metavar="FILE")
    save.set_defaults(func=_save)
    restore = rv.add_parser("restore", help="give the relay the lists kept in FILE")
    restore.add_argument("file", metavar="FILE")
    restore.set_defaults(func=_restore)

