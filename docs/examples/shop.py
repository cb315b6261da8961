"""Typed events, a command with a reply, on the memory provider or on NATS.

``python docs/examples/shop.py`` runs the shop on the memory provider;
``python docs/examples/shop.py --nats`` on an embedded nats-server (core
NATS: a request nobody serves fails at once there). The handlers' tests are
in ``docs/examples/test_cqrs_handlers.py``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import trio

from piko_trio_events import Provider, open_memory_provider
from piko_trio_events.cqrs import CommandBus, EventBus, NoResponderError, RequestError

# -- the messages: plain dataclasses ---------------------------------------------------------


@dataclass(frozen=True)
class OrderPlaced:
    """An event: something that happened."""

    order: int
    amount: float


@dataclass(frozen=True)
class ChargeCard:
    """A command: something one handler must do."""

    order: int
    amount: float


@dataclass(frozen=True)
class CardCharged:
    order: int
    receipt: str


@dataclass(frozen=True)
class ShipOrder:
    order: int


# -- the application -------------------------------------------------------------------------


class Shop:
    """The handlers, registered on the buses of one provider."""

    def __init__(self, provider: Provider) -> None:
        self.events = EventBus(provider)
        self.commands = CommandBus(provider)
        self.shipped: list[int] = []
        self.changed = trio.Event()
        events, commands = self.events, self.commands

        @events.handler
        async def charge_on_placed(event: OrderPlaced) -> ChargeCard:
            # Returning a command sends it: the command bus has its handler.
            return ChargeCard(event.order, event.amount)

        @commands.handler
        async def charge(command: ChargeCard) -> CardCharged:
            if command.amount <= 0:
                raise ValueError(f"nothing to charge for order {command.order}")
            # Returned from a request: the reply. From a plain send: an event.
            return CardCharged(command.order, receipt=f"r-{command.order}")

        @events.handler
        async def ship_when_charged(event: CardCharged) -> None:
            self.shipped.append(event.order)
            self.changed.set()


async def run_shop(provider: Provider) -> None:
    shop = Shop(provider)
    # 1. an event: placed -> charge command -> charged event -> shipped
    await shop.events.publish(OrderPlaced(order=1, amount=25.0))
    with trio.fail_after(10):
        while not shop.shipped:
            await shop.changed.wait()
            shop.changed = trio.Event()
    print("shipped:", shop.shipped)
    # 2. a request: the handler's typed reply
    reply = await shop.commands.request(ChargeCard(order=2, amount=10.0), timeout=5)
    print("reply:", reply)
    # 3. a request whose handler raises: its error's type and message
    try:
        await shop.commands.request(ChargeCard(order=3, amount=0.0), timeout=5)
    except RequestError as error:
        print("remote error:", error.remote_type, "-", error.remote_message)
    # 4. a request nobody serves
    try:
        await shop.commands.request(ShipOrder(order=4), timeout=0.5)
    except NoResponderError:
        print("no one serves ShipOrder (the server said so)")
    except trio.TooSlowError:
        print("no reply to ShipOrder within 0.5 s")


async def memory() -> None:
    async with open_memory_provider() as provider:
        await run_shop(provider)


async def nats() -> None:
    from piko_trio_events import JetStreamConfig, NatsConfig
    from piko_trio_events.nats import open_nats_provider
    from piko_trio_events.testing import open_nats_server

    async with open_nats_server() as server:
        config = NatsConfig(url=server.url, jetstream=JetStreamConfig(disabled=True))
        async with open_nats_provider(config) as provider:
            await run_shop(provider)


if __name__ == "__main__":
    trio.run(nats if "--nats" in sys.argv else memory)
