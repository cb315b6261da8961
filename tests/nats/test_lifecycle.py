"""Lifecycle: ordered drain, cancellation, exceptions, the asyncio loop, faults."""

from __future__ import annotations

import asyncio

import pytest
import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig, PublishError, RouterConfig
from piko_trio_events.nats import NatsProvider, open_nats_provider
from piko_trio_events.testing._server import NatsServer

from .helpers import eventually


async def stored(provider: NatsProvider, stream: str) -> int:
    conn = provider._conn
    assert conn.jsm is not None
    info = await conn.bridge.call(conn.jsm.stream_info, stream)
    return int(info.state.messages or 0)


async def test_errors_leave_unwrapped_and_no_asyncio_task_survives(
    nats_server: NatsServer,
) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def app() -> None:
        async with (
            open_nats_provider(NatsConfig(url=nats_server.url)) as provider,
            provider.subscriber.subscribe("t.x", group="g"),
        ):
            loops.append(provider._conn.bridge.loop)
            await provider.publisher.publish("t.x", Message(b"1"))
            raise KeyError("boom")

    with trio.fail_after(10), pytest.raises(KeyError, match="boom"):
        await app()
    [loop] = loops
    assert asyncio.all_tasks(loop) == set()
    assert loop.is_closed()


async def test_cancelling_an_outer_scope_mid_batch_loses_nothing(nats_server: NatsServer) -> None:
    n = 2000
    with trio.fail_after(20):
        with trio.CancelScope() as outer:
            async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
                await provider.publisher.publish("batch.x", Message(b"warm-up"))

                async def cancel_soon() -> None:
                    await trio.lowlevel.checkpoint()
                    outer.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_soon)
                    await provider.publisher.publish(
                        "batch.x", *[Message(b"%d" % i) for i in range(n)]
                    )
                    pytest.fail("publish was not cancelled")  # pragma: no cover
        assert outer.cancelled_caught
        async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
            assert await stored(provider, "PIKO_batch") == n + 1


async def test_drain_is_ordered_when_an_outer_scope_is_cancelled(nats_server: NatsServer) -> None:
    """In-flight handlers finish (their acks are confirmed); what was delivered
    but not handled is nacked, so the next run gets it at once (not after AckWait)."""
    config = NatsConfig(
        url=nats_server.url, ack_wait_timeout=30.0, router=RouterConfig(close_timeout=5.0)
    )
    finished: list[bytes] = []
    started = trio.Event()
    with trio.fail_after(20):
        with trio.CancelScope() as outer:
            async with open_nats_provider(config) as provider:
                await provider.publisher.publish(
                    "drain.x", *[Message(b"%d" % i) for i in range(10)]
                )

                @provider.router.handler("drain.x", group="drainers")
                async def slow(msg: Message) -> None:
                    started.set()
                    await trio.sleep(0.5)
                    finished.append(msg.payload)

                await started.wait()
                outer.cancel()
                await trio.sleep_forever()
        assert finished == [b"0"]  # the in-flight one completed despite the cancel
        start = trio.current_time()
        again: list[bytes] = []
        got_all = trio.Event()
        async with open_nats_provider(config) as provider:

            @provider.router.handler("drain.x", group="drainers")
            async def fast(msg: Message) -> None:
                again.append(msg.payload)
                if len(again) == 9:
                    got_all.set()

            await got_all.wait()
            await trio.sleep(0.3)
        assert sorted(again) == sorted(b"%d" % i for i in range(1, 10))
        assert trio.current_time() - start < 10


async def test_drain_is_bounded_by_the_router_close_timeout(nats_server: NatsServer) -> None:
    config = NatsConfig(
        url=nats_server.url,
        jetstream=JetStreamConfig(disabled=True),
        router=RouterConfig(close_timeout=0.3),
        close_timeout=2.0,
    )
    entered = trio.Event()
    with trio.fail_after(10):
        async with open_nats_provider(config) as provider:

            @provider.router.handler("stuck")
            async def stuck(msg: Message) -> None:
                entered.set()
                await trio.sleep_forever()

            await provider.publisher.publish("stuck", Message(b"x"))
            await entered.wait()
            closing = trio.current_time()
        assert trio.current_time() - closing < 2.0


async def test_connected_follows_the_server_and_subscriptions_resume(
    nats_server: NatsServer,
) -> None:
    config = NatsConfig(
        url=nats_server.url, reconnect_wait=0.1, jetstream=JetStreamConfig(disabled=True)
    )
    with trio.fail_after(20):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("live") as channel,
        ):
            assert provider.connected
            await nats_server.stop()
            await eventually(lambda: not provider.connected)
            await nats_server.start()
            await eventually(lambda: provider.connected)
            await provider.publisher.publish("live", Message(b"after"))
            msg = await channel.receive()
            assert msg.payload == b"after"


async def test_server_restart_mid_stream_loses_no_message(nats_server: NatsServer) -> None:
    n = 400
    config = NatsConfig(url=nats_server.url, reconnect_wait=0.1, ack_wait_timeout=2.0)
    received: set[bytes] = set()
    all_in = trio.Event()
    with trio.fail_after(40):
        async with open_nats_provider(config) as provider:

            @provider.router.handler("restart.x", group="r")
            async def handle(msg: Message) -> None:
                received.add(msg.payload)
                if len(received) == n:
                    all_in.set()

            for i in range(n):
                if i == n // 2:
                    await nats_server.restart()
                while True:
                    try:
                        await provider.publisher.publish("restart.x", Message(b"%d" % i))
                        break
                    except PublishError:
                        await trio.sleep(0.1)
            await all_in.wait()
    assert received == {b"%d" % i for i in range(n)}


async def test_kill_and_start_while_publishing_stores_each_message_once(
    nats_server: NatsServer,
) -> None:
    n = 300
    config = NatsConfig(
        url=nats_server.url,
        reconnect_wait=0.1,
        close_timeout=1.0,
        jetstream=JetStreamConfig(track_message_id=True),
    )
    failures = 0
    with trio.fail_after(60):
        async with open_nats_provider(config) as provider:
            messages = [Message(b"%d" % i) for i in range(n)]
            for i in range(0, n, 10):
                if i == n // 2:
                    await nats_server.kill()
                    await nats_server.start()
                batch = messages[i : i + 10]
                while True:
                    try:
                        await provider.publisher.publish("crash.x", *batch)
                        break
                    except PublishError:
                        failures += 1
                        await trio.sleep(0.1)
            # Republishing everything once more stores nothing new.
            await provider.publisher.publish("crash.x", *messages)
            assert await stored(provider, "PIKO_crash") == n


async def test_streams_and_consumers_a_restarted_server_lost_are_recreated(
    nats_server: NatsServer,
) -> None:
    import shutil
    from pathlib import Path

    config = NatsConfig(url=nats_server.url, reconnect_wait=0.1)
    with trio.fail_after(30):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("lost.x", group="g") as channel,
        ):
            await provider.publisher.publish("lost.x", Message(b"before"))
            assert (await channel.receive()).payload == b"before"
            await nats_server.stop()
            shutil.rmtree(Path(nats_server.store_dir) / "jetstream")
            await nats_server.start()
            await eventually(lambda: provider.connected)
            while True:  # the first attempt may race the watcher's re-provisioning
                try:
                    await provider.publisher.publish("lost.x", Message(b"after"))
                    break
                except PublishError:
                    await trio.sleep(0.1)
            msg = await channel.receive()
            assert msg.payload == b"after"
            assert await msg.ack()


async def test_closing_while_the_server_is_down_is_prompt(nats_server: NatsServer) -> None:
    config = NatsConfig(url=nats_server.url, reconnect_wait=0.1, close_timeout=2.0)
    with trio.fail_after(15):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("gone.x", group="g"),
        ):
            await provider.publisher.publish("gone.x", Message(b"x"))
            await nats_server.stop()
            await eventually(lambda: not provider.connected)
            closing = trio.current_time()
        assert trio.current_time() - closing < 6.0


async def test_a_subscription_used_outside_the_provider_block_ends_and_nacks(
    nats_server: NatsServer,
) -> None:
    config = NatsConfig(url=nats_server.url, ack_wait_timeout=30.0)
    held: list[Message] = []
    ended = trio.Event()
    with trio.fail_after(15):
        async with trio.open_nursery() as outside:
            async with open_nats_provider(config) as provider:
                await provider.publisher.publish("out.x", Message(b"a"), Message(b"b"))

                async def consumer(task_status: trio.TaskStatus[None]) -> None:
                    async with provider.subscriber.subscribe("out.x", group="g") as channel:
                        held.append(await channel.receive())
                        task_status.started()
                        try:
                            while True:
                                await channel.receive()
                        except trio.EndOfChannel:
                            ended.set()

                await outside.start(consumer)
            await ended.wait()
        assert held[0].nacked
        got: list[bytes] = []
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("out.x", group="g") as channel,
        ):
            for _ in range(2):
                msg = await channel.receive()
                got.append(msg.payload)
                await msg.ack()
        assert sorted(got) == [b"a", b"b"]
