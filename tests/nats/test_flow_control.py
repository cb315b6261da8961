"""JetStream flow control: a subscription never holds more than its capacity unsettled."""

from __future__ import annotations

import pytest
import trio

from piko_trio_events import Message, NatsConfig
from piko_trio_events.nats import _jetstream_subscription, _limits, open_nats_provider
from piko_trio_events.testing._server import NatsServer


async def test_unsettled_messages_stop_the_pulls_until_some_are_settled(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The puller wakes up every 3 heartbeats even when nothing happens: make that
    # often, so that a pull it should not make would be made within the wait below.
    monkeypatch.setattr(_jetstream_subscription, "_PULL_HEARTBEAT", 0.2)
    capacity = _limits._CAPACITY
    n = capacity * 2 + 10
    config = NatsConfig(url=nats_server.url, ack_wait_timeout=30.0)
    with trio.fail_after(20):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("flow.x", group="g") as channel,
        ):
            await provider.publisher.publish("flow.x", *[Message(b"%d" % i) for i in range(n)])
            held = [await channel.receive() for _ in range(capacity)]
            # Give any (wrong) further pull time to be made and answered.
            await trio.sleep(2.0)
            with pytest.raises(trio.WouldBlock):
                channel.receive_nowait()  # type: ignore[attr-defined]
            conn = provider._conn
            assert conn.jsm is not None
            consumer = channel._consumer  # type: ignore[attr-defined]
            info = await conn.bridge.call(conn.jsm.consumer_info, "PIKO_flow", consumer)
            assert info.num_ack_pending == capacity
            for msg in held:
                assert await msg.ack()
            rest = []
            for _ in range(n - capacity):
                msg = await channel.receive()
                rest.append(msg.payload)
                assert await msg.ack()
    assert sorted(rest + [m.payload for m in held]) == sorted(b"%d" % i for i in range(n))
