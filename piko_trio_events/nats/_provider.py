"""The NATS provider: core NATS and JetStream behind the provider port.

nats-py drives the wire protocol on trio-asyncio's loop, inside the
provider's nursery; :mod:`._bridge` batches every crossing. This module
imports asyncio, nats-py and trio-asyncio only inside functions, so that
importing :mod:`piko_trio_events.nats` loads none of them.

The fast path (nats-py internals, feature-detected; ``PIKO_NATS_PUBLIC_PATH=1``
turns it off) cuts the scheduling rounds a message costs under
trio-asyncio, each a pass of trio's scheduler: outgoing commands are
framed here and go into nats-py's outgoing buffer, or, after a quiet spell
with nothing queued, straight to its socket (``_Connection.send``);
incoming messages of the provider's own subscriptions are taken from
nats-py's read loop as bytes (``_Connection._read_raw``), with no
subscription task, ``Msg`` object or header parsing of nats-py's.

Delivery guarantees:

* core NATS (``jetstream.disabled=True``) is at-most-once. A ``nack()``
  re-queues the message inside this process (so router retries behave as
  on the memory provider); it does not survive a crash or the end of the
  subscription.
* JetStream is at-least-once: pull consumers with explicit acks. A message
  neither acked nor nacked is redelivered by the server after
  ``ack_wait_timeout``; while it is held here (buffered or in a handler),
  the provider tells the server it is in progress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import trio

from .._config import NatsConfig
from .._errors import ConfigError
from .._lifecycle import DrainStep, reserve, run_provider
from .._metrics import provider_metrics
from .._provider_base import ProviderBase
from .._router import Router
from .._util import single_error
from ._connection import _Connection
from ._limits import OUT_BYTES, OUT_LIMIT
from ._publisher import NatsPublisher
from ._subscriber import NatsSubscriber

if TYPE_CHECKING:
    from ._bridge import Bridge

__all__ = ["NatsProvider", "open_nats_provider"]


class NatsProvider(ProviderBase[NatsPublisher, NatsSubscriber]):
    """The NATS provider, as yielded by :func:`open_nats_provider`."""

    def __init__(
        self,
        config: NatsConfig,
        conn: _Connection,
        publisher: NatsPublisher,
        subscriber: NatsSubscriber,
        router: Router,
    ) -> None:
        super().__init__(publisher, subscriber, router)
        self.config = config
        self._conn = conn

    @property
    def connected(self) -> bool:
        """Whether the connection to the server is up right now."""
        return self._conn.connected and not self._conn.closed

    @property
    def dropped(self) -> int:
        """Core NATS messages lost to a slow consumer or a failed publish."""
        return self._conn.dropped

    @property
    def jetstream(self) -> bool:
        return not self.config.jetstream.disabled

    def _request_transport(self) -> object:
        """Request/reply for :mod:`piko_trio_events.cqrs`: a new transport per bus."""
        from ._requests import NatsRequests

        return NatsRequests(self._conn, self._publisher)

    def __repr__(self) -> str:
        return (
            f"<NatsProvider running={self._running} connected={self.connected} "
            f"config={self.config!r}>"
        )


#: nats-py connect() arguments the provider sets itself (from NatsConfig fields).
_RESERVED_OPTIONS: Final = {
    "servers": "url",
    "name": "cluster_id",
    "connect_timeout": "connect_timeout",
    "reconnect_time_wait": "reconnect_wait",
    "max_reconnect_attempts": "max_reconnect_attempts",
    "allow_reconnect": "max_reconnect_attempts",
    "error_cb": None,
    "disconnected_cb": None,
    "reconnected_cb": None,
    "closed_cb": None,
}


def _check_options(config: NatsConfig) -> None:
    for key in config.nats_options:
        if key in _RESERVED_OPTIONS:
            field = _RESERVED_OPTIONS[key]
            instead = f"; set NatsConfig.{field} instead" if field else ""
            raise ConfigError(
                f"NatsConfig.nats_options[{key!r}] is set by the provider itself{instead}"
            )
    import ssl

    tls = config.nats_options.get("tls")
    if tls is not None and not isinstance(tls, ssl.SSLContext):
        # (the value is not shown: it may hold key material)
        raise ConfigError(
            "NatsConfig.nats_options['tls'] must be an ssl.SSLContext "
            f"(e.g. ssl.create_default_context()), not a {type(tls).__name__}"
        )


class _NatsSteps:
    """The NATS provider's own steps around the router's (see
    :class:`piko_trio_events._lifecycle.ProviderSteps`)."""

    def __init__(
        self,
        config: NatsConfig,
        conn: _Connection,
        publisher: NatsPublisher,
        subscriber: NatsSubscriber,
        bridge: Bridge,
    ) -> None:
        self.budget = config.close_timeout
        self._conn = conn
        self._publisher = publisher
        self._subscriber = subscriber
        self._bridge = bridge
        self._services = trio.CancelScope(shield=True)

    async def start(self, nursery: trio.Nursery) -> None:
        """The asyncio bridge and the reconnect watcher (in a shielded service
        nursery that also owns every subscription's tasks), then the connection."""
        await nursery.start(self._serve)
        await self._conn.connect()
        assert self._conn.nc is not None
        self._publisher._connected(self._conn.nc.max_payload)

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        with self._services:
            async with trio.open_nursery() as services:
                await services.start(self._bridge.serve)
                await services.start(self._conn.watch)
                self._subscriber._attach(services)
                task_status.started()

    async def abort(self) -> None:
        await self._conn.close()
        await self._bridge.aclose()

    def drain_steps(self) -> list[DrainStep]:
        """Subscriptions (unsubscribe, nack what they hold) -> publisher
        (closed, flushed) -> connection (closed) -> the asyncio bridge, each
        with its reserve of the one budget (``close_timeout``)."""
        budget = self.budget
        steps = [
            DrainStep("subscriptions", self._subscriber._close_all, reserve(budget, 0.05, 1.0)),
            DrainStep("publisher", self._publisher._close, reserve(budget, 0.05, 1.0)),
            DrainStep("connection", self._conn.close, reserve(budget, 0.05, 1.5)),
            DrainStep("bridge", self._bridge.aclose, reserve(budget, 0.03, 0.5)),
        ]
        # What still uses the connection (a subscription's own close, a JetStream
        # publish or confirmed ack in flight) gives up before the connection step.
        self._conn.closing_by = trio.current_time() + budget - steps[2].reserve - steps[3].reserve
        self._conn.replies.closing_by(self._conn.closing_by)  # and those already waiting
        return steps

    def stop(self) -> None:
        self._services.cancel()
        self._conn.events_send.close()


@asynccontextmanager
async def open_nats_provider(config: NatsConfig | None = None) -> AsyncIterator[NatsProvider]:
    """Connect to NATS and run a provider for the duration of the block.

    The first connect succeeds or fails within ``connect_timeout`` with
    :class:`ConnectError` naming the URL (secrets redacted). The provider's
    nursery owns the asyncio loop bridge, the reconnect watcher, the router
    and every subscription's workers. Leaving the block (normally, by an
    error, or because an enclosing scope was cancelled) drains in order,
    shielded, all within the one budget ``close_timeout``: router (in-flight
    handlers finish within ``router.close_timeout`` and the router's share of
    the budget, then are cancelled) -> subscriptions (unacked messages
    nacked) -> publisher (flushed) -> connection (closed) -> the asyncio
    loop. Each step after the router keeps a reserve of the budget, so a
    stuck handler cannot starve them (see :mod:`piko_trio_events._lifecycle`).
    """
    config = NatsConfig() if config is None else config
    if not isinstance(config, NatsConfig):
        raise ConfigError(f"open_nats_provider takes a NatsConfig, not {config!r}")
    config.validate()
    _check_options(config)
    with single_error():  # (trio-asyncio's loop wraps errors in groups too)
        async with _open(config) as provider:
            yield provider


@asynccontextmanager
async def _open(config: NatsConfig) -> AsyncIterator[NatsProvider]:
    try:
        import nats  # noqa: F401
        import trio_asyncio
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"the NATS provider needs nats-py and trio-asyncio ({exc}); "
            "install them with: pip install 'piko_trio_events[nats]'"
        ) from exc

    from ._bridge import Bridge

    metrics = provider_metrics("nats")
    async with trio_asyncio.open_loop() as loop:
        bridge = Bridge(loop, OUT_LIMIT, OUT_BYTES)
        conn = _Connection(config, bridge, metrics)
        publisher = NatsPublisher(conn)
        subscriber = NatsSubscriber(conn)
        router = Router(
            publisher, subscriber, config.router, default_concurrency=config.subscribers_count
        )
        provider = NatsProvider(config, conn, publisher, subscriber, router)
        steps = _NatsSteps(config, conn, publisher, subscriber, bridge)
        async with run_provider(provider, steps, metrics, conn.scrub):
            yield provider
