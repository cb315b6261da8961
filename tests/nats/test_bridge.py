"""The trio <-> asyncio bridge on its own (no server needed)."""

from __future__ import annotations

import asyncio

import pytest
import trio
import trio.testing
import trio_asyncio

from piko_trio_events import ProviderClosedError
from piko_trio_events.nats._bridge import Bridge, Inbox


async def test_jobs_run_in_order_and_cancel_their_asyncio_task() -> None:
    with trio.fail_after(10):
        async with trio_asyncio.open_loop() as loop, trio.open_nursery() as nursery:
            bridge = Bridge(loop)
            await nursery.start(bridge.serve)
            order: list[str] = []

            async def record(name: str) -> str:
                order.append(name)
                await asyncio.sleep(0)
                return name.upper()

            assert await bridge.call(record, "a") == "A"
            jobs = [bridge.submit(record, n) for n in "bcd"]
            assert [await j.wait() for j in jobs] == ["B", "C", "D"]
            assert order == ["a", "b", "c", "d"]

            started = trio.Event()
            cancelled: list[bool] = []

            async def forever() -> None:
                started.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise

            with trio.move_on_after(0.2) as scope:
                await bridge.call(forever)
            assert scope.cancelled_caught
            assert started.is_set()
            assert cancelled == [True]
            assert [t for t in asyncio.all_tasks(loop) if not t.done()] != []  # the pump

            with pytest.raises(ZeroDivisionError):
                await bridge.call(_divide, 1, 0)
            await bridge.aclose()
            with pytest.raises(RuntimeError, match="closed"):
                bridge.submit(record, "late")
            nursery.cancel_scope.cancel()
        assert asyncio.all_tasks(loop) == set()


async def _divide(a: int, b: int) -> float:
    return a / b


async def test_publishes_are_batched_and_backpressured() -> None:
    with trio.fail_after(10):
        async with trio_asyncio.open_loop() as loop, trio.open_nursery() as nursery:
            bridge = Bridge(loop, limit=8)
            batches: list[int] = []

            async def write(commands: list[bytes]) -> None:
                batches.append(len(commands))

            async def publish(*args: object) -> None:
                batches.append(-1)

            bridge.set_publisher(publish, write)
            await nursery.start(bridge.serve)
            for i in range(20):
                bridge.push(b"%d" % i)
                if bridge.full:
                    await bridge.wait_space()
            await bridge.wait_space()
            assert sum(batches) == 20
            assert max(batches) <= 8
            assert len(batches) <= 4  # one write per batch, not per message
            bridge.push(("subject", b"", "", None))
            await bridge.call(asyncio.sleep, 0)
            assert batches[-1] == -1
            nursery.cancel_scope.cancel()


async def test_inbox_wakes_trio_once_and_pushes_back_on_the_producer() -> None:
    with trio.fail_after(10):
        async with trio_asyncio.open_loop() as loop:
            inbox: Inbox[int] = Inbox(loop, 4)
            produced: list[int] = []

            async def produce() -> None:
                for i in range(10):
                    await inbox.put(i)
                    produced.append(i)

            task = loop.create_task(produce())
            await inbox.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert len(inbox) == 4  # the producer waits for room
            assert len(produced) == 3
            got: list[int] = []
            while len(got) < 10:
                try:
                    got.append(inbox.get_nowait())
                except trio.WouldBlock:
                    await inbox.wait()
            assert got == list(range(10))
            await trio_asyncio.run_aio_future(task)
            inbox.close()
            await inbox.wait()  # returns at once once closed
            assert inbox.closed


async def test_a_job_cut_off_by_closing_raises_provider_closed() -> None:
    with trio.fail_after(10):
        async with trio_asyncio.open_loop() as loop:
            bridge = Bridge(loop)  # no pump running: the job stays queued
            job = bridge.submit(asyncio.sleep, 0)
            await bridge.aclose()
            with pytest.raises(ProviderClosedError):
                await job.wait()


def test_the_nats_py_internals_of_the_fast_path_exist() -> None:
    """The core publish fast path writes into nats-py's outgoing buffer."""
    from nats.aio.client import Client

    nc = Client()
    for name in ("_pending", "_pending_data_size", "_max_pending_size", "stats"):
        assert hasattr(nc, name), name
    assert callable(Client._flush_pending)
