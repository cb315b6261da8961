"""A JetStream delivery that reaches a subscription after it closed is nacked at once."""

from __future__ import annotations

from typing import Any

import trio

from piko_trio_events import Message, NatsConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer


class _LateRaw:
    """What nats-py hands the subscription for a message (only what is read)."""

    headers: dict[str, str] | None = None
    reply = "$JS.ACK.late"
    subject = "late.x"
    data = b"late"

    def __init__(self) -> None:
        self.settled: list[str] = []

    async def nak(self, delay: Any = None) -> None:
        self.settled.append("nak")

    async def ack(self) -> None:  # pragma: no cover - must not be called
        self.settled.append("ack")


async def test_a_message_arriving_after_the_subscription_closed_is_nacked(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
            await provider.publisher.publish("late.x", Message(b"x"))
            async with provider.subscriber.subscribe("late.x", group="g") as channel:
                assert (await channel.receive()).payload == b"x"
            # The pull requests of the closed subscription may still bring messages
            # (in flight when it closed): they must go back to the server at once,
            # not wait there for AckWait.
            raw = _LateRaw()
            await provider._conn.bridge.call(channel._on_msg, raw)  # type: ignore[attr-defined]
            assert raw.settled == ["nak"]
            assert not channel._unsettled  # type: ignore[attr-defined]
