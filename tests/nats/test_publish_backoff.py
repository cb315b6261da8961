"""The redelivery storm: a handler whose output publish fails transiently.

A router handler's output publish that fails with a transient
:class:`PublishError` (no responders while a stream's leader moves, no
answer in time, a stream refusing messages for now) nacks its input with a
delay that doubles with each delivery attempt (0.1 s, 0.2 s, ... at most
5 s). Before, the input was nacked with no delay and JetStream handed it
straight back: 5,741 immediate redeliveries were counted during one 0.5 s
node stop. Here the fault is an output stream that refuses every message for
a held second (full, ``discard=new``: a 503 "maximum messages exceeded"),
then takes them again.
"""

from __future__ import annotations

import pytest
import trio
from nats.js.api import StreamConfig

from piko_trio_events import JetStreamConfig, Message, NatsConfig, PublishError
from piko_trio_events.nats import NatsProvider, open_nats_provider
from piko_trio_events.testing._server import NatsServer

from .helpers import add_full_stream, eventually, stored_messages

#: How long the output stream refuses messages (real seconds).
HELD = 1.0
#: Inputs whose outputs fail meanwhile.
N = 10
#: Deliveries of one input within HELD seconds with the backoff: at about
#: 0, 0.1, 0.3 and 0.7 s (the next is due at 1.5 s), plus one of slack for
#: the time the failing round trips take.
PER_INPUT_BOUND = 5


async def set_max_msgs(provider: NatsProvider, name: str, max_msgs: int) -> None:
    conn = provider._conn
    assert conn.jsm is not None
    info = await conn.bridge.call(conn.jsm.stream_info, name)
    config = info.config
    config.max_msgs = max_msgs
    await conn.bridge.call(conn.jsm.update_stream, config)


async def test_an_output_stream_refusing_messages_for_a_while_causes_no_redelivery_storm(
    nats_server: NatsServer,
) -> None:
    config = NatsConfig(
        url=nats_server.url, close_timeout=3.0, jetstream=JetStreamConfig(track_message_id=True)
    )
    deliveries: list[tuple[bytes, int, float]] = []  # (input, attempt, trio time)
    with trio.fail_after(30):
        async with open_nats_provider(config) as provider:
            # The output stream, full: it refuses every message until healed.
            await add_full_stream(provider, "HELD", ["held.>"])
            await provider.publisher.publish("held.out", Message(b"filler"))
            with pytest.raises(PublishError) as refused:
                await provider.publisher.publish("held.out", Message(b"refused"))
            assert refused.value.retry_after == pytest.approx(0.1)  # a 5xx: transient

            @provider.router.handler("relay.in", publish_topic="held.out", name="relay")
            async def relay(msg: Message) -> Message:
                assert msg.delivery is not None
                deliveries.append((msg.payload, msg.delivery.attempt, trio.current_time()))
                return Message(b"out-" + msg.payload)

            await provider.publisher.publish("relay.in", *[Message(b"%d" % i) for i in range(N)])
            await eventually(lambda: len(deliveries) >= N)
            held_from = min(at for _, _, at in deliveries)
            await trio.sleep_until(held_from + HELD)  # the fault's duration
            await set_max_msgs(provider, "HELD", -1)
            healed_at = trio.current_time()
            during = [d for d in deliveries if d[2] < healed_at]
            # Every output gets through once the stream takes messages again.
            # (The server's state: no event to wait on.)
            while await stored_messages(provider, "HELD") < 1 + N:  # noqa: ASYNC110
                await trio.sleep(0.05)
            finished_at = trio.current_time()

    per_input = {payload: 0 for payload, _, _ in deliveries}
    for payload, _, _ in during:
        per_input[payload] += 1
    print(
        f"output refused for {healed_at - held_from:.2f} s: {len(during)} deliveries of "
        f"{N} inputs (at most {max(per_input.values())} of one); all outputs stored "
        f"{finished_at - healed_at:.2f} s after the fault healed"
    )
    assert len(per_input) == N
    assert max(per_input.values()) <= PER_INPUT_BOUND, per_input
    assert len(during) <= N * PER_INPUT_BOUND
    # It backed off rather than gave up: each input was tried again meanwhile.
    assert min(per_input.values()) >= 3, per_input


async def test_the_publisher_says_which_failures_are_transient(nats_server: NatsServer) -> None:
    with trio.fail_after(15):
        async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
            conn = provider._conn
            assert conn.jsm is not None
            # "No responders": the stream no longer answers for the subject (as
            # while its leader moves).
            await provider.publisher.publish("moved.x", Message(b"1"))
            info = await conn.bridge.call(conn.jsm.stream_info, "PIKO_moved")
            info.config.subjects = ["elsewhere.>"]
            await conn.bridge.call(conn.jsm.update_stream, info.config)
            with pytest.raises(PublishError, match="no response from stream") as caught:
                await provider.publisher.publish("moved.x", Message(b"2"))
            assert caught.value.retry_after == pytest.approx(0.1)
            # Then provisioning it again is refused for good (a 400: the name is
            # taken by a stream with another configuration).
            with pytest.raises(PublishError, match="could be provisioned") as caught:
                await provider.publisher.publish("moved.x", Message(b"3"))
            assert caught.value.retry_after is None
            # A message the stream can never take (a 400).
            await conn.bridge.call(
                conn.jsm.add_stream,
                StreamConfig(name="SMALL", subjects=["small.x"], max_msg_size=16),
            )
            with pytest.raises(PublishError, match="exceeds maximum") as caught:
                await provider.publisher.publish("small.x", Message(b"x" * 100))
            assert caught.value.retry_after is None
