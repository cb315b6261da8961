"""JetStream: at-least-once delivery, provisioning, groups, replay, dedup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import trio

from piko_trio_events import (
    AckError,
    ConfigError,
    ConnectError,
    InvalidTopicError,
    JetStreamConfig,
    Message,
    NatsConfig,
    PublishError,
    StreamNotFoundError,
)
from piko_trio_events.nats import NatsProvider, open_nats_provider
from piko_trio_events.testing._server import NatsServer, open_nats_server

from .helpers import Tally


def js(server: NatsServer, **kwargs: object) -> NatsConfig:
    jetstream = kwargs.pop("jetstream", JetStreamConfig())
    return NatsConfig(url=server.url, jetstream=jetstream, **kwargs)  # type: ignore[arg-type]


async def stream_info(provider: NatsProvider, name: str) -> object:
    conn = provider._conn
    assert conn.jsm is not None
    return await conn.bridge.call(conn.jsm.stream_info, name)


async def stored(provider: NatsProvider, name: str) -> int:
    info = await stream_info(provider, name)
    return int(info.state.messages)  # type: ignore[attr-defined]


async def take(
    channel: trio.abc.ReceiveChannel[Message], n: int, ack: bool = True
) -> list[Message]:
    out = []
    for _ in range(n):
        msg = await channel.receive()
        out.append(msg)
        if ack:
            assert await msg.ack()
    return out


async def test_dotted_topic_is_auto_provisioned_with_a_valid_stream_name(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(js(nats_server)) as provider:
            await provider.publisher.publish("orders.created", Message(b"1", {"k": "v"}))
            await provider.publisher.publish("orders.eu.deleted", Message(b"2"))
            info = await stream_info(provider, "PIKO_orders")
            assert sorted(info.config.subjects) == ["orders", "orders.>"]  # type: ignore[attr-defined]
            assert info.config.num_replicas == 1  # type: ignore[attr-defined]
            assert info.config.duplicate_window == 120.0  # type: ignore[attr-defined]
            assert await stored(provider, "PIKO_orders") == 2
            async with provider.subscriber.subscribe("orders.>", group="all") as channel:
                got = await take(channel, 2)
            assert [m.payload for m in got] == [b"1", b"2"]
            assert got[0].metadata == {"k": "v"}
            assert [m.delivery.sequence for m in got if m.delivery] == [1, 2]
            assert all(m.delivery and m.delivery.timestamp for m in got)
            with pytest.raises(InvalidTopicError, match="first token"):
                provider.subscriber.subscribe("*.created", group="x")


async def test_acked_is_never_redelivered_and_unacked_is_nacked_on_close(
    nats_server: NatsServer,
) -> None:
    config = js(nats_server, ack_wait_timeout=30.0)
    with trio.fail_after(15):
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("work.items", *[Message(b"%d" % i) for i in range(4)])
            async with provider.subscriber.subscribe("work.items", group="workers") as channel:
                first = await take(channel, 2)
                held = await channel.receive()  # delivered, never settled
                assert held.payload == b"2"
            assert held.nacked  # closing nacked it
        # A new provider (new connection) gets the unacked ones at once (not after AckWait).
        start = trio.current_time()
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("work.items", group="workers") as channel,
        ):
            again = await take(channel, 2)
            assert [m.payload for m in again] == [b"2", b"3"]
            assert again[0].delivery is not None
            assert again[0].delivery.attempt == 2
            assert again[0].delivery.redelivered
            with trio.move_on_after(0.5):
                extra = await channel.receive()
                pytest.fail(f"acked message redelivered: {extra!r}")
        assert trio.current_time() - start < 5
        assert [m.payload for m in first] == [b"0", b"1"]


async def test_nack_redelivers_with_the_servers_count_and_delay(nats_server: NatsServer) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(js(nats_server)) as provider:
            await provider.publisher.publish("retry.x", Message(b"r", uuid="id-1"))
            async with provider.subscriber.subscribe("retry.x", group="g") as channel:
                one = await channel.receive()
                assert await one.nack()
                two = await channel.receive()
                assert two.uuid == "id-1"
                assert two.delivery is not None
                assert one.delivery is not None
                assert two.delivery.attempt == 2
                assert two.delivery.sequence == one.delivery.sequence
                start = trio.current_time()
                assert await two.nack(delay=0.5)
                three = await channel.receive()
                assert trio.current_time() - start >= 0.4
                assert three.delivery is not None
                assert three.delivery.attempt == 3
                assert await three.ack()


async def test_groups_compete_across_providers_and_groups_each_get_all(
    nats_server: NatsServer,
) -> None:
    n = 1000
    config = js(nats_server)
    tally = Tally()
    counts = tally.counts
    payloads: list[bytes] = []
    with trio.fail_after(20):
        async with open_nats_provider(config) as p1, open_nats_provider(config) as p2:
            await p1.publisher.publish("jobs.run", Message(b"provision"))

            async def work(
                name: str, provider: NatsProvider, group: str, task_status: trio.TaskStatus[None]
            ) -> None:
                async with provider.subscriber.subscribe(
                    "jobs.run", group=group, start="new"
                ) as channel:
                    task_status.started()
                    async for msg in channel:
                        tally.add(name)
                        if group == "shared":
                            payloads.append(msg.payload)
                        await msg.ack()

            async with trio.open_nursery() as nursery:
                await nursery.start(work, "p1", p1, "shared")
                await nursery.start(work, "p2", p2, "shared")
                await nursery.start(work, "other", p2, "other")
                await trio.sleep(0.3)  # let every member's pull request reach the server
                for i in range(0, n, 100):
                    await p1.publisher.publish(
                        "jobs.run", *[Message(b"%d" % j) for j in range(i, i + 100)]
                    )
                await tally.reached(lambda c: c["p1"] + c["p2"] >= n and c["other"] >= n)
                await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
    assert counts["other"] == n
    assert sorted(payloads) == sorted(b"%d" % i for i in range(n))
    assert counts["p1"] > 0
    assert counts["p2"] > 0


async def test_start_positions_and_conflicting_group_settings(nats_server: NatsServer) -> None:
    with trio.fail_after(15):
        async with open_nats_provider(js(nats_server)) as provider:
            pub = provider.publisher
            await pub.publish("replay.x", *[Message(b"%d" % i) for i in range(1, 6)])
            async with provider.subscriber.subscribe("replay.x", group="from-all") as ch:
                assert [m.payload for m in await take(ch, 5)] == [b"1", b"2", b"3", b"4", b"5"]
            async with provider.subscriber.subscribe("replay.x", group="seq", start=4) as ch:
                assert [m.payload for m in await take(ch, 2)] == [b"4", b"5"]
            middle = datetime.now(UTC)
            await trio.sleep(0.05)
            await pub.publish("replay.x", Message(b"6"))
            async with provider.subscriber.subscribe("replay.x", group="time", start=middle) as ch:
                assert [m.payload for m in await take(ch, 1)] == [b"6"]
            async with provider.subscriber.subscribe("replay.x", group="new", start="new") as ch:
                await pub.publish("replay.x", Message(b"7"))
                assert [m.payload for m in await take(ch, 1)] == [b"7"]
            # The group exists and started at "all": asking for "new" is an error...
            with pytest.raises(ConfigError, match="from-all"):
                async with provider.subscriber.subscribe("replay.x", group="from-all", start="new"):
                    pass  # pragma: no cover
            # ... while no explicit start reuses it, carrying on where it was.
            async with provider.subscriber.subscribe("replay.x", group="from-all") as ch:
                assert [m.payload for m in await take(ch, 2)] == [b"6", b"7"]
        other_ack_wait = js(nats_server, ack_wait_timeout=7.0)
        async with open_nats_provider(other_ack_wait) as provider:
            with pytest.raises(ConfigError, match="ack_wait"):
                async with provider.subscriber.subscribe("replay.x", group="from-all"):
                    pass  # pragma: no cover


async def test_a_different_start_time_for_an_existing_group_is_a_config_error(
    nats_server: NatsServer,
) -> None:
    # The server keeps a start time normalised (UTC, "Z", its own precision):
    # the same instant, written another way, is the same start; another
    # instant is a different start and must not be accepted silently.
    created = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    same_in_utc = created.astimezone(UTC)
    same_naive = same_in_utc.replace(tzinfo=None)  # a naive start is read as UTC
    with trio.fail_after(15):
        async with open_nats_provider(js(nats_server)) as provider:
            subscribe = provider.subscriber.subscribe
            async with subscribe("since.x", group="since", start=created):
                pass
            for same in (created, same_in_utc, same_naive):
                async with subscribe("since.x", group="since", start=same):
                    pass
            for other in (created + timedelta(seconds=1), created - timedelta(microseconds=1)):
                with pytest.raises(ConfigError, match="opt_start_time"):
                    async with subscribe("since.x", group="since", start=other):
                        pass  # pragma: no cover
            # Another kind of start is refused too (the deliver policy differs).
            with pytest.raises(ConfigError, match="deliver_policy"):
                async with subscribe("since.x", group="since", start=1):
                    pass  # pragma: no cover
            # No explicit start reuses the group as it is.
            async with subscribe("since.x", group="since"):
                pass


async def test_private_subscription_gets_new_messages_only(nats_server: NatsServer) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(js(nats_server)) as provider:
            await provider.publisher.publish("news.x", Message(b"old"))
            async with provider.subscriber.subscribe("news.x") as channel:
                await provider.publisher.publish("news.x", Message(b"fresh"))
                assert [m.payload for m in await take(channel, 1)] == [b"fresh"]


async def test_track_message_id_stores_a_republished_message_once(
    nats_server: NatsServer,
) -> None:
    config = js(nats_server, jetstream=JetStreamConfig(track_message_id=True))
    with trio.fail_after(10):
        async with open_nats_provider(config) as provider:
            msg = Message(b"once")
            await provider.publisher.publish("dedup.x", msg)
            await provider.publisher.publish("dedup.x", msg, msg.copy())
            await provider.publisher.publish("dedup.x", Message(b"other"))
            assert await stored(provider, "PIKO_dedup") == 2
            # The id is per topic: a copy to another topic of the stream is stored
            # too (once), and is not mistaken for the first.
            await provider.publisher.publish("dedup.y", msg)
            await provider.publisher.publish("dedup.y", msg.copy())
            assert await stored(provider, "PIKO_dedup") == 3
        untracked = js(nats_server)
        async with open_nats_provider(untracked) as provider:
            await provider.publisher.publish("dedup.x", msg)
            assert await stored(provider, "PIKO_dedup") == 4


async def test_without_auto_provision_a_missing_stream_is_named(nats_server: NatsServer) -> None:
    config = js(nats_server, jetstream=JetStreamConfig(auto_provision=False))
    with trio.fail_after(15):
        async with open_nats_provider(config) as provider:
            with pytest.raises(StreamNotFoundError, match=r"nowhere\.x"):
                async with provider.subscriber.subscribe("nowhere.x", group="g"):
                    pass  # pragma: no cover
            with pytest.raises(StreamNotFoundError, match=r"nowhere\.y"):
                await provider.publisher.publish("nowhere.y", Message(b"x"))
        async with open_nats_provider(js(nats_server)) as provider:
            await provider.publisher.publish("somewhere.x", Message(b"x"))  # provisions
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("somewhere.x", Message(b"y"))
            async with provider.subscriber.subscribe("somewhere.x", group="g") as channel:
                assert [m.payload for m in await take(channel, 2)] == [b"x", b"y"]


async def test_in_progress_keeps_a_slow_message_from_redelivery(nats_server: NatsServer) -> None:
    config = js(nats_server, ack_wait_timeout=1.0)
    got: list[Message] = []
    with trio.fail_after(15):
        async with (
            open_nats_provider(config) as p1,
            open_nats_provider(config) as p2,
            p1.subscriber.subscribe("slow.x", group="g") as c1,
            p2.subscriber.subscribe("slow.x", group="g") as c2,
        ):

            async def member(channel: trio.abc.ReceiveChannel[Message]) -> None:
                async for msg in channel:
                    got.append(msg)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(member, c1)
                nursery.start_soon(member, c2)
                await p1.publisher.publish("slow.x", Message(b"s"))
                # Hold it unsettled for 3x AckWait: no member may get it again.
                await trio.sleep(3.0)
                nursery.cancel_scope.cancel()
            assert len(got) == 1, got
            assert await got[0].ack()


async def test_message_neither_acked_nor_nacked_comes_back_after_ack_wait(
    nats_server: NatsServer,
) -> None:
    """A consumer that vanishes without settling (a crash) loses nothing."""
    config = js(nats_server, ack_wait_timeout=1.0)
    with trio.fail_after(15):
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("crash.x", Message(b"c", uuid="c-1"))
            async with provider.subscriber.subscribe("crash.x", group="g") as channel:
                msg = await channel.receive()
                assert msg.uuid == "c-1"
                # Simulate a crash: the connection dies without nacking.
                sub = channel._sub  # type: ignore[attr-defined]
                channel._unsettled.clear()  # type: ignore[attr-defined]
                channel._handed.clear()  # type: ignore[attr-defined]
                del sub
                channel._inbox.close()  # type: ignore[attr-defined]
            start = trio.current_time()
            async with provider.subscriber.subscribe("crash.x", group="g") as channel:
                again = await channel.receive()
                assert again.uuid == "c-1"
                assert again.delivery is not None
                assert again.delivery.attempt == 2
                assert await again.ack()
            assert trio.current_time() - start >= 0.5


async def test_publish_and_confirmed_ack_fail_cleanly_while_the_server_is_down(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from piko_trio_events.nats import _jetstream_subscription, _publisher

    monkeypatch.setattr(_publisher, "_PUBLISH_ACK_TIMEOUT", 0.5)
    monkeypatch.setattr(_jetstream_subscription, "_ACK_TIMEOUT", 0.5)
    config = js(nats_server, reconnect_wait=0.1, close_timeout=2.0)
    with trio.fail_after(20):
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("down.x", Message(b"1"))
            async with provider.subscriber.subscribe("down.x", group="g") as channel:
                msg = await channel.receive()
                await nats_server.stop()
                with pytest.raises(AckError, match="did not confirm"):
                    await msg.ack()
                assert not msg.acked
                with pytest.raises(PublishError) as info:
                    await provider.publisher.publish("down.x", Message(b"2"), Message(b"3"))
                assert info.value.unconfirmed == 2
                assert "2 of 2" in str(info.value)
                assert info.value.retry_after == pytest.approx(0.1)  # transient
                await nats_server.start()


async def test_providers_racing_to_provision_one_root_all_succeed(
    nats_server: NatsServer,
) -> None:
    config = js(nats_server)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(_publish_once, config, f"race.p{i}")
        async with open_nats_provider(config) as provider:
            assert await stored(provider, "PIKO_race") == 4


async def _publish_once(config: NatsConfig, topic: str) -> None:
    async with open_nats_provider(config) as provider:
        await provider.publisher.publish(topic, Message(b"x"))


@pytest.mark.parametrize("ack_async", [False, True])
async def test_confirmed_and_async_acks_settle_on_the_server(
    nats_server: NatsServer, ack_async: bool
) -> None:
    config = js(nats_server, jetstream=JetStreamConfig(ack_async=ack_async))
    with trio.fail_after(10):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("acks.x", group="g") as channel,
        ):
            await provider.publisher.publish("acks.x", Message(b"a"))
            msg = await channel.receive()
            sub = channel._consumer  # type: ignore[attr-defined]
            conn = provider._conn
            assert conn.jsm is not None
            info = await conn.bridge.call(conn.jsm.consumer_info, "PIKO_acks", sub)
            assert info.num_ack_pending == 1
            assert await msg.ack()
            info = await conn.bridge.call(conn.jsm.consumer_info, "PIKO_acks", sub)
            if ack_async:  # on its way, unconfirmed: the server settles it soon
                while info.num_ack_pending:
                    await trio.sleep(0.01)
                    info = await conn.bridge.call(conn.jsm.consumer_info, "PIKO_acks", sub)
            assert info.num_ack_pending == 0  # confirmed: settled when ack() returned
            assert info.ack_floor.stream_seq == 1


async def test_a_server_without_jetstream_gives_a_clear_error_on_first_use() -> None:
    async with open_nats_server(jetstream=False) as server:
        for auto_provision in (True, False):
            config = js(server, jetstream=JetStreamConfig(auto_provision=auto_provision))
            with trio.fail_after(10):
                async with open_nats_provider(config) as provider:
                    with pytest.raises(PublishError, match="JetStream is not enabled") as caught:
                        await provider.publisher.publish("plain.x", Message(b"js"))
                    assert "JetStreamConfig(disabled=True)" in str(caught.value)
                    assert caught.value.unconfirmed == 1
                    assert caught.value.retry_after is None  # not transient
                    # A subscription fails at once instead of retrying forever.
                    with pytest.raises(ConnectError, match="JetStream is not enabled"):
                        async with provider.subscriber.subscribe("plain.x", group="g"):
                            pass  # pragma: no cover - subscribing fails
        # Core NATS on the same server works.
        core = js(server, jetstream=JetStreamConfig(disabled=True))
        async with (
            open_nats_provider(core) as provider,
            provider.subscriber.subscribe("plain.x") as channel,
        ):
            await provider.publisher.publish("plain.x", Message(b"core"))
            assert (await channel.receive()).payload == b"core"
