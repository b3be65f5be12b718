"""The consult threads a device is in, as the relay lists them (ids, members, roles,
priority; never content), and the record thread each user files through."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence

import msgspec

from clients.sdk.errors import FlowError
from clients.sdk.filing import gateway_bundles
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import DeviceStore
from clients.sdk.trust import Trust
from clients.sdk.vault import Vault, VaultLocked
from protocol import api
from protocol.errors import ErrorCode
from protocol.model import Priority

__all__ = ["RECORD_THREAD_SUBJECT", "THREAD_NOTE", "ThreadBook", "listing_order"]

RECORD_THREAD_SUBJECT = "Filed to the patient's record"  # the record thread's subject line


THREAD_NOTE = "thread"  # vault notes: the relay's last word on each thread, for offline use


def listing_order(thread: api.ThreadInfo) -> tuple[bool, int, int]:
    """Where a thread is listed: urgent first, then newest activity, then newest made."""
    return (thread.priority != "urgent", -thread.last_seq, -thread.created_at)


class ThreadBook:
    """The threads as the relay last listed them, kept in the vault too (``vault``), so that a
    client started while the relay is out of reach still lists the consults it holds."""

    def __init__(self, relay: RelayHTTP, store: DeviceStore, trust: Trust,
                 vault: Vault | None = None) -> None:
        self._relay, self._store, self._trust = relay, store, trust
        self._vault = vault
        self._threads: dict[str, api.ThreadInfo] = {}
        self._loaded = vault is None

    def _load(self) -> None:
        """The threads kept by an earlier run, once the vault is open (this run's own
        answers from the relay take precedence)."""
        if self._loaded or self._vault is None:
            return
        try:
            kept = self._vault.notes(THREAD_NOTE)
        except VaultLocked:
            return
        self._loaded = True
        for thread_id, raw in kept.items():
            try:
                info = msgspec.msgpack.decode(raw, type=api.ThreadInfo)
            except msgspec.DecodeError:  # an older layout: the next listing replaces it
                continue
            self._threads.setdefault(thread_id, info)

    def _keep(self, info: api.ThreadInfo) -> None:
        self._load()
        if self._threads.get(info.thread_id) == info:
            return
        self._threads[info.thread_id] = info
        if self._vault is not None:
            with contextlib.suppress(VaultLocked):
                self._vault.put_note(THREAD_NOTE, info.thread_id, msgspec.msgpack.encode(info))

    async def create(self, users: Sequence[str] = (), roles: Sequence[str] = (),
                     priority: Priority = Priority.ROUTINE) -> api.ThreadInfo:
        """A new consult thread with these user ids and roles (we are always in it)."""
        info = await self._relay.create_thread(api.ThreadCreate(
            thread_id=str(uuid.uuid4()), users=list(users), roles=list(roles),
            priority=priority.value))
        self._keep(info)
        return info

    async def fetch(self) -> list[api.ThreadInfo]:
        """My threads from the relay (urgent first, then newest activity)."""
        found = (await self._relay.threads()).threads
        for t in found:
            self._keep(t)
        # The relay's answer is the list: a thread it no longer lists (the user removed from
        # it, or beyond the newest it lists) is forgotten here and in the vault.
        listed = {t.thread_id for t in found}
        for gone in [i for i in self._threads if i not in listed]:
            del self._threads[gone]
            if self._vault is not None:
                with contextlib.suppress(VaultLocked):
                    self._vault.drop_note(THREAD_NOTE, gone)
        return sorted(found, key=listing_order)

    def cached(self) -> list[api.ThreadInfo]:
        self._load()
        return list(self._threads.values())

    def ids(self) -> list[str]:
        self._load()
        return list(self._threads)

    def priority(self, thread_id: str) -> Priority:
        self._load()
        info = self._threads.get(thread_id)
        return Priority(info.priority) if info is not None else Priority.ROUTINE

    async def record_thread(self) -> tuple[str, str | None]:
        """This user's record thread: its only other members are the organisation's record
        gateway accounts (verified); found among the user's threads, or made once. Returns
        its id and, when it was just made, the subject its first message gives it."""
        st = self._store.state
        gateways = await gateway_bundles(self._relay, trusted_orgs=st.trusted_orgs(),
                                         revocations=await self._trust.revocations())
        if not gateways:
            raise FlowError("this organisation has no record gateway to file with",
                            code=ErrorCode.FILING_GATEWAY_MISSING.value)
        members = {st.user_id, *(g.device.user_id for g in gateways)}
        thread = next((t for t in await self.fetch()
                       if set(t.members) == members and not t.roles), None)
        if thread is None:
            thread = await self.create(sorted(members - {st.user_id}))
            return thread.thread_id, RECORD_THREAD_SUBJECT
        return thread.thread_id, None
