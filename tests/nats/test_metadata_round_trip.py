"""Received metadata is exactly what was published, also with track_message_id
(the Nats-Msg-Id header the provider adds stays on the wire)."""

from __future__ import annotations

import pytest
import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer


@pytest.mark.parametrize("core", [False, True], ids=["jetstream", "core"])
async def test_track_message_id_adds_nothing_to_the_received_metadata(
    nats_server: NatsServer, core: bool
) -> None:
    jetstream = JetStreamConfig(disabled=core, track_message_id=True)
    config = NatsConfig(url=nats_server.url, jetstream=jetstream)
    sent = [Message(b"a", {"k": "v"}), Message(b"b")]
    with trio.fail_after(10):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("meta.x", group="g") as channel,
        ):
            await provider.publisher.publish("meta.x", *sent)
            got = []
            for _ in sent:
                msg = await channel.receive()
                got.append(msg)
                assert await msg.ack()
            assert [m.metadata for m in got] == [{"k": "v"}, {}]
            assert got == sent
            # so a handler can forward what it received as it is
            await provider.publisher.publish("meta.x", Message(b"c", got[0].metadata))
