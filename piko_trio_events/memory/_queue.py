"""A bounded multi-producer, multi-consumer queue with direct hand-off.

Like a trio memory channel (a waiting receiver gets an item handed to it
without a buffer round trip), plus what a group queue needs: items can be put
back past the bound (a redelivery was admitted once already), the buffered
items can be taken out at close, and the waiting receivers of one
subscription can be woken with an error when that subscription closes.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Generic, TypeVar

import outcome
import trio
from trio.lowlevel import current_task, reschedule, wait_task_rescheduled

__all__ = ["GroupQueue"]

T = TypeVar("T")


class GroupQueue(Generic[T]):
    __slots__ = ("_receivers", "_senders", "capacity", "items")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[T] = deque()
        # waiting receiver task -> the owner it receives for (to wake it on close)
        self._receivers: OrderedDict[trio.lowlevel.Task, object] = OrderedDict()
        # waiting sender task -> the item it wants to put
        self._senders: OrderedDict[trio.lowlevel.Task, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity and not self._receivers

    def put_nowait(self, item: T) -> bool:
        """Hand ``item`` to a waiting receiver or buffer it; False if full."""
        if self._receivers:
            task, _ = self._receivers.popitem(last=False)
            reschedule(task, outcome.Value(item))
            return True
        if len(self.items) < self.capacity:
            self.items.append(item)
            return True
        return False

    def put_back(self, item: T) -> None:
        """Put ``item`` in the queue even past the bound (redelivery)."""
        if self._receivers:
            task, _ = self._receivers.popitem(last=False)
            reschedule(task, outcome.Value(item))
        else:
            self.items.append(item)

    def put_front(self, item: T) -> None:
        """Put ``item`` back at the head (it was taken but never handed out)."""
        if self._receivers:
            task, _ = self._receivers.popitem(last=False)
            reschedule(task, outcome.Value(item))
        else:
            self.items.appendleft(item)

    async def put(self, item: T) -> None:
        """Put ``item``, waiting while the queue is full (no checkpoint otherwise)."""
        if self.put_nowait(item):
            return
        task = current_task()
        self._senders[task] = item

        def abort(_: Any) -> trio.lowlevel.Abort:
            del self._senders[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def get_nowait(self) -> T:
        """Take the next item, or raise trio.WouldBlock."""
        if self.items:
            item = self.items.popleft()
            if self._senders:
                task, waiting = self._senders.popitem(last=False)
                self.items.append(waiting)
                trio.lowlevel.reschedule(task)
            return item
        raise trio.WouldBlock

    async def get(self, owner: object) -> T:
        """Wait for the next item (assumes :meth:`get_nowait` just raised WouldBlock)."""
        task = current_task()
        self._receivers[task] = owner

        def abort(_: Any) -> trio.lowlevel.Abort:
            del self._receivers[task]
            return trio.lowlevel.Abort.SUCCEEDED

        return await wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def wake_receivers(self, owner: object, error: BaseException) -> None:
        """Raise ``error`` in every task waiting in :meth:`get` for ``owner``."""
        for task, task_owner in list(self._receivers.items()):
            if task_owner is owner:
                del self._receivers[task]
                trio.lowlevel.reschedule(task, outcome.Error(error))

    def wake_senders(self, error: BaseException) -> None:
        """Raise ``error`` in every task waiting in :meth:`put`."""
        senders, self._senders = self._senders, OrderedDict()
        for task in senders:
            trio.lowlevel.reschedule(task, outcome.Error(error))

    def drain(self) -> list[T]:
        """Remove and return every buffered item."""
        items = list(self.items)
        self.items.clear()
        return items
