"""Side by side on a real nats-server: FastStream's ``NatsBroker``, raw nats-py
and piko_trio_events, one claim per test (see ``docs/comparison.md``).

Each test asserts what FastStream does *by default* as well as what this
library does, so a FastStream release that changes its behaviour makes the
test fail and the comparison page gets revisited.

FastStream and nats-py are asyncio libraries: their side of each test runs
in a worker thread under its own ``asyncio.run`` (bounded by a timeout), while
the nats-server and the piko side run under trio. Where the asyncio side must
make the trio side act (restart the server), it calls back with
``trio.from_thread.run`` from a helper thread, so its own loop keeps running.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

pytest.importorskip(
    "faststream.nats",
    reason="FastStream with its NATS extra is not installed (pip install 'faststream[nats]')",
)

from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js.api import ConsumerConfig

from piko_trio_events import JetStreamConfig, Message, NatsConfig, PublishError
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import open_nats_server
from piko_trio_events.testing._server import NatsServer

pytestmark = pytest.mark.nats

T = TypeVar("T")

_ASYNCIO_LIMIT = 20.0  # seconds for one FastStream / nats-py scenario, broker stop included
_ACK_WAIT = 0.5  # seconds: the AckWait of the FastStream consumer in the redelivery test
N_PIPELINED = 2000


async def in_asyncio(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` under ``asyncio.run`` in a worker thread, bounded in time."""

    def run() -> T:
        return asyncio.run(asyncio.wait_for(main(), _ASYNCIO_LIMIT))

    return await trio.to_thread.run_sync(run)


async def stream_messages(url: str, stream: str) -> int:
    """How many messages ``stream`` holds (asked with raw nats-py)."""

    async def ask() -> int:
        import nats

        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages or 0)
        finally:
            await nc.close()

    return await in_asyncio(ask)


async def until(check: Callable[[], Awaitable[bool]], limit: float) -> None:
    """Poll ``check`` (asyncio side) until it holds; TimeoutError after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


# -- 1. a JetStream handler that raises -------------------------------------------------


async def test_failing_jetstream_handler_redelivered_by_piko_terminated_by_faststream() -> None:
    with trio.fail_after(40):
        async with open_nats_server() as server:
            # FastStream, its recommended JetStream setup: a durable pull subscriber,
            # default ack policy. A short AckWait so that a message left unacked,
            # or nacked, would come back well within the wait below.
            async def faststream() -> tuple[list[int], Any]:
                import nats

                broker = NatsBroker(server.url, logger=None)
                deliveries: list[int] = []

                @broker.subscriber(  # type: ignore[untyped-decorator,unused-ignore]
                    "fsfail.x",
                    stream=JStream("FS_fsfail", subjects=["fsfail.>"]),
                    durable="fs",
                    pull_sub=PullSub(timeout=0.2),
                    config=ConsumerConfig(ack_wait=_ACK_WAIT),
                )
                async def handle(body: bytes, msg: NatsMessage) -> None:
                    deliveries.append(msg.raw_message.metadata.num_delivered)
                    if len(deliveries) == 1:
                        raise RuntimeError("first delivery fails")

                await broker.start()
                try:
                    await broker.publish(b"order", "fsfail.x", stream="FS_fsfail")
                    nc = await nats.connect(server.url)
                    try:
                        js = nc.jetstream()

                        async def settled() -> bool:
                            info = await js.consumer_info("FS_fsfail", "fs")
                            return bool(deliveries) and info.num_ack_pending == 0

                        await until(settled, 10)
                        # Settled with no ack pending: the server let it go. Waiting
                        # three AckWaits is a bounded wait for an absence (a
                        # redelivery would arrive within one AckWait).
                        await asyncio.sleep(3 * _ACK_WAIT)
                        info = await js.consumer_info("FS_fsfail", "fs")
                    finally:
                        await nc.close()
                finally:
                    await broker.stop()
                return deliveries, info

            deliveries, info = await in_asyncio(faststream)
            assert deliveries == [1]  # handled once, never again
            assert info.num_redelivered == 0
            assert info.num_ack_pending == 0
            assert info.ack_floor.stream_seq == 1  # terminated: done for the server

            # piko: the same handler on the router, defaults everywhere.
            attempts: list[int] = []
            handled = trio.Event()
            async with open_nats_provider(NatsConfig(url=server.url)) as provider:

                @provider.router.handler("pkfail.x")
                async def flaky(msg: Message) -> None:
                    assert msg.delivery is not None
                    attempts.append(msg.delivery.attempt)
                    if len(attempts) == 1:
                        raise RuntimeError("first delivery fails")
                    handled.set()

                await provider.publisher.publish("pkfail.x", Message(b"order"))
                with trio.move_on_after(10):  # fail below, with what was seen
                    await handled.wait()
            assert attempts == [1, 2]  # redelivered with attempt + 1, then processed


# -- 2. republishing after an uncertain publish -------------------------------------------


async def test_a_republished_message_is_stored_once_with_piko_track_message_id() -> None:
    with trio.fail_after(30):
        async with open_nats_server() as server:
            # Neither FastStream's publish nor nats-py's js.publish takes a message id.
            assert "msg_id" not in inspect.signature(NatsBroker.publish).parameters

            async def faststream() -> list[Any]:
                import nats

                broker = NatsBroker(server.url, logger=None)
                await broker.start()
                acks = []
                nc = await nats.connect(server.url)
                try:
                    js = nc.jetstream()
                    assert "msg_id" not in inspect.signature(js.publish).parameters
                    await js.add_stream(name="FS_fsdup", subjects=["fsdup.>"])
                    # Default: the app retries a publish whose PubAck it never got.
                    for _ in range(2):
                        acks.append(await broker.publish(b"order", "fsdup.x", stream="FS_fsdup"))
                    # By hand: the Nats-Msg-Id header passes through FastStream.
                    for _ in range(2):
                        acks.append(
                            await broker.publish(
                                b"order",
                                "fsdup.id",
                                headers={"Nats-Msg-Id": "order-1"},
                                stream="FS_fsdup",
                            )
                        )
                    # Raw nats-py, the same header by hand.
                    for _ in range(2):
                        acks.append(
                            await js.publish(
                                "fsdup.raw", b"order", headers={"Nats-Msg-Id": "order-2"}
                            )
                        )
                finally:
                    await nc.close()
                    await broker.stop()
                return acks

            acks = await in_asyncio(faststream)
            assert [bool(ack.duplicate) for ack in acks] == [False, False, False, True, False, True]
            assert await stream_messages(server.url, "FS_fsdup") == 4  # 2 + 1 + 1

            # piko: the message's uuid is its identity; one flag makes it the msg id.
            order = Message(b"order")
            tracked = NatsConfig(url=server.url, jetstream=JetStreamConfig(track_message_id=True))
            async with open_nats_provider(tracked) as provider:
                await provider.publisher.publish("pkdup.x", order)
                await provider.publisher.publish("pkdup.x", order)  # the retry
            assert await stream_messages(server.url, "PIKO_pkdup") == 1

            # piko's default does not send it (the same as FastStream's default).
            async with open_nats_provider(NatsConfig(url=server.url)) as provider:
                await provider.publisher.publish("pkdefault.x", order)
                await provider.publisher.publish("pkdefault.x", order)
            assert await stream_messages(server.url, "PIKO_pkdefault") == 2


# -- 3. a server that lost its JetStream store ---------------------------------------------


async def wipe_and_restart(server: NatsServer) -> None:
    """Stop the server, delete its JetStream store, start it again (same port)."""
    await server.stop()
    await trio.to_thread.run_sync(shutil.rmtree, Path(server.store_dir) / "jetstream")
    await server.start()


async def test_streams_a_restarted_server_lost_recreated_by_piko_not_by_faststream() -> None:
    with trio.fail_after(50):
        async with open_nats_server() as server:
            token = trio.lowlevel.current_trio_token()

            def restart_from_asyncio() -> None:
                trio.from_thread.run(wipe_and_restart, server, trio_token=token)

            async def faststream() -> dict[str, Any]:
                import nats
                from nats.js.errors import NoStreamResponseError, NotFoundError

                reconnected = asyncio.Event()

                async def on_reconnect() -> None:
                    reconnected.set()

                broker = NatsBroker(
                    server.url, logger=None, reconnect_time_wait=1, reconnected_cb=on_reconnect
                )
                got: list[bytes] = []

                @broker.subscriber(  # type: ignore[untyped-decorator,unused-ignore]
                    "fslost.x",
                    stream=JStream("FS_fslost", subjects=["fslost.>"]),
                    durable="fs",
                    pull_sub=PullSub(timeout=0.2),
                )
                async def handle(body: bytes) -> None:
                    got.append(body)

                async def received(payload: bytes) -> bool:
                    return payload in got

                outcome: dict[str, Any] = {}
                await broker.start()
                try:
                    await broker.publish(b"before", "fslost.x", stream="FS_fslost")
                    await until(lambda: received(b"before"), 10)
                    await asyncio.to_thread(restart_from_asyncio)
                    await asyncio.wait_for(reconnected.wait(), 10)
                    try:
                        await broker.publish(b"after", "fslost.x", stream="FS_fslost")
                    except NoStreamResponseError as exc:
                        outcome["publish_error"] = exc
                    # A plain publish "succeeds": nothing stores it. Two seconds
                    # is a bounded wait for an absence (piko re-creates within
                    # milliseconds of the reconnect).
                    await broker.publish(b"after", "fslost.x")
                    await asyncio.sleep(2.0)
                    outcome["got"] = list(got)
                    nc = await nats.connect(server.url)
                    try:
                        await nc.jetstream().stream_info("FS_fslost")
                        outcome["stream"] = "present"
                    except NotFoundError:
                        outcome["stream"] = "missing"
                    finally:
                        await nc.close()
                finally:
                    await broker.stop()
                return outcome

            outcome = await in_asyncio(faststream)
            assert "publish_error" in outcome  # nats: no response from stream
            assert outcome["got"] == [b"before"]  # "after" never consumed
            assert outcome["stream"] == "missing"  # not re-created

            # piko: the reconnect watcher re-provisions the stream and the consumer.
            got: list[bytes] = []
            arrived = trio.Event()
            config = NatsConfig(url=server.url, reconnect_wait=0.1)
            async with open_nats_provider(config) as provider:

                @provider.router.handler("pklost.x")
                async def handle(msg: Message) -> None:
                    got.append(msg.payload)
                    arrived.set()

                await provider.publisher.publish("pklost.x", Message(b"before"))
                await arrived.wait()
                arrived = trio.Event()
                await wipe_and_restart(server)
                published = False
                with trio.move_on_after(10):
                    while not published:
                        # Until the watcher has seen the reconnect, a publish may
                        # go to the stream the server lost: PublishError, retry.
                        try:
                            await provider.publisher.publish("pklost.x", Message(b"after"))
                            published = True
                        except PublishError:
                            await trio.sleep(0.1)
                assert published, "no stream for the topic 10 s after the restart"
                with trio.move_on_after(10):  # fail below, with what was seen
                    await arrived.wait()
            assert got == [b"before", b"after"]
            assert await stream_messages(server.url, "PIKO_pklost") == 1  # a new stream


# -- 4. pipelined JetStream publish --------------------------------------------------------


async def test_publishing_a_batch_stores_all_of_it_with_one_piko_call() -> None:
    n = N_PIPELINED
    with trio.fail_after(50):
        async with open_nats_server() as server:

            async def faststream() -> tuple[list[Any], float]:
                import nats

                nc = await nats.connect(server.url)
                await nc.jetstream().add_stream(name="FS_fspipe", subjects=["fspipe.>"])
                await nc.close()
                broker = NatsBroker(server.url, logger=None)
                await broker.start()
                try:
                    publish = broker.publish
                    await publish(b"warm-up", "fspipe.warm", stream="FS_fspipe")
                    started = time.perf_counter()
                    # No batch API for NATS: one call per message, each call
                    # returns that message's PubAck.
                    acks = [
                        await publish(b"order", "fspipe.x", stream="FS_fspipe") for _ in range(n)
                    ]
                    seconds = time.perf_counter() - started
                finally:
                    await broker.stop()
                return acks, seconds

            acks, fs_seconds = await in_asyncio(faststream)
            # Each awaited call came back with its own PubAck, in order: the
            # acks were awaited one by one.
            assert [ack.seq for ack in acks] == list(range(2, n + 2))
            assert await stream_messages(server.url, "FS_fspipe") == n + 1

            async def raw_nats_py() -> tuple[float, float]:
                import nats

                nc = await nats.connect(server.url)
                js = nc.jetstream()
                await js.add_stream(name="RAW_serial", subjects=["rawserial.>"])
                await js.add_stream(name="RAW_async", subjects=["rawasync.>"])
                started = time.perf_counter()
                for _ in range(n):
                    await js.publish("rawserial.x", b"order")
                serial = time.perf_counter() - started
                started = time.perf_counter()
                for _ in range(n):
                    await js.publish_async("rawasync.x", b"order")
                await js.publish_async_completed()
                pipelined = time.perf_counter() - started
                await nc.close()
                return serial, pipelined

            raw_serial, raw_async = await in_asyncio(raw_nats_py)
            assert await stream_messages(server.url, "RAW_serial") == n
            assert await stream_messages(server.url, "RAW_async") == n

            messages = [Message(b"order") for _ in range(n)]
            async with open_nats_provider(NatsConfig(url=server.url)) as provider:
                # Provision the stream first, so the timing is of publishing only.
                await provider.publisher.publish("pkpipe.warm", Message(b"warm-up"))
                started = trio.current_time()
                await provider.publisher.publish("pkpipe.x", *messages)  # one call
                piko_seconds = trio.current_time() - started
            assert await stream_messages(server.url, "PIKO_pkpipe") == n + 1

    def per_message(seconds: float) -> str:
        return f"{seconds / n * 1e6:7.1f} us/msg"

    # Figures only (run with -s to see them); timings are not asserted.
    print(
        f"\nJetStream publish of {n} messages:"
        f"\n  FastStream broker.publish, {n} calls: {per_message(fs_seconds)}"
        f"\n  nats-py js.publish, {n} calls:        {per_message(raw_serial)}"
        f"\n  nats-py js.publish_async + completed:  {per_message(raw_async)}"
        f"\n  piko publish(topic, *messages), 1 call: {per_message(piko_seconds)}"
        f"\n  FastStream / piko time ratio: {fs_seconds / piko_seconds:.1f}x"
    )


# -- 5. trio ---------------------------------------------------------------------------------

_UNDER_TRIO = """
import sys, trio
from faststream.nats import NatsBroker
from piko_trio_events import Message, NatsConfig
from piko_trio_events.nats import open_nats_provider

url = sys.argv[1]

async def faststream():
    broker = NatsBroker(url, logger=None)
    with trio.fail_after(10):
        await broker.start()

async def piko():
    async with open_nats_provider(NatsConfig(url=url)) as provider:
        async with provider.subscriber.subscribe("trio.x") as messages:
            await provider.publisher.publish("trio.x", Message(b"hello"))
            msg = await messages.receive()
            await msg.ack()
            return msg.payload.decode()

try:
    trio.run(faststream)
    print("faststream: started")
except Exception as exc:
    print(f"faststream: {type(exc).__name__}: {exc}")
print("piko:", trio.run(piko))
"""


async def test_piko_runs_under_trio_run_and_faststream_does_not() -> None:
    with trio.fail_after(40):
        async with open_nats_server() as server:
            # A fresh interpreter: FastStream's failed start leaves a coroutine
            # that was never awaited (a warning this test run treats as an error).
            result = await trio.run_process(
                [sys.executable, "-W", "ignore", "-c", _UNDER_TRIO, server.url],
                capture_stdout=True,
                capture_stderr=True,
                stdin=subprocess.DEVNULL,
                check=False,
            )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    # nats-py (under FastStream) needs a running asyncio loop.
    assert "faststream: RuntimeError: no running event loop" in out
    assert "piko: hello" in out
