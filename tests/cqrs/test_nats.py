"""Typed handlers and request/reply on a real nats-server: core NATS and JetStream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig
from piko_trio_events._message import UUID_HEADER
from piko_trio_events.cqrs import (
    NAME_KEY,
    CommandBus,
    DecodeError,
    EventBus,
    NoResponderError,
    RequestError,
)
from piko_trio_events.nats import NatsProvider, open_nats_provider
from piko_trio_events.nats._names import consumer_name
from piko_trio_events.testing._server import NatsServer

from ..nats.helpers import eventually
from .types import ChargeCard, Charged, OrderPlaced, Refund

pytestmark = pytest.mark.nats

KINDS = [pytest.param(True, id="core"), pytest.param(False, id="jetstream")]


def config(server: NatsServer, core: bool) -> NatsConfig:
    return NatsConfig(url=server.url, jetstream=JetStreamConfig(disabled=core))


@asynccontextmanager
async def provider_of(server: NatsServer, core: bool) -> AsyncIterator[NatsProvider]:
    async with open_nats_provider(config(server, core)) as provider:
        yield provider


def subscriptions(provider: NatsProvider) -> list[str]:
    """The subjects of the connection's subscriptions."""
    nc = provider._conn.nc
    assert nc is not None
    return [s.subject for s in nc._subs.values()]


async def subscribed(provider: NatsProvider, subject: str) -> None:
    """Wait until the router's subscription to ``subject`` reached the server:
    a message from another connection (core NATS: at-most-once) would be lost
    before. The router subscribes in its own task; a flush after the SUB
    command is queued returns once the server has processed it."""
    await eventually(lambda: subject in subscriptions(provider))
    await provider.publisher.flush()


def reply_inboxes(provider: NatsProvider, commands: CommandBus) -> list[str]:
    """The bus's reply inbox subscriptions."""
    transport: Any = commands._transport
    return [s for s in subscriptions(provider) if s == transport._prefix + ".*"]


def serve_charges(commands: CommandBus) -> None:
    @commands.handler
    async def charge(command: ChargeCard) -> Charged:
        if command.amount < 0:
            raise ValueError(f"negative amount for order {command.order}")
        return Charged(command.order, command.amount > 10)


@pytest.mark.parametrize("core", KINDS)
async def test_a_thousand_concurrent_requests_on_one_inbox_subscription(
    nats_server: NatsServer, core: bool
) -> None:
    with trio.fail_after(60):
        async with provider_of(nats_server, core) as provider:
            commands = CommandBus(provider)
            serve_charges(commands)
            replies: dict[int, Charged] = {}

            async def ask(order: int) -> None:
                replies[order] = await commands.request(
                    ChargeCard(order, float(order)), timeout=30, reply_type=Charged
                )

            await ask(0)
            before = subscriptions(provider)
            async with trio.open_nursery() as nursery:
                for order in range(1000):
                    nursery.start_soon(ask, order)
            assert replies == {n: Charged(n, n > 10) for n in range(1000)}
            assert subscriptions(provider) == before  # no subscription per request
            assert len(reply_inboxes(provider, commands)) == 1
            assert commands.pending_requests == 0
            assert commands.late_replies == 0


@pytest.mark.parametrize("core", KINDS)
async def test_a_remote_error_is_a_request_error(nats_server: NatsServer, core: bool) -> None:
    with trio.fail_after(30):
        async with provider_of(nats_server, core) as provider:
            commands = CommandBus(provider)
            serve_charges(commands)
            with pytest.raises(RequestError) as caught:
                await commands.request(ChargeCard(3, -1.0), timeout=10)
            assert caught.value.remote_type == "ValueError"
            assert caught.value.remote_message == "negative amount for order 3"


@pytest.mark.parametrize("public_path", [False, True], ids=["fast-path", "public-path"])
async def test_core_nats_says_at_once_that_no_one_serves_a_request(
    nats_server: NatsServer, public_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIKO_NATS_PUBLIC_PATH", "1" if public_path else "0")
    with trio.fail_after(30):
        async with provider_of(nats_server, True) as provider:
            assert provider._conn.fast is not public_path
            commands = CommandBus(provider)
            started = trio.current_time()
            with pytest.raises(NoResponderError, match=r"commands\.Refund"):
                await commands.request(Refund(1), timeout=20)
            assert trio.current_time() - started < 5  # the server's answer, not the timeout
            assert commands.pending_requests == 0
            serve_charges(commands)  # and a served one is answered on the same inbox
            assert await commands.request(ChargeCard(1, 20.0), timeout=10) == Charged(1, True)


async def test_under_jetstream_a_request_no_one_serves_times_out(nats_server: NatsServer) -> None:
    with trio.fail_after(30):
        async with provider_of(nats_server, False) as provider:
            commands = CommandBus(provider)
            started = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                await commands.request(Refund(1), timeout=0.5)
            assert trio.current_time() - started >= 0.5
            assert commands.pending_requests == 0


@pytest.mark.parametrize("core", KINDS)
async def test_cancelling_mid_request_leaves_nothing_and_a_late_reply_is_counted(
    nats_server: NatsServer, core: bool
) -> None:
    with trio.fail_after(30):
        async with provider_of(nats_server, core) as provider:
            commands = CommandBus(provider)
            handling, release = trio.Event(), trio.Event()

            @commands.handler
            async def slow(command: ChargeCard) -> Charged:
                handling.set()
                await release.wait()
                return Charged(command.order, True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(commands.request, ChargeCard(1, 1.0), timeout=20))
                await handling.wait()
                nursery.cancel_scope.cancel()
            assert commands.pending_requests == 0
            release.set()
            await eventually(lambda: commands.late_replies == 1)
            assert await commands.request(ChargeCard(2, 1.0), timeout=10) == Charged(2, True)
            assert len(reply_inboxes(provider, commands)) == 1


async def test_a_reply_of_a_type_the_requester_never_saw_needs_reply_type(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(30):
        async with (
            provider_of(nats_server, True) as server,
            provider_of(nats_server, True) as client,
        ):
            serve_charges(CommandBus(server))
            await subscribed(server, "commands.ChargeCard")
            commands = CommandBus(client)
            with pytest.raises(DecodeError, match="unknown type 'Charged': pass reply_type="):
                await commands.request(ChargeCard(1, 1.0), timeout=10)
            assert await commands.request(
                ChargeCard(1, 11.0), timeout=10, reply_type=Charged
            ) == Charged(1, True)
            with pytest.raises(DecodeError, match="is a Charged, not a OrderPlaced"):
                await commands.request(ChargeCard(1, 1.0), timeout=10, reply_type=OrderPlaced)


async def test_bad_input_under_jetstream_is_acked_once_not_redelivered(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(30):
        async with provider_of(nats_server, False) as provider:
            events = EventBus(provider)
            got: list[OrderPlaced] = []
            handled = trio.Event()

            @events.handler(name="shop")
            async def handle(event: OrderPlaced) -> None:
                got.append(event)
                handled.set()

            good = OrderPlaced(1, "ann", 2.0, True)
            await provider.publisher.publish(
                "events.OrderPlaced",
                Message(b"{oops", {NAME_KEY: "OrderPlaced"}),
                Message(b"{}"),
                events._encode(good),
            )
            await handled.wait()
            assert got == [good]
            assert events.decode_errors == 2
            conn = provider._conn
            jsm = conn.jsm
            assert jsm is not None
            consumer = consumer_name("piko", "shop", "events.OrderPlaced")
            while True:  # the server learns of the acks a moment later: poll it
                info = await conn.bridge.call(jsm.consumer_info, "PIKO_events", consumer)
                if info.num_ack_pending == 0 and info.num_pending == 0:
                    break
                await trio.sleep(0.01)
            assert info.num_redelivered == 0
            assert info.delivered.consumer_seq == 3  # each delivered once
            assert events.decode_errors == 2


# -- interop with a raw nats-py client -----------------------------------------------------


async def _raw_publish(url: str, subject: str, payload: bytes, headers: dict[str, str]) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.publish(subject, payload, headers=headers)
        await nc.flush()
    finally:
        await nc.close()


async def _raw_subscribe(url: str, subject: str) -> tuple[Any, Any]:
    import nats

    nc = await nats.connect(url)
    sub = await nc.subscribe(subject)
    await nc.flush()
    return nc, sub


async def _raw_next(nc: Any, sub: Any) -> Any:
    try:
        return await sub.next_msg(timeout=10)
    finally:
        await nc.close()


async def test_raw_nats_py_and_typed_handlers_understand_each_other(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(30):
        async with provider_of(nats_server, True) as provider:
            events = EventBus(provider)
            got: list[OrderPlaced] = []
            handled = trio.Event()

            @events.handler
            async def handle(event: OrderPlaced) -> None:
                got.append(event)
                handled.set()

            await subscribed(provider, "events.OrderPlaced")
            bridge = provider._conn.bridge
            # raw nats-py -> typed handler: JSON and Watermill's `name` header
            body = {"id": 7, "customer": "go", "total": 1.25, "express": False, "note": None}
            await bridge.call(
                _raw_publish,
                nats_server.url,
                "events.OrderPlaced",
                json.dumps(body).encode(),
                {NAME_KEY: "OrderPlaced"},
            )
            await handled.wait()
            assert got == [OrderPlaced(7, "go", 1.25, False)]
            # typed publish -> raw nats-py: the same headers
            nc, sub = await bridge.call(_raw_subscribe, nats_server.url, "events.OrderPlaced")
            await events.publish(OrderPlaced(8, "py", 2.0, True, "x"))
            raw = await bridge.call(_raw_next, nc, sub)
            assert raw.headers[NAME_KEY] == "OrderPlaced"
            assert UUID_HEADER in raw.headers
            assert json.loads(raw.data) == {
                "id": 8,
                "customer": "py",
                "total": 2.0,
                "express": True,
                "note": "x",
            }
