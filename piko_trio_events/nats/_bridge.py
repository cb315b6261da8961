"""The trio <-> asyncio bridge, batching crossings in both directions.

nats-py runs on trio-asyncio's loop. Crossing from trio into asyncio with
``aio_as_trio`` per call costs 70-170 us, so this module crosses once at
setup and then talks through plain data structures in the one thread both
sides share:

* trio -> asyncio: :class:`Bridge` owns a deque of outgoing items (core
  publishes and jobs) and one long-lived asyncio *pump* task. Trio appends
  and, only on empty -> non-empty, wakes the pump by resolving the asyncio
  future it waits on (``Future.set_result`` directly; same thread). The
  pump drains everything queued in one go, so one flush carries a batch.
  The deque is bounded in items and in encoded bytes: a producer that
  finds it full waits (backpressure). The byte bound keeps batches of large
  messages small: every batch is joined and copied on its way to the
  socket, and a 64 MiB batch of 64 KiB messages ran at half the speed of
  nats-py's own 2 MiB ones. While the pump is :attr:`Bridge.idle` a
  producer may write to the connection itself (nothing queued could be
  overtaken): the provider does so for a command after a quiet spell,
  sparing the pump's scheduling round.
* asyncio -> trio: :class:`Inbox` is a bounded deque filled by nats-py
  subscription callbacks; the callback wakes trio with ``trio.Event.set()``
  only on empty -> non-empty, and when the inbox is full it awaits an
  asyncio future that trio resolves once it has made room, so nats-py's own
  (bounded) pending queue takes the overflow. (On the provider's fast path
  nats-py's read loop fills it with ``put_nowait`` instead, and the
  provider bounds it itself: see ``_CoreSubscription``.)

Nothing here leaves an asyncio task behind: jobs are tracked and cancelled
when their trio caller is cancelled, and :meth:`Bridge.aclose` cancels and
awaits every task the bridge started.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

import outcome
import trio

from .._errors import ProviderClosedError
from ._internals import class_at

__all__ = ["Bridge", "Inbox", "Job"]

T = TypeVar("T")

#: Seconds a cancelled job gets to finish its asyncio side.
_CANCEL_GRACE = 5.0


class Job(Generic[T]):
    """An asyncio coroutine function run by the pump, awaited from trio."""

    __slots__ = ("_args", "_cancelled", "_done", "_fn", "_inline", "_outcome", "_task")

    def __init__(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], inline: bool = False
    ) -> None:
        self._inline = inline
        self._fn = fn
        self._args = args
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancelled = False

    def _start(self, bridge: Bridge) -> None:
        if self._cancelled:
            self._finish(outcome.Error(asyncio.CancelledError()))
            return
        task = bridge._loop.create_task(self._run())
        self._task = task
        bridge._tasks.add(task)
        task.add_done_callback(bridge._tasks.discard)

    async def _run(self) -> None:
        try:
            value = await self._fn(*self._args)
        except BaseException as exc:
            self._finish(outcome.Error(exc))
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise
        else:
            self._finish(outcome.Value(value))

    def _finish(self, result: outcome.Outcome[T]) -> None:
        if self._outcome is None:
            self._outcome = result
            self._done.set()

    def cancel(self) -> None:
        """Cancel the job: it never starts, or its asyncio task is cancelled."""
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()

    async def wait(self, grace: float = _CANCEL_GRACE) -> T:
        """Wait for the result (trio). If cancelled, cancel the job and wait
        for it, at most ``grace`` seconds (0: do not wait; the bridge's close
        cancels and awaits whatever is left)."""
        try:
            await self._done.wait()
        except trio.Cancelled:
            self.cancel()
            # asyncio cancellation is cooperative: wait (boundedly) for it to land.
            with trio.move_on_after(grace) as scope:
                scope.shield = True
                await self._done.wait()
            raise
        assert self._outcome is not None
        try:
            return self._outcome.unwrap()
        except asyncio.CancelledError:
            # Cancelled from the asyncio side: the bridge is closing.
            raise ProviderClosedError("the provider closed before this finished") from None


class Bridge:
    """One asyncio pump task serving a trio program; see the module docstring.

    Use from trio only. ``serve`` must run (in a nursery) for anything queued
    to happen.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, limit: int = 1024, byte_limit: int = 1 << 20
    ) -> None:
        self._loop = loop
        self._limit = limit
        self._byte_limit = byte_limit
        self._out: deque[Any] = deque()
        #: Bytes of the encoded commands queued in ``_out`` by :meth:`queue`;
        #: zero once the pump took them all.
        self.queued_bytes = 0
        self._wake: asyncio.Future[None] | None = None
        self._space: trio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publish: Callable[..., Awaitable[None]] | None = None
        self._write: Callable[[list[bytes]], Awaitable[None]] | None = None
        self._on_publish_error: Callable[[BaseException, int], None] | None = None
        self._closed = False
        self._pump_task: asyncio.Task[Any] | None = None
        self.publish_errors = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def set_publisher(
        self,
        publish: Callable[..., Awaitable[None]],
        write: Callable[[list[bytes]], Awaitable[None]],
        on_error: Callable[[BaseException, int], None] | None = None,
    ) -> None:
        """Set how queued publishes reach the connection (asyncio coroutine functions).

        ``publish(subject, payload, reply, headers)`` sends one message;
        ``write(commands)`` hands a batch of encoded commands to the
        connection's outgoing buffer and kicks its flusher once.
        """
        self._publish = publish
        self._write = write
        self._on_publish_error = on_error

    # -- trio side -----------------------------------------------------------

    def _kick(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    def push(self, item: Any) -> None:
        """Queue a core publish, encoded (``bytes``) or as ``(subject, payload,
        reply, headers)``; never waits."""
        out = self._out
        out.append(item)
        if len(out) == 1:
            self._kick()

    def queue(self, commands: list[bytes], size: int) -> bool:
        """Queue encoded commands (``size`` bytes in all), in order after
        everything queued before; never waits. True when the queue is now
        full: the producer should :meth:`wait_space` (backpressure)."""
        out = self._out
        was_empty = not out
        out.extend(commands)
        queued = self.queued_bytes = self.queued_bytes + size
        if was_empty:
            self._kick()
        return len(out) >= self._limit or queued >= self._byte_limit

    @property
    def idle(self) -> bool:
        """Whether the pump waits for work, holding none: a command written to
        the connection now cannot overtake one queued before it."""
        return self._wake is not None and not self._out

    @property
    def full(self) -> bool:
        return len(self._out) >= self._limit or self.queued_bytes >= self._byte_limit

    async def wait_space(self) -> None:
        """Wait until the pump drained the outgoing queue (backpressure)."""
        while self._out and not self._closed:
            space = self._space
            if space is None:
                space = self._space = trio.Event()
            self._kick()
            await space.wait()

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Job[T]:
        """Queue ``fn(*args)`` to run as an asyncio task, started in order with publishes."""
        if self._closed:
            raise RuntimeError("the bridge is closed")
        job: Job[T] = Job(fn, args)
        self.push(job)
        return job

    def submit_inline(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Job[T]:
        """Queue ``fn(*args)`` to be awaited by the pump itself, strictly in order
        with publishes. Only for coroutines that do not block (nats-py's
        ``subscribe`` only buffers its SUB command)."""
        if self._closed:
            raise RuntimeError("the bridge is closed")
        job: Job[T] = Job(fn, args, inline=True)
        self.push(job)
        return job

    async def call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, grace: float = _CANCEL_GRACE
    ) -> T:
        """Run the asyncio coroutine function ``fn(*args)`` and return its result.

        Cancelled, it cancels the asyncio task and waits up to ``grace``
        seconds for the cancellation to land (see :meth:`Job.wait`).
        """
        return await self.submit(fn, *args).wait(grace)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pump until cancelled (trio; one crossing for its whole life)."""
        run_aio_coroutine = self._loop.run_aio_coroutine  # type: ignore[attr-defined]
        if os.environ.get("PIKO_NATS_PUBLIC_PATH") != "1":
            run_callbacks_in_batches(self._loop)
        task_status.started()
        await run_aio_coroutine(self._pump())

    async def aclose(self) -> None:
        """Stop the pump, cancel every other asyncio task on the loop and wait
        for them (trio; call it while the connection is closed, last)."""
        self._closed = True
        import trio_asyncio

        for item in self._out:
            if isinstance(item, Job):
                item.cancel()
                item._start(self)
        self._out.clear()
        self._kick()
        if self._space is not None:
            self._space.set()
        # Then every other asyncio task on the loop (nats-py's reader, flusher,
        # reconnect attempts, ...), while the loop still runs every callback:
        # trio-asyncio's own shutdown stops running callbacks at some point, and
        # a task whose cancellation still needs one (a pending connect) would
        # then never finish. Bounded by the caller's (shielded) deadline.
        tasks = [
            task
            for task in asyncio.all_tasks(self._loop)
            if task is not self._pump_task and not task.done()
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await trio_asyncio.run_aio_future(task)

    # -- asyncio side --------------------------------------------------------

    async def _pump(self) -> None:
        # The loop ends on ``aclose()`` by itself: nats-py swallows a
        # CancelledError in places (``_flush_pending``), so cancellation alone
        # cannot be trusted to stop it.
        self._pump_task = asyncio.current_task()
        out = self._out
        loop = self._loop
        while not self._closed:
            if not out:
                space = self._space
                if space is not None:
                    self._space = None
                    space.set()
                wake = self._wake = loop.create_future()
                await wake
                continue
            publish = self._publish
            write = self._write
            commands: list[bytes] = []
            while out:
                item = out.popleft()
                kind = type(item)
                if kind is bytes:  # an encoded core publish: the hot path
                    commands.append(item)
                    continue
                if commands:
                    await self._write_batch(write, commands)
                    commands = []
                if kind is tuple:
                    if publish is None:  # pragma: no cover - set before any publish
                        continue
                    try:
                        await publish(item[0], item[1], item[2], item[3])
                    except Exception as exc:  # core NATS is at-most-once
                        self._failed(exc, 1)
                elif item._inline and not item._cancelled:
                    await item._run()
                else:
                    item._start(self)
            self.queued_bytes = 0  # the queue is empty: everything counted was taken
            if commands:
                await self._write_batch(write, commands)

    async def _write_batch(
        self, write: Callable[[list[bytes]], Awaitable[None]] | None, commands: list[bytes]
    ) -> None:
        if write is None:  # pragma: no cover - set before any publish
            self._failed(RuntimeError("not connected"), len(commands))
            return
        try:
            await write(commands)
        except Exception as exc:  # core NATS is at-most-once
            self._failed(exc, len(commands))

    def _failed(self, exc: BaseException, count: int) -> None:
        self.publish_errors += count
        if self._on_publish_error is not None:
            self._on_publish_error(exc, count)


#: At most this many asyncio callbacks run in one trio scheduling round.
_CALLBACKS_A_ROUND = 64

#: The parameters of the two loop methods replaced, as bound methods.
_MAIN_LOOP_ONE_PARAMETERS: Final = ("no_wait",)
_IO_TASK_PARAMETERS: Final = ("fd", "handle", "wait_ready")
#: The handle attributes :func:`_io_task` reads, by the class that provides
#: them (``module:Class``): trio-asyncio's reader and writer handles.
_HANDLE_ATTRIBUTES: Final = {
    "trio_asyncio._handles:ScopedHandle": ("_scope", "_raise"),
    "asyncio.events:Handle": ("_cancelled", "_run"),
}

logger = logging.getLogger("piko_trio_events.nats")


def _parameters(method: Any) -> tuple[tuple[str, Any], ...] | None:
    """(name, kind) of each parameter of ``method``; None when there is no
    such method, or it is not introspectable."""
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    return tuple((p.name, p.kind) for p in signature.parameters.values())


def _positional(names: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    return tuple((name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names)


def _provides(cls: Any, name: str) -> bool:
    """Whether instances of ``cls`` have ``name``: a method or slot of the
    class, or an attribute one of its ``__init__`` methods sets."""
    if cls is None:
        return False
    if hasattr(cls, name):
        return True
    for klass in getattr(cls, "__mro__", ()):
        code = getattr(klass.__dict__.get("__init__"), "__code__", None)
        if code is not None and name in code.co_names:
            return True
    return False


def missing_loop_internals(loop: Any) -> tuple[str, ...]:
    """The trio-asyncio internals :func:`run_callbacks_in_batches` relies on
    that ``loop`` (trio-asyncio's loop) lacks, or has in another shape; empty
    when all are there.

    They are: ``loop._main_loop_one(no_wait)`` (its one parameter, which the
    batched version passes on by position, and trio-asyncio by keyword),
    ``loop._io_task(fd, handle, wait_ready)`` (replaced by a copy without its
    ``synchronize()``), and what that copy reads of the handle:
    ``ScopedHandle._scope``, ``ScopedHandle._raise``, ``Handle._cancelled``
    and ``Handle._run``. ``tests/nats/test_internals.py`` is their canary,
    with how they are used beyond being there.
    """
    gone = []
    if _parameters(getattr(loop, "_main_loop_one", None)) != _positional(_MAIN_LOOP_ONE_PARAMETERS):
        gone.append(f"loop._main_loop_one({', '.join(_MAIN_LOOP_ONE_PARAMETERS)})")
    if _parameters(getattr(loop, "_io_task", None)) != _positional(_IO_TASK_PARAMETERS):
        gone.append(f"loop._io_task({', '.join(_IO_TASK_PARAMETERS)})")
    for path, names in _HANDLE_ATTRIBUTES.items():
        cls = class_at(path)
        label = path.partition(":")[2]
        gone += [f"{label}.{name}" for name in names if not _provides(cls, name)]
    return tuple(gone)


def run_callbacks_in_batches(loop: asyncio.AbstractEventLoop) -> bool:
    """Make trio-asyncio's ``loop`` run every asyncio callback already queued
    (up to ``_CALLBACKS_A_ROUND``) in one trio scheduling round, as asyncio
    does, instead of one callback a round; False (nothing changed) when
    already done, or when this trio-asyncio lacks one of the internals it
    relies on (:func:`missing_loop_internals`; then neither method is
    replaced, and the loop runs as trio-asyncio made it, slower).

    trio-asyncio's main loop takes one callback from its queue, runs it and
    awaits the next (a trio checkpoint: a full scheduling round per asyncio
    callback). Here, after the step that waited, the steps that follow take
    what is already queued without waiting (trio-asyncio's own ``no_wait``
    mode), in order; a due timer is one of them. The callbacks run in the
    same order, in the same task, only with fewer rounds in between. The
    loop's reader and writer tasks started from now on are :func:`_io_task`.
    """
    one = getattr(loop, "_main_loop_one", None)
    if one is None or getattr(one, "_piko_batched", False):
        return False
    gone = missing_loop_internals(loop)
    if gone:
        logger.debug(
            "trio-asyncio lacks %s: its loop runs one asyncio callback a trio round",
            ", ".join(gone),
        )
        return False
    would_block = trio.WouldBlock
    limit = _CALLBACKS_A_ROUND

    async def batched(no_wait: bool = False) -> None:
        await one(no_wait)
        for _ in range(limit):
            try:
                await one(True)
            except would_block:
                return

    batched._piko_batched = True  # type: ignore[attr-defined]
    loop._main_loop_one = batched  # type: ignore[attr-defined]
    loop._io_task = _io_task  # type: ignore[attr-defined]
    return True


async def _io_task(fd: int, handle: Any, wait_ready: Callable[[int], Awaitable[None]]) -> None:
    """trio-asyncio's reader (or writer) task without its ``synchronize()``
    after each callback: that waits for a callback queued behind everything
    else (one more round of the task and a callback of the loop for every
    read), and the next wait for the socket is a schedule point anyway."""
    with handle._scope:
        try:
            while not handle._cancelled:
                try:
                    await wait_ready(fd)
                except OSError:
                    if handle._cancelled:
                        break
                    raise
                if handle._cancelled:
                    break
                handle._run()
        except Exception as exc:
            handle._raise(exc)


class Inbox(Generic[T]):
    """A bounded buffer from nats-py callbacks (asyncio) to one trio consumer.

    ``put`` is the asyncio side (a nats-py callback); ``get_nowait`` /
    ``wait`` the trio side. When the inbox holds ``limit`` items, ``put``
    waits until trio has taken half of them.
    """

    __slots__ = ("_closed", "_items", "_limit", "_loop", "_room", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._items: deque[T] = deque()
        self._limit = limit
        self._waiter: trio.Event | None = None
        self._room: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    # asyncio side
    async def put(self, item: T) -> None:
        items = self._items
        items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()
        if len(items) >= self._limit and not self._closed:
            room = self._room = self._loop.create_future()
            await room

    def put_nowait(self, item: T) -> None:
        """Add an item, past the limit if need be; never waits (trio: a local
        requeue; asyncio: a producer that bounds the inbox itself)."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    # trio side
    def get_nowait(self) -> T:
        items = self._items
        if not items:
            raise trio.WouldBlock
        item = items.popleft()
        room = self._room
        if room is not None and len(items) <= self._limit // 2:
            self._room = None
            if not room.done():
                room.set_result(None)
        return item

    def drain(self) -> list[T]:
        """Take everything buffered (trio side)."""
        items = list(self._items)
        self._items.clear()
        self._release()
        return items

    def _release(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)

    async def wait(self) -> None:
        """Wait until an item is available or the inbox is closed (trio)."""
        if self._items or self._closed:
            return
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = trio.Event()
        await waiter.wait()

    def wake(self) -> None:
        """Wake a waiting consumer without an item (trio or asyncio side)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def close(self) -> None:
        self._closed = True
        self._release()
        self.wake()

    @property
    def closed(self) -> bool:
        return self._closed
