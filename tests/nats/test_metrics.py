"""OpenTelemetry metrics of the NATS provider (SDK in-memory reader)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trio
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from piko_trio_events import ConnectError, JetStreamConfig, Message, NatsConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import NatsServer, free_port
from tests.otel import sdk_reader, snapshot

from .helpers import eventually, wait_until_stopped


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """The test run's one SDK reader (OpenTelemetry allows one global provider)."""
    return sdk_reader()


def delta(
    before: dict[tuple[str, str | None], float],
    after: dict[tuple[str, str | None], float],
    name: str,
    topic: str | None = None,
) -> float:
    key = (f"events.adapters.nats.{name}", topic)
    return after.get(key, 0.0) - before.get(key, 0.0)


def nats_snapshot(reader: InMemoryMetricReader) -> dict[tuple[str, str | None], float]:
    return snapshot(reader, "piko_trio_events.nats")


async def test_provider_and_message_metrics(
    nats_server: NatsServer, reader: InMemoryMetricReader
) -> None:
    before = nats_snapshot(reader)
    config = NatsConfig(url=nats_server.url, reconnect_wait=0.1)
    with trio.fail_after(20):
        async with open_nats_provider(config) as provider:
            async with provider.subscriber.subscribe("m.*", group="g") as channel:
                await provider.publisher.publish("m.x", Message(b"1"), Message(b"2"))
                first = await channel.receive()
                await first.nack()
                second = await channel.receive()
                await second.ack()
                third = await channel.receive()
                assert third.delivery is not None
                assert third.delivery.redelivered
                await third.ack()
            await nats_server.restart()
            await eventually(lambda: provider.connected)
    after = nats_snapshot(reader)
    assert delta(before, after, "messages_published", "m.x") == 2
    assert delta(before, after, "messages_received", "m.*") == 3
    assert delta(before, after, "messages_acked", "m.*") == 2
    assert delta(before, after, "messages_nacked", "m.*") == 1
    assert delta(before, after, "messages_redelivered", "m.*") == 1
    assert delta(before, after, "provider_start_count") == 1
    assert delta(before, after, "provider_close_count") == 1
    assert delta(before, after, "provider_connection_attempts") == 1
    assert delta(before, after, "provider_reconnections") == 1
    assert delta(before, after, "provider_start_duration") == 1  # one recorded start
    assert delta(before, after, "provider_close_duration") == 1
    topics = {topic for (_, topic) in after if topic is not None}
    assert topics >= {"m.x", "m.*"}


async def test_failed_start_is_counted(reader: InMemoryMetricReader) -> None:
    before = nats_snapshot(reader)
    config = NatsConfig(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)
    with trio.fail_after(10), pytest.raises(ConnectError):
        async with open_nats_provider(config):
            pass  # pragma: no cover
    after = nats_snapshot(reader)
    assert delta(before, after, "provider_start_error_count") == 1
    assert delta(before, after, "provider_connection_errors") >= 1


async def test_core_slow_consumer_drops_are_counted(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from piko_trio_events.nats import _core_subscription

    monkeypatch.setattr(_core_subscription, "_PENDING_MSGS", 50)
    monkeypatch.setattr(_core_subscription, "_CORE_BUFFER", 100)
    config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(disabled=True))
    with trio.fail_after(20):
        async with open_nats_provider(config) as provider:
            async with provider.subscriber.subscribe("flood") as channel:
                await provider.publisher.publish("flood", *[Message(b"x") for _ in range(3000)])
                await provider.publisher.flush()
                await eventually(lambda: provider.dropped > 0)
                received = 0
                with trio.move_on_after(0.5):
                    while True:
                        await (await channel.receive()).ack()
                        received += 1
            assert received + provider.dropped == 3000
            assert received < 3000


@contextmanager
def frozen(server: NatsServer) -> Iterator[Callable[[], None]]:
    """Yields ``freeze``: it stops the server process (SIGSTOP), whose sockets
    stay open while it answers nothing, as a hung server would; it runs
    again (SIGCONT) when the block ends."""
    process = server._process
    assert process is not None
    pid = process.pid
    stopped = False

    def freeze() -> None:
        nonlocal stopped
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        wait_until_stopped(pid)

    try:
        yield freeze
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)


async def test_a_close_that_cannot_drain_is_counted_as_a_close_error(
    nats_server: NatsServer, reader: InMemoryMetricReader
) -> None:
    # The server hangs at close: the final flush gets no answer within close_timeout.
    config = NatsConfig(
        url=nats_server.url, close_timeout=1.0, jetstream=JetStreamConfig(disabled=True)
    )
    before = nats_snapshot(reader)
    with trio.fail_after(20), frozen(nats_server) as freeze:
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("held.x", Message(b"x"))
            await provider.publisher.flush()
            freeze()
            await provider.publisher.publish("held.x", Message(b"y"))
    after = nats_snapshot(reader)
    assert delta(before, after, "provider_close_error_count") == 1
    assert delta(before, after, "provider_close_count") == 1


async def test_a_clean_close_is_no_close_error(
    nats_server: NatsServer, reader: InMemoryMetricReader
) -> None:
    config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(disabled=True))
    before = nats_snapshot(reader)
    with trio.fail_after(20):
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("held.x", Message(b"x"))
    after = nats_snapshot(reader)
    assert delta(before, after, "provider_close_error_count") == 0
    assert delta(before, after, "provider_close_count") == 1
    assert delta(before, after, "provider_connection_errors") == 0


@pytest.mark.parametrize("how", ["stopped", "hung"])
async def test_a_lost_connection_counts_one_connection_error(
    nats_server: NatsServer, reader: InMemoryMetricReader, how: str
) -> None:
    # As Piko's Go provider counts it (its DisconnectErrHandler): one error per
    # lost connection, whether the server closed the link ("stopped": nats-py
    # reads EOF) or stopped answering ("hung": nats-py's pings find the link
    # stale, and no error callback runs). reconnect_wait is long, so that no
    # failed reconnect attempt is counted in the meantime.
    config = NatsConfig(
        url=nats_server.url,
        reconnect_wait=30.0,
        jetstream=JetStreamConfig(disabled=True),
        nats_options={"ping_interval": 0.1, "max_outstanding_pings": 1},
    )
    with trio.fail_after(20), frozen(nats_server) as freeze:
        async with open_nats_provider(config) as provider:
            before = nats_snapshot(reader)
            if how == "stopped":
                await nats_server.stop()
            else:
                freeze()
            await eventually(lambda: not provider.connected)
            lost = nats_snapshot(reader)
        closed = nats_snapshot(reader)
    assert delta(before, lost, "provider_connection_errors") == 1
    # Closing the provider (its own disconnect) is no connection error.
    assert delta(lost, closed, "provider_connection_errors") == 0
