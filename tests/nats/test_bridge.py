"""The trio <-> asyncio bridge: on its own (no server needed), then as the
NATS provider uses it (a real server)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import trio
import trio.testing
import trio_asyncio

from piko_trio_events import JetStreamConfig, Message, NatsConfig, ProviderClosedError
from piko_trio_events.nats import (
    _connection,
    _core_subscription,
    _internals,
    _limits,
    open_nats_provider,
)
from piko_trio_events.nats._bridge import Bridge, Inbox
from piko_trio_events.testing._server import NatsServer

from .helpers import eventually


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


async def test_the_byte_bound_keeps_batches_of_large_commands_small() -> None:
    """Large messages fill the queue by bytes long before its item limit: the
    producer waits every ``byte_limit`` bytes, so no batch grows past it."""
    with trio.fail_after(10):
        async with trio_asyncio.open_loop() as loop, trio.open_nursery() as nursery:
            bridge = Bridge(loop, limit=1000, byte_limit=100)
            batches: list[int] = []

            async def write(commands: list[bytes]) -> None:
                batches.append(sum(len(c) for c in commands))

            async def publish(*args: object) -> None:  # pragma: no cover - unused
                pass

            bridge.set_publisher(publish, write)
            await nursery.start(bridge.serve)
            for _ in range(20):
                bridge.push(b"x" * 40)
                bridge.queued_bytes += 40  # as the core publisher counts them
                if bridge.full:
                    await bridge.wait_space()
            await bridge.wait_space()
            assert sum(batches) == 20 * 40
            assert max(batches) <= 120  # at most the limit plus the command crossing it
            assert bridge.queued_bytes == 0
            nursery.cancel_scope.cancel()


async def test_idle_means_the_pump_waits_holding_nothing() -> None:
    """Commands may skip the queue only while nothing queued could be overtaken."""
    with trio.fail_after(10):
        async with trio_asyncio.open_loop() as loop, trio.open_nursery() as nursery:
            bridge = Bridge(loop)
            written: list[bytes] = []

            async def write(commands: list[bytes]) -> None:
                written.extend(commands)

            bridge.set_publisher(write, write)
            assert not bridge.idle  # no pump yet: nothing would write what is queued
            await nursery.start(bridge.serve)
            await trio.testing.wait_all_tasks_blocked()
            assert bridge.idle
            bridge.push(b"a")
            assert not bridge.idle  # queued and not written yet
            await bridge.wait_space()
            assert written == [b"a"]
            assert bridge.idle
            nursery.cancel_scope.cancel()


# -- the NATS provider's use of the bridge (real server) ------------------------------


def _core_provider(server: NatsServer) -> NatsConfig:
    return NatsConfig(url=server.url, jetstream=JetStreamConfig(disabled=True))


async def test_large_core_messages_go_out_in_bounded_batches(nats_server: NatsServer) -> None:
    """64 KiB messages published back to back reach the connection in batches
    of about ``OUT_BYTES``, not ``OUT_LIMIT`` messages (64 MiB) at once."""
    size, count = 64 * 1024, 64
    with trio.fail_after(30):
        async with open_nats_provider(_core_provider(nats_server)) as provider:
            bridge = provider._conn.bridge
            write = bridge._write
            assert write is not None
            batches: list[int] = []

            async def recording(commands: list[bytes]) -> None:
                batches.append(sum(len(c) for c in commands))
                await write(commands)

            bridge._write = recording
            async with provider.subscriber.subscribe("large") as channel:
                payload = b"p" * size
                for _ in range(count):
                    await provider.publisher.publish("large", Message(payload))
                for _ in range(count):
                    assert (await channel.receive()).payload == payload
            assert batches
            assert max(batches) <= _limits.OUT_BYTES + size + 1024


async def test_a_direct_write_never_overtakes_what_is_queued(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command written straight from trio (``_Connection.send``) goes after
    whatever the bridge or nats-py's outgoing buffer still holds."""
    # Every send tries the direct write (the publisher sends through _Connection.send).
    monkeypatch.setattr(_connection, "_QUIET", -1.0)
    with trio.fail_after(10):
        async with open_nats_provider(_core_provider(nats_server)) as provider:
            conn = provider._conn
            nc = conn.nc
            if not conn.fast or nc is None:
                pytest.skip("the public path never writes straight from trio")
            async with provider.subscriber.subscribe("order") as channel:
                await provider.publisher.flush()
                await trio.testing.wait_all_tasks_blocked()
                # Queued on the bridge; its pump cannot run before the next schedule point.
                conn.bridge.push(b"PUB order 1\r\na\r\n")
                conn.send([b"PUB order 1\r\nb\r\n"])
                await trio.testing.wait_all_tasks_blocked()
                # In nats-py's outgoing buffer; its flusher not kicked.
                nc._pending.append(b"PUB order 1\r\nc\r\n")
                nc._pending_data_size += 16
                conn.send([b"PUB order 1\r\nd\r\n"])
                got = [(await channel.receive()).payload for _ in range(4)]
                assert got == [b"a", b"b", b"c", b"d"]


@pytest.mark.parametrize(
    ("pending_msgs", "pending_bytes", "held"),
    [(4, 1 << 20, 8 + 4), (1000, 100, 8 + 2)],
    ids=["by-count", "by-bytes"],
)
async def test_a_core_subscription_past_its_buffers_drops_and_counts(
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
    pending_msgs: int,
    pending_bytes: int,
    held: int,
) -> None:
    """Messages taken straight from nats-py's read loop are held up to the
    subscription's buffer plus nats-py's pending limits; the rest is dropped
    and counted in ``provider.dropped`` (a slow consumer), never blocking."""
    monkeypatch.setattr(_core_subscription, "_CORE_BUFFER", 8)
    monkeypatch.setattr(_core_subscription, "_PENDING_MSGS", pending_msgs)
    monkeypatch.setattr(_core_subscription, "_PENDING_BYTES", pending_bytes)
    total = 30
    with trio.fail_after(20):
        async with open_nats_provider(_core_provider(nats_server)) as provider:
            if not provider._conn.fast:
                pytest.skip("the public path buffers in nats-py's subscription queue")
            async with provider.subscriber.subscribe("overflow") as channel:
                for i in range(total):
                    await provider.publisher.publish("overflow", Message(b"%039d" % i))
                await provider.publisher.flush()
                inbox = cast(Any, channel)._inbox
                await eventually(lambda: len(inbox) + provider.dropped == total)
                assert provider.dropped == total - held
                got = [(await channel.receive()).payload for _ in range(held)]
                assert got == [b"%039d" % i for i in range(held)]


async def test_receive_is_one_checkpoint_whether_or_not_it_waits(nats_server: NatsServer) -> None:
    """A message already buffered costs a checkpoint; one waited for, the wait itself."""
    with trio.fail_after(10):
        async with (
            open_nats_provider(_core_provider(nats_server)) as provider,
            provider.subscriber.subscribe("cp") as channel,
        ):
            await provider.publisher.publish("cp", Message(b"1"))
            await provider.publisher.flush()
            inbox = cast(Any, channel)._inbox
            await eventually(lambda: len(inbox) == 1)
            with trio.testing.assert_checkpoints():
                assert (await channel.receive()).payload == b"1"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(provider.publisher.publish, "cp", Message(b"2"))
                with trio.testing.assert_checkpoints():
                    assert (await channel.receive()).payload == b"2"


def test_an_error_in_a_read_loop_callback_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Raised into nats-py's read loop, it would end the connection's reading."""

    def broken(msg: Any) -> None:
        raise RuntimeError("boom")

    dispatch = _internals.ReadLoopDispatch(broken)
    assert not dispatch.cancelled()
    dispatch.set_result(cast(Any, object()))
    assert "boom" in caplog.text


async def test_sends_close_together_are_batched_not_written_one_by_one(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first send after a quiet spell is written straight away; the
    next ones wait for the bridge's pump, which writes them in one go."""
    monkeypatch.setattr(_connection, "_QUIET", 60.0)  # "close together", however slow
    with trio.fail_after(10):
        async with open_nats_provider(_core_provider(nats_server)) as provider:
            conn = provider._conn
            if not conn.fast:
                pytest.skip("the public path never writes straight from trio")
            async with provider.subscriber.subscribe("close") as channel:
                await provider.publisher.flush()
                await trio.testing.wait_all_tasks_blocked()
                conn.send([b"PUB close 1\r\na\r\n"])
                assert not conn.bridge._out  # written
                conn.send([b"PUB close 1\r\nb\r\n"])
                conn.send([b"PUB close 1\r\nc\r\n"])
                assert len(conn.bridge._out) == 2  # queued for one write
                got = [(await channel.receive()).payload for _ in range(3)]
                assert got == [b"a", b"b", b"c"]


async def test_queued_asyncio_callbacks_run_in_one_round_in_order() -> None:
    """run_callbacks_in_batches: trio-asyncio runs what is queued in one trio
    scheduling round (not one callback a round), in order."""
    import trio_asyncio

    from piko_trio_events.nats._bridge import run_callbacks_in_batches

    class Rounds(trio.abc.Instrument):
        count = 0

        def before_io_wait(self, timeout: float) -> None:
            self.count += 1

    async with trio_asyncio.open_loop() as loop:
        assert run_callbacks_in_batches(loop)
        assert not run_callbacks_in_batches(loop)  # (once)
        # Readers and writers added from now on skip the synchronize() round.
        assert loop._io_task.__module__ == "piko_trio_events.nats._bridge"
        await trio.testing.wait_all_tasks_blocked()
        ran: list[int] = []
        rounds = Rounds()
        trio.lowlevel.add_instrument(rounds)
        try:
            for i in range(40):
                loop.call_soon(ran.append, i)
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(rounds)
        assert ran == list(range(40))
        assert rounds.count <= 4


async def test_queue_counts_bytes_and_says_when_full() -> None:
    import trio_asyncio

    async with trio_asyncio.open_loop() as loop:
        bridge = Bridge(loop, limit=4, byte_limit=100)
        assert not bridge.queue([b"x" * 10], 10)
        assert bridge.queued_bytes == 10
        assert bridge.queue([b"y" * 90], 90)  # the byte bound
        assert bridge.full
