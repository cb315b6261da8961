"""open_nats_cluster: nodes routed together, killed, stopped, restarted, cut off."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from piko_trio_events import ConnectError, JetStreamConfig, Message, NatsConfig, PublishError
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import NatsCluster, open_nats_cluster

pytestmark = pytest.mark.nats


async def publish_until_stored(url: str, topic: str, msg: Message) -> None:
    """Publish on an R3 stream, retried until the cluster stores it (its
    JetStream leaders are elected a moment after the nodes start)."""
    config = NatsConfig(
        url=url,
        reconnect_wait=0.05,
        close_timeout=2.0,
        jetstream=JetStreamConfig(track_message_id=True, replicas=3),
    )
    async with open_nats_provider(config) as provider:
        while True:
            try:
                await provider.publisher.publish(topic, msg)
                return
            except PublishError:
                await trio.sleep(0.1)  # retry pacing


async def receive_one(url: str, topic: str) -> bytes:
    config = NatsConfig(url=url, reconnect_wait=0.05, close_timeout=2.0)
    async with (
        open_nats_provider(config) as provider,
        provider.subscriber.subscribe(topic, group="g") as channel,
    ):
        msg = await channel.receive()
        await msg.ack()
        return msg.payload


async def test_a_cluster_of_three_routes_stores_r3_and_survives_a_killed_node() -> None:
    with trio.fail_after(60):
        async with open_nats_cluster(3) as cluster:
            assert len(cluster) == 3
            assert cluster.names == ("n0", "n1", "n2")
            assert len(set(cluster.urls)) == 3
            assert cluster.url == ",".join(cluster.urls)
            assert cluster.node("n2") is cluster[2]
            with pytest.raises(KeyError, match="n7"):
                cluster.node("n7")
            await cluster.wait_healthy()
            assert [await cluster.healthy(i) for i in range(3)] == [True] * 3
            await publish_until_stored(cluster[0].url, "c.x", Message(b"one"))
            # Kill -9 one node: the other two hold the R3 stream; a client of
            # another node reads the message.
            await cluster[0].kill()
            assert not cluster[0].running
            assert not await cluster.healthy(0)
            assert await receive_one(cluster[1].url, "c.x") == b"one"
            # Started from its store, it routes to the others again.
            await cluster[0].start()
            await cluster.wait_healthy()
            assert await cluster.healthy(0)
            # A graceful restart of another one.
            await cluster[2].restart()
            await cluster.wait_healthy()
            assert "n2=up" in repr(cluster)


async def routed(cluster: NatsCluster) -> list[bool]:
    return [await cluster.healthy(i) for i in range(len(cluster))]


async def test_route_links_carry_every_route_and_isolate_cuts_a_node_off() -> None:
    with trio.fail_after(60):
        async with open_nats_cluster(3, route_links=True) as cluster:
            await cluster.wait_healthy()
            assert set(cluster.route_links) == {
                (i, j) for i in range(3) for j in range(3) if i != j
            }
            # Every pair routes through one of its two links, nothing around them.
            for i in range(3):
                for j in range(i + 1, 3):
                    pair = cluster.route_links[i, j].live + cluster.route_links[j, i].live
                    assert pair > 0, (i, j)
            cluster.isolate("n2")
            assert cluster.route_links[2, 0].state == "cut"
            assert cluster.route_links[0, 1].state == "ok"
            # The other two route to each other but not to n2, nor n2 to them.
            while True:  # polls the nodes' monitoring until they noticed the closed routes
                if not any(await routed(cluster)):
                    break
                await trio.sleep(0.05)
            assert cluster.route_links[2, 0].live == cluster.route_links[0, 2].live == 0
            assert cluster[2].running  # its clients still reach it
            cluster.heal()
            await cluster.wait_healthy()
            assert await routed(cluster) == [True] * 3


async def test_one_way_isolation_holds_one_side_of_the_node_s_routes() -> None:
    with trio.fail_after(30):
        async with open_nats_cluster(3, route_links=True) as cluster:
            cluster.isolate(1, "outbound")
            assert cluster.route_links[1, 0].state == "held upstream"
            assert cluster.route_links[0, 1].state == "held downstream"
            assert cluster.route_links[0, 2].state == "ok"
            cluster.heal()
            cluster.isolate(cluster[1], "inbound")
            assert cluster.route_links[1, 0].state == "held downstream"
            assert cluster.route_links[0, 1].state == "held upstream"
            cluster.heal()
            assert {link.state for link in cluster.route_links.values()} == {"ok"}
            await cluster.wait_healthy()
            with pytest.raises(ValueError, match="side"):
                cluster.isolate(0, "sideways")  # type: ignore[arg-type]
            with pytest.raises(IndexError):
                cluster.isolate(3)


async def test_isolate_needs_route_links_and_size_is_checked() -> None:
    with pytest.raises(ValueError, match="size"):
        async with open_nats_cluster(0):
            pass  # pragma: no cover
    with trio.fail_after(30):
        async with open_nats_cluster(1) as cluster:
            with pytest.raises(RuntimeError, match="route_links=True"):
                cluster.isolate(0)
            await cluster.wait_healthy()


async def test_an_error_in_the_block_comes_out_as_itself_not_in_groups() -> None:
    with trio.fail_after(30), pytest.raises(KeyError, match="mine"):
        async with open_nats_cluster(3, route_links=True):
            raise KeyError("mine")


def _breaking_start(monkeypatch: pytest.MonkeyPatch, broken_attempts: int) -> list[NatsCluster]:
    """Make the first ``broken_attempts`` starts of a cluster fail to form (node
    n1 killed as soon as it runs); returns every cluster started."""
    from piko_trio_events.testing import _cluster

    real_start = _cluster._start
    started: list[NatsCluster] = []

    async def start(*args: Any) -> NatsCluster:
        cluster = await real_start(*args)
        started.append(cluster)
        if len(started) <= broken_attempts:
            await cluster.nodes[1].kill()
        return cluster

    monkeypatch.setattr(_cluster, "_start", start)
    monkeypatch.setattr(_cluster, "_FORM_TIMEOUT", 1.0)
    return started


async def test_a_cluster_that_does_not_form_is_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started = _breaking_start(monkeypatch, broken_attempts=1)
    with trio.fail_after(30):
        async with open_nats_cluster(3) as cluster:
            assert len(started) == 2
            assert cluster is started[1]
            assert all([await cluster.healthy(i) for i in range(3)])
            # The first attempt's nodes are gone.
            assert not any(node.running for node in started[0].nodes)
    assert "did not form within 1s" in caplog.text
    assert "n1 not healthy" in caplog.text


async def test_a_cluster_that_never_forms_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = _breaking_start(monkeypatch, broken_attempts=3)
    with trio.fail_after(30), pytest.raises(ConnectError, match=r"3 attempts.*n1 not healthy"):
        async with open_nats_cluster(3):
            pass  # pragma: no cover - never formed
    assert len(started) == 3
    assert not any(node.running for cluster in started for node in cluster.nodes)
