"""Replies to JetStream publishes and confirmed acks: one inbox subscription,
waiters counted per batch.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING

import trio

from . import _internals as internals
from ._limits import _PENDING_BYTES, _PENDING_MSGS

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from ._connection import _Connection

logger = logging.getLogger("piko_trio_events.nats")


class _Waiter:
    """Replies expected for one batch (a JetStream publish, a confirmed ack)."""

    __slots__ = (
        "_done",
        "_prefix",
        "_scope",
        "_seen",
        "no_stream",
        "reason",
        "refused",
        "remaining",
        "unconfirmed",
    )

    def __init__(self, prefix: bytes, count: int) -> None:
        self._prefix = prefix
        self._seen = bytearray(count)
        self.remaining = count
        self.unconfirmed = count
        self.reason = ""
        self.no_stream = False
        self.refused = False  # the server refused one for good (a 4xx error)
        self._done = trio.Event()
        self._scope: trio.CancelScope | None = None  # while waiting

    def reply(self, index: int) -> bytes:
        return self._prefix + str(index).encode()

    def _answer(
        self, index: int, error: str | None, no_stream: bool = False, refused: bool = False
    ) -> None:
        seen = self._seen
        if index >= len(seen) or seen[index]:
            return
        seen[index] = 1
        self.remaining -= 1
        if error is None:
            self.unconfirmed -= 1
        else:
            self.reason = self.reason or error
            self.no_stream = self.no_stream or no_stream
            self.refused = self.refused or refused
        if self.remaining == 0:
            self._done.set()

    def fail(self, reason: str) -> None:
        """Give up on the replies still expected: ``wait`` returns at once."""
        if self.remaining:
            self.reason = self.reason or reason
            self._done.set()

    async def wait(self, limit: float, until: float = math.inf) -> None:
        """Wait for every reply, at most ``limit`` seconds and not past
        ``until`` (trio time), shielded from cancellation (what is in flight
        finishes or fails first)."""
        # (The deadline given to the constructor: setting it on an entered scope
        # costs several microseconds more, a good part of a JetStream publish.)
        with trio.CancelScope(
            shield=True, deadline=min(trio.current_time() + limit, until)
        ) as scope:
            self._scope = scope  # (for wait_until: the drain may bring it forward)
            await self._done.wait()
        self._scope = None

    def wait_until(self, until: float) -> None:
        """Bring the end of a wait in progress forward to ``until`` (trio time)."""
        scope = self._scope
        if scope is not None and until < scope.deadline:
            scope.deadline = until


class _Replies:
    """One inbox subscription collecting the replies of JetStream publishes and
    confirmed acks, counted per batch: no asyncio future per message (each
    future callback would cost a trio scheduling round under trio-asyncio)."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._waiters: dict[str, _Waiter] = {}
        self._prefix = ""
        self._next = 0

    async def start(self) -> None:
        conn = self._conn
        nc = conn.nc
        assert nc is not None
        self._prefix = nc.new_inbox() + "."
        # On the fast path nats-py hands each reply to this stand-in future
        # inside its read loop, sparing the subscription task's scheduling round.
        fast = conn.fast
        await conn.bridge.call(
            internals.subscribe,
            nc,
            self._prefix + ">",
            "",
            _PENDING_MSGS,
            _PENDING_BYTES,
            internals.ReadLoopDispatch(self._on_reply_now, self._on_reply_raw) if fast else None,
            None if fast else self._on_reply,
        )

    def expect(self, count: int) -> _Waiter:
        self._next += 1
        key = str(self._next)
        waiter = _Waiter(f"{self._prefix}{key}.".encode(), count)
        self._waiters[key] = waiter
        return waiter

    def closing_by(self, until: float) -> None:
        """The drain began: waits in progress end by ``until`` too (the ones
        that start later are given it by their callers)."""
        for waiter in self._waiters.values():
            waiter.wait_until(until)

    def forget(self, waiter: _Waiter) -> None:
        key = waiter._prefix.decode()[len(self._prefix) : -1]
        self._waiters.pop(key, None)

    async def _on_reply(self, msg: Msg) -> None:
        self._on_reply_now(msg)

    def _on_reply_now(self, msg: Msg) -> None:
        headers = msg.headers
        self._answer(msg.subject, msg.data, headers.get("Status") if headers else None)

    def _on_reply_raw(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        # An inline status: "NATS/1.0 503\r\n..." (a space after the version).
        status = headers[9:12].decode() if headers and headers[8:9] == b" " else None
        self._answer(subject.decode(), data, status)

    def _answer(self, subject: str, data: bytes, status: str | None) -> None:
        key, _, index = subject[len(self._prefix) :].partition(".")
        waiter = self._waiters.get(key)
        if waiter is None or not index.isdigit():
            return
        if status == "503":
            waiter._answer(
                int(index), "no response from stream (no stream holds the subject)", True
            )
        else:
            if b'"error"' in data:
                # A 5xx error (a full stream, JetStream temporarily unavailable)
                # may pass; a 4xx one (a message the stream cannot take) will not.
                code = 0
                try:
                    error = json.loads(data)["error"]
                    description = error.get("description", "error")
                    code = error.get("code", 0)
                except (ValueError, KeyError, AttributeError):
                    description = data.decode(errors="replace")
                refused = not (isinstance(code, int) and code >= 500)
                waiter._answer(int(index), str(description), refused=refused)
            else:
                waiter._answer(int(index), None)
        if waiter.remaining == 0:
            self._waiters.pop(key, None)
