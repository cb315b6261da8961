"""The provider's one NATS connection: connect, callbacks, writes, reconnect
watcher, stream provisioning, close.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import trio

from .._config import NatsConfig, redact_url
from .._errors import (
    ConnectError,
    InvalidTopicError,
    ProviderClosedError,
    PublishError,
    StreamNotFoundError,
)
from .._metrics import ProviderMetrics
from . import _internals as internals
from ._limits import _API_TIMEOUT, _CLOSE_LIMIT, _QUIET, _WRITE_NOW_BYTES
from ._names import stream_name, topic_root
from ._replies import _Replies
from ._wire import _decode_command

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.manager import JetStreamManager

    from ._bridge import Bridge
    from ._subscription import NatsSubscription

logger = logging.getLogger("piko_trio_events.nats")


def _scrubber(config: NatsConfig) -> Callable[[str], str]:
    """A function that replaces every configured secret in a text by ``***``."""
    from urllib.parse import unquote, urlsplit

    secrets: set[str] = set()
    for seed in config.url.split(","):
        try:
            parts = urlsplit(seed.strip())
        except ValueError:
            continue
        for value in (parts.password, parts.username if parts.password is None else None):
            if value:
                secrets.update({value, unquote(value)})
    for key in ("password", "token", "nkeys_seed", "nkeys_seed_str", "user_credentials"):
        value = config.nats_options.get(key)
        if isinstance(value, str | bytes) and value:
            secrets.add(value.decode() if isinstance(value, bytes) else value)
    ordered = sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True)

    def scrub(text: str) -> str:
        text = redact_url(text)
        for secret in ordered:
            text = text.replace(secret, "***")
        return text

    return scrub


class _Connection:
    """The one connection of a provider, its bridge and what depends on them."""

    def __init__(self, config: NatsConfig, bridge: Bridge, metrics: ProviderMetrics) -> None:
        self.config = config
        self.bridge = bridge
        self.metrics = metrics
        self.scrub = _scrubber(config)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.jsm: JetStreamManager | None = None
        self.connected = False
        self.closed = False
        # Set when the drain begins: work that uses the connection (a
        # subscription's close, a publish or confirmed ack in flight) ends by then.
        self.closing_by = math.inf
        self.fast = False  # the fast path's nats-py internals are there (and allowed)
        self.last_direct = -math.inf  # when commands were last written straight from trio
        self.errors: list[str] = []  # causes seen during the first connect
        self.last_error = ""
        # Refusals: the server rejected the credentials, or a TLS certificate
        # check failed. Retrying with the same settings cannot help.
        self.refusals = 0  # among ``errors`` (the first connect)
        self.refused = ""  # a refusal that ends the first connect at once
        self.auth_failures = 0  # consecutive refusals while reconnecting
        #: Consecutive refusals after which reconnecting stops (plain network
        #: errors never count: an outage is retried per max_reconnect_attempts).
        self.auth_failure_limit = 3
        #: Why the connection ended without the provider closing it, if it did.
        self.failure: ConnectError | None = None
        self._connecting: Client | None = None  # the client of the first connect
        self._connect_task: Any = None  # its asyncio task, while it runs
        self.events_send, self.events_receive = trio.open_memory_channel[str](256)
        self.streams: dict[str, str] = {}  # topic (or root) -> stream name
        self.stream_lock = trio.Lock()
        self.subscriptions: set[NatsSubscription] = set()
        self.dropped = 0
        self.replies = _Replies(self)

    # -- nats-py callbacks (asyncio side, trio's thread) -------------------------------

    def _event(self, event: str) -> None:
        with suppress(trio.WouldBlock, trio.ClosedResourceError):
            self.events_send.send_nowait(event)

    async def _error_cb(self, error: Exception) -> None:
        import ssl

        from nats.errors import AuthorizationError, SlowConsumerError, UnexpectedEOF

        from .._errors import AuthError

        if isinstance(error, SlowConsumerError):
            self.dropped += 1
            self._event("slow_consumer")
            return
        text = self.scrub(str(error) or type(error).__name__)
        client = self.nc if self.nc is not None else self._connecting
        info = internals.server_info(client)
        lowered = text.lower()
        refusal, certain = "", True
        if isinstance(error, AuthorizationError) or "authorization violation" in lowered:
            refusal = "authorization violation: the server refused the credentials"
        elif "authentication expired" in lowered or "authentication revoked" in lowered:
            refusal = "the server no longer accepts the credentials"
        elif isinstance(error, ssl.SSLCertVerificationError):
            refusal = "TLS: the server's certificate is not trusted"
        elif isinstance(error, ssl.SSLError) and any(
            alert in lowered
            for alert in ("alert certificate", "alert bad certificate", "unknown ca")
        ):
            refusal = "TLS: the server refused the client certificate (mutual TLS)"
        elif info.get("tls_verify") and isinstance(error, ConnectionResetError | BrokenPipeError):
            # The server asked for a client certificate, then dropped the link
            # right after the handshake: it did not accept ours (or none).
            refusal = "TLS: the server requires a client certificate it trusts (mutual TLS)"
            certain = False
        if refusal:
            text = f"{refusal} ({text})"
            if client is not None:
                # nats-py opens the next attempt's socket without closing this one.
                internals.close_socket(client)
        if self.nc is None:  # the first connect: connect() reports the causes
            self.last_error = text
            if len(self.errors) < 32:
                self.errors.append(text)
            if refusal:
                self.refusals += 1
            task = self._connect_task
            if refusal and certain and not self.refused and task is not None:
                self.refused = text
                task.cancel()  # retrying cannot help: end the first connect now
            self._event("error")
            return
        give_up = False
        if not refusal:
            self.auth_failures = 0  # an outage between refusals: keep reconnecting
        else:
            self.auth_failures += 1
            limit = self.auth_failure_limit
            text += f"; refused {self.auth_failures} time(s) in a row (giving up at {limit})"
            if self.auth_failures >= limit and self.failure is None:
                self.failure = AuthError(
                    f"NATS at {redact_url(self.config.url)} refused this client "
                    f"{self.auth_failures} times in a row while reconnecting: {refusal}"
                )
                # nats-py's reconnect loop gives up and closes (closed_cb); without
                # the internals for that, the watcher fails the provider itself.
                give_up = not internals.available(self.nc)
                if not give_up:
                    internals.give_up_reconnecting(self.nc)
        self.last_error = text
        if not isinstance(error, UnexpectedEOF):  # the server closed the link: its
            self._event("error")  # disconnect is counted (once) in watch()
        if give_up:
            logger.error("%s", self.failure)  # (as _closed_cb does when nats-py closes)
            self._event("closed")

    async def _disconnected_cb(self) -> None:
        self._event("disconnected")

    async def _reconnected_cb(self) -> None:
        self.auth_failures = 0
        if self.fast and self.nc is not None:
            internals.read_in_place(self.nc)  # (a new transport)
        self._event("reconnected")

    async def _closed_cb(self) -> None:
        nc = self.nc
        if nc is not None and not self.closed:
            # nats-py closed the connection itself: reconnecting gave up (after
            # max_reconnect_attempts, or refused by the server: see _error_cb),
            # or it read the server's "Authorization Violation" on a live link.
            if self.failure is None:
                from nats.errors import AuthorizationError

                from .._errors import AuthError

                cause = nc.last_error
                where = f"NATS at {redact_url(self.config.url)}"
                if isinstance(cause, AuthorizationError):
                    self.failure = AuthError(
                        f"{where} refused this client and closed the connection: "
                        "authorization violation"
                    )
                else:
                    last = self.last_error or (
                        self.scrub(str(cause) or type(cause).__name__) if cause else "closed"
                    )
                    self.failure = ConnectError(
                        f"the connection to {where} was lost and reconnecting gave up: {last}"
                    )
            logger.error("%s", self.failure)
        self._event("closed")

    # -- connecting --------------------------------------------------------------------

    async def _aio_connect(self) -> Client:
        import asyncio

        from nats.aio.client import Client

        config = self.config
        servers = [seed.strip() for seed in config.url.split(",")]
        options: dict[str, Any] = dict(config.nats_options)
        nc = Client()
        task = asyncio.current_task()
        self._connecting, self._connect_task = nc, task
        # Bounded attempts for the first connect: with -1 nats-py would retry
        # forever and hide the cause. The configured policy applies afterwards
        # (that switch needs nats-py internals: without them, the configured
        # policy from the start, and connect_timeout bounds the first connect).
        bounded = internals.available(nc)
        first_wait = min(config.reconnect_wait, 0.1) if bounded else config.reconnect_wait
        try:
            await nc.connect(
                servers=servers,
                name=config.cluster_id,
                connect_timeout=config.connect_timeout,  # type: ignore[arg-type,unused-ignore]
                reconnect_time_wait=first_wait,  # type: ignore[arg-type,unused-ignore]
                max_reconnect_attempts=1 if bounded else config.max_reconnect_attempts,
                allow_reconnect=True,
                error_cb=self._error_cb,
                disconnected_cb=self._disconnected_cb,
                reconnected_cb=self._reconnected_cb,
                closed_cb=self._closed_cb,
                **options,
            )
        except BaseException as exc:
            refused = self.refused and isinstance(exc, asyncio.CancelledError)
            if refused and task is not None:
                task.uncancel()  # _error_cb cancelled the connect: the server refused us
            if refused:
                # (nats-py can wait forever for a transport whose TLS failed to close)
                internals.close_socket(nc)
            await nc.close()
            if refused:
                raise ConnectError(self.refused) from None
            raise
        finally:
            self._connecting = self._connect_task = None
        if bounded:
            internals.set_reconnect_policy(nc, config.max_reconnect_attempts, config.reconnect_wait)
        return nc

    async def connect(self) -> None:
        """Connect within ``connect_timeout`` or raise ConnectError (trio).

        A refusal (bad credentials, an untrusted or missing certificate) raises
        :class:`AuthError` as soon as the server shows it, not after the timeout.
        """
        from .._errors import AuthError

        config = self.config
        self.metrics.connection_attempts.add(1)
        cause = ""
        nc = None
        with trio.move_on_after(config.connect_timeout):
            try:
                nc = await self.bridge.call(self._aio_connect)
            except Exception as exc:
                cause = self.scrub(str(exc) or type(exc).__name__)
        if nc is None:
            self.metrics.connection_errors.add(1)
            reasons = [e for e in self.errors if e]
            reason = self.refused or (reasons[-1] if reasons else (cause or "timed out"))
            where = f"could not connect to NATS at {redact_url(config.url)}"
            if self.refused or (reasons and self.refusals == len(reasons)):
                raise AuthError(f"{where}: {reason}")
            raise ConnectError(f"{where} within {config.connect_timeout:g}s: {reason}")
        self.errors.clear()
        self.nc = nc
        self.connected = True
        self.fast = internals.available(nc)
        if self.fast:
            internals.take_raw_messages(nc)
            internals.read_in_place(nc)
        write = self._write if self.fast else self._write_public
        self.bridge.set_publisher(nc.publish, write, self._on_publish_error)
        if not config.jetstream.disabled:
            self.js = nc.jetstream(timeout=_API_TIMEOUT)
            self.jsm = nc.jsm(timeout=_API_TIMEOUT)
            await self.replies.start()

    async def _write(self, commands: list[bytes]) -> None:
        """Hand encoded PUB/HPUB commands to nats-py's outgoing buffer, as
        ``Client.publish`` does one at a time, and kick its flusher once."""
        nc = self.nc
        assert nc is not None
        if nc.is_closed or nc.is_draining_pubs:
            raise ProviderClosedError("the NATS connection is closed")
        size = 0
        for command in commands:
            size += len(command)
        if not await internals.write_pending(nc, commands, size):
            raise PublishError(
                "disconnected and the reconnect buffer is full", unconfirmed=len(commands)
            )

    def send(self, commands: list[bytes], size: int | None = None) -> bool:
        """Send encoded commands (``size`` bytes in all) in order with
        everything queued before (trio); never waits. True when the bridge's
        queue is full: the caller should wait for room (backpressure).

        After a quiet spell (nothing written straight from here for
        ``_QUIET`` seconds), and when nothing is queued ahead of them (the
        bridge's pump is idle and nats-py's outgoing buffer is empty), they
        go straight to the socket from here: no scheduling round of the
        pump, nor of nats-py's flusher, which is what a caller waiting for
        the server's reply (a JetStream publish, a confirmed ack) pays for
        otherwise. Else they are queued on the bridge, which writes them in
        order, together with whatever else comes before it runs: under load
        one write carries many commands, not one system call each.
        """
        if size is None:
            size = sum(map(len, commands))
        now = trio.current_time()
        if now - self.last_direct >= _QUIET and self._write_now(commands, size):
            self.last_direct = now
            return False
        return self.bridge.queue(commands, size)

    def _write_now(self, commands: list[bytes], size: int) -> bool:
        nc = self.nc
        if (
            not self.fast
            or size > _WRITE_NOW_BYTES
            or nc is None
            or not nc.is_connected
            or not self.bridge.idle
        ):
            return False
        transport = internals.socket_writer(nc)
        if transport is None:  # queued output, backpressure, or not a stream socket
            return False
        transport.write(commands[0] if len(commands) == 1 else b"".join(commands))
        internals.count_out(nc, len(commands), size)
        return True

    async def _write_public(self, commands: list[bytes]) -> None:
        """The fallback of :meth:`_write` through nats-py's public ``publish``
        (used when the nats-py in use lacks the internals the fast path needs,
        or when ``PIKO_NATS_PUBLIC_PATH=1``): same bytes on the wire, slower."""
        nc = self.nc
        assert nc is not None
        if nc.is_closed or nc.is_draining_pubs:
            raise ProviderClosedError("the NATS connection is closed")
        for command in commands:
            subject, reply, headers, payload = _decode_command(command)
            await nc.publish(subject, payload, reply, headers)

    def _on_publish_error(self, error: BaseException, count: int) -> None:
        self.dropped += count
        if self.dropped in (1, 10, 100, 1000) or self.dropped % 10_000 == 0:
            logger.warning(
                "core NATS publish dropped (%d so far): %s", self.dropped, self.scrub(str(error))
            )

    # -- the reconnect watcher ---------------------------------------------------------

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the connection's events: keep ``connected``, re-provision after a
        reconnect, count reconnections (a task of the provider nursery)."""
        task_status.started()
        async for event in self.events_receive:
            if event == "disconnected":
                if self.connected and not self.closed:
                    # One connection error per lost link, however it was lost (as
                    # Piko's Go provider counts it); our own close is none.
                    self.metrics.connection_errors.add(1)
                    logger.warning("NATS connection lost; reconnecting")
                self.connected = False
            elif event == "reconnected":
                self.connected = True
                self.metrics.reconnections.add(1)
                logger.info("NATS connection re-established")
                self.streams.clear()  # a restarted server may have lost them
                for subscription in list(self.subscriptions):
                    subscription._on_reconnect()
            elif event == "closed":
                self.connected = False
                if self.failure is not None and not self.closed:
                    # nats-py gave the connection up (credentials refused, or
                    # max_reconnect_attempts spent): fail the provider with why.
                    raise self.failure
            elif event == "slow_consumer":
                if self.dropped in (1, 10, 100, 1000) or self.dropped % 10_000 == 0:
                    logger.warning("slow consumer: nats-py dropped %d message(s)", self.dropped)
            elif event == "error" and self.nc is not None:
                # (errors of the first connect are reported by its ConnectError)
                self.metrics.connection_errors.add(1)
                logger.warning("NATS error: %s", self.last_error)

    # -- JetStream provisioning --------------------------------------------------------

    async def stream_for(self, topic: str) -> str:
        """The stream that holds ``topic``; with auto-provisioning, created on first use."""
        jetstream = self.config.jetstream
        root = topic_root(topic)
        key = root if jetstream.auto_provision else topic
        name = self.streams.get(key)
        if name is not None:
            return name
        if root in ("*", ">"):
            raise InvalidTopicError(
                f"topic {topic!r}: under JetStream the first token may not be a wildcard"
            )
        async with self.stream_lock:
            name = self.streams.get(key)
            if name is None:
                name = await self.bridge.call(self._aio_stream_for, topic, root)
                self.streams[key] = name
            return name

    async def _aio_stream_for(self, topic: str, root: str) -> str:
        from nats.js.api import StreamConfig
        from nats.js.errors import APIError, NotFoundError

        jsm = self.jsm
        assert jsm is not None
        jetstream = self.config.jetstream
        for attempt in range(3):
            try:
                return await jsm.find_stream_name_by_subject(topic)
            except NotFoundError:
                if not jetstream.auto_provision:
                    raise StreamNotFoundError(
                        f"no JetStream stream holds topic {topic!r} (auto_provision is off)"
                    ) from None
            name = stream_name(jetstream.durable_prefix, root)
            try:
                await jsm.add_stream(
                    StreamConfig(
                        name=name,
                        subjects=[root, root + ".>"],
                        num_replicas=jetstream.replicas,
                        duplicate_window=jetstream.duplicate_window,
                    )
                )
                return name
            except APIError as exc:
                # 10058: name in use, 10065: subjects overlap (a racing creator won).
                if exc.err_code not in (10058, 10065) or attempt == 2:
                    raise
        raise StreamNotFoundError(f"could not provision a stream for {topic!r}")  # pragma: no cover

    async def close(self) -> None:
        """Close the connection (trio), bounded by the caller's deadline, or
        by ``close_timeout`` without one.

        Not nats-py's ``drain``: by now the drain has closed every
        subscription of ours and flushed the publisher, and ``drain`` swallows
        a cancellation, then waits on the server (a server that stopped
        answering would hold it past the budget). ``close`` writes what is
        still buffered and closes the socket.
        """
        self.closed = True
        nc = self.nc
        if nc is None or nc.is_closed:
            return
        # nats-py closes in milliseconds, unless its reconnect loop is stuck on
        # a server that refuses us: then the bridge's close ends it.
        with trio.move_on_after(min(max(self.config.close_timeout, 0.1), _CLOSE_LIMIT)):
            try:
                await self.bridge.call(nc.close, grace=0.0)
            except Exception as exc:
                logger.debug("NATS close failed: %s", self.scrub(str(exc)))
        self.connected = False


def _no_jetstream(conn: _Connection, error: BaseException | None = None) -> str | None:
    """Why JetStream failed, if the server has none (else None).

    Called after a JetStream request found no responder (``error`` a
    ServiceUnavailableError or NoRespondersError, or a publish answered 503):
    the server's INFO then says whether JetStream is enabled at all.
    """
    if error is not None and type(error).__name__ not in (
        "ServiceUnavailableError",
        "NoRespondersError",
    ):
        return None
    info = internals.server_info(conn.nc)
    if info.get("jetstream"):
        return None
    return (
        f"JetStream is not enabled on the NATS server at {redact_url(conn.config.url)}: "
        f"start nats-server with -js (jetstream {{}} in its config), or use core NATS "
        f"with NatsConfig(jetstream=JetStreamConfig(disabled=True))"
    )
