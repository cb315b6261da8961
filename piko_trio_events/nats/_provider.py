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

import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import trio

from .._abc import StartPosition, validate_prefetch, validate_start
from .._config import NatsConfig, redact_url
from .._errors import (
    AckError,
    ConfigError,
    ConnectError,
    InvalidMessageError,
    InvalidTopicError,
    PikoEventsError,
    ProviderClosedError,
    PublishError,
    StreamNotFoundError,
)
from .._lifecycle import DrainStep, drain, reserve
from .._message import (
    _NACKED,
    UUID_HEADER,
    Delivery,
    Message,
    checked_payload,
    validate_metadata,
)
from .._metrics import ProviderMetrics, provider_metrics
from .._provider_base import ProviderBase
from .._router import Router
from .._topics import validate_topic
from .._util import error_leaves
from .._uuid import new_uuid
from ._names import consumer_name, queue_group, stream_name, topic_root

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSub
    from nats.js import JetStreamContext
    from nats.js.manager import JetStreamManager

    from ._bridge import Bridge, Job

__all__ = [
    "NatsProvider",
    "NatsPublisher",
    "NatsSubscriber",
    "NatsSubscription",
    "open_nats_provider",
]

logger = logging.getLogger("piko_trio_events.nats")

#: Core publish calls between two schedule points (one outgoing batch).
_YIELD_EVERY: Final = 256
#: Encoded core publishes queued before ``publish`` waits for the pump...
OUT_LIMIT: Final = 1024
#: ... or as many bytes of them (large messages: see :mod:`._bridge`).
OUT_BYTES: Final = 1 << 20
#: Messages a subscription buffers (and, under JetStream, by default holds
#: unsettled: its pull requests never ask for more than its ``prefetch`` room).
_CAPACITY: Final = 256
#: Messages a core NATS subscription buffers before nats-py's queue takes the
#: overflow (core NATS has no flow control: past both, the server's messages
#: are dropped and counted in ``provider.dropped``).
_CORE_BUFFER: Final = 8192
#: nats-py's pending limits per subscription (with -1 its queue is unbounded).
_PENDING_MSGS: Final = 65_536
_PENDING_BYTES: Final = 64 * 1024 * 1024
#: JetStream pull requests: lifetime and idle heartbeat (seconds).
_PULL_EXPIRES: Final = 10.0
_PULL_HEARTBEAT: Final = 1.0
#: Seconds since the last write straight from trio after which the next one
#: may be one too (closer ones are queued and batched: see ``_Connection.send``).
_QUIET: Final = 0.00005
#: At most this many bytes are written straight from trio (see ``_Connection.send``).
_WRITE_NOW_BYTES: Final = 256 * 1024
#: How long a JetStream publish waits for the server's acks (seconds).
_PUBLISH_ACK_TIMEOUT: Final = 5.0
#: How long a confirmed ack waits for the server (seconds).
_ACK_TIMEOUT: Final = 5.0
#: How long JetStream API requests wait (seconds).
_API_TIMEOUT: Final = 5.0


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


def _check_message(msg: object) -> None:
    if not isinstance(msg, Message):
        raise TypeError(f"publish() takes Message objects, not {type(msg).__name__}")


_UUID_LINE: Final = b"NATS/1.0\r\n" + UUID_HEADER.encode() + b": "


def _encode(prefix: bytes, msg: Message, track_id: bool | bytes, limit: int = 1024 * 1024) -> bytes:
    """The HPUB command for ``msg`` (``prefix`` is ``b"HPUB <subject> "``).

    The same bytes nats-py's ``publish(subject, payload, headers=...)``
    writes, built in one go: the uuid in ``_watermill_message_uuid``, the
    metadata as headers, and with ``track_id`` a ``Nats-Msg-Id``: the uuid,
    after ``track_id`` itself when it is bytes (a topic qualifier).

    The caller has checked the metadata (``validate_metadata``). Raises
    InvalidMessageError when headers and payload together exceed ``limit`` (the
    server's max_payload: it would close the connection, and nats-py the
    client, for good), TypeError when the payload is not bytes-like.
    """
    uuid = msg.uuid.encode()
    metadata = msg.metadata
    if metadata or track_id:
        parts = [_UUID_LINE, uuid, b"\r\n"]
        for key, value in metadata.items():
            parts += (key.encode(), b": ", value.encode(), b"\r\n")
        if track_id:
            qualifier = track_id if type(track_id) is bytes else b""
            parts += (b"Nats-Msg-Id: ", qualifier, uuid, b"\r\n")
        parts.append(b"\r\n")
        header = b"".join(parts)
    else:
        header = _UUID_LINE + uuid + b"\r\n\r\n"
    payload = msg.payload
    if type(payload) is not bytes:  # replaced after construction
        payload = msg.payload = checked_payload(payload)
    size = len(header)
    total = size + len(payload)
    if total > limit:
        raise InvalidMessageError(
            f"message {msg.uuid!r} exceeds the server's limit of {limit} bytes (max_payload): "
            f"{len(payload)} bytes of payload and {size} of headers"
        )
    return b"%b%d %d\r\n%b%b\r\n" % (prefix, size, total, header, payload)


#: nats-py internals the fast publish path writes to (present in nats-py 2.16).
_FAST_PATH_ATTRIBUTES: Final = (
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_flush_pending",
    "stats",
)


def _fast_path_available(nc: Any) -> bool:
    """Whether encoded commands can go straight into ``nc``'s outgoing buffer."""
    if os.environ.get("PIKO_NATS_PUBLIC_PATH") == "1":
        return False
    return all(hasattr(nc, name) for name in _FAST_PATH_ATTRIBUTES)


def _decode_command(command: bytes) -> tuple[str, str, dict[str, str] | None, bytes]:
    """(subject, reply, headers, payload) of a PUB / HPUB command built here."""
    line, _, body = command.partition(b"\r\n")
    words = line.split(b" ")
    body = body[:-2]  # the closing CRLF
    if words[0] == b"PUB":
        reply = words[2].decode() if len(words) == 4 else ""
        return words[1].decode(), reply, None, body
    reply = words[2].decode() if len(words) == 5 else ""
    header_size = int(words[-2])
    headers: dict[str, str] = {}
    for header_line in body[:header_size].split(b"\r\n")[1:]:
        if header_line:
            key, _, value = header_line.partition(b": ")
            headers[key.decode()] = value.decode()
    return words[1].decode(), reply, headers, body[header_size:]


def _raw_metadata(headers: bytes | None) -> tuple[str, dict[str, str]]:
    """The uuid and the user metadata of a raw header block (fast path).

    The block this library writes for a message without metadata (the uuid
    alone) is sliced, not parsed; any other goes through nats-py's parser.
    """
    if not headers:
        return new_uuid(), {}
    start = len(_UUID_LINE)
    if headers.startswith(_UUID_LINE):
        end = headers.find(b"\r\n", start)
        if end == len(headers) - 4:
            uuid = headers[start:end].strip().decode("utf-8", "replace")
            return uuid or new_uuid(), {}
    from nats.aio.client import Client

    first = headers.find(b"\r\n")
    parsed = Client._parse_header_lines(headers[first + 2 :]) if first >= 0 else {}
    return _metadata_of(parsed)


def _metadata_of(headers: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    """The uuid and the user metadata of received headers (consumes ``headers``)."""
    if not headers:
        return new_uuid(), {}
    uuid = headers.pop(UUID_HEADER, None) or new_uuid()
    if headers:
        for key in [k for k in headers if k[:5].lower() == "nats-"]:
            del headers[key]
    return uuid, headers


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
        info: dict[str, Any] = getattr(client, "_server_info", None) or {}
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
            if client is not None and client._transport is not None:
                # nats-py opens the next attempt's socket without closing this one.
                client._transport.close()  # type: ignore[no-untyped-call]
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
                # Make nats-py's own reconnect loop give up: a server that has
                # failed more than max_reconnect_attempts times is dropped from
                # the pool, and an empty pool closes the connection (closed_cb).
                self.nc.options["max_reconnect_attempts"] = 1
                for server in self.nc._server_pool:
                    server.reconnects = max(server.reconnects, 2)
        self.last_error = text
        if not isinstance(error, UnexpectedEOF):  # the server closed the link: its
            self._event("error")  # disconnect is counted (once) in watch()

    async def _disconnected_cb(self) -> None:
        self._event("disconnected")

    async def _reconnected_cb(self) -> None:
        self.auth_failures = 0
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
        try:
            # Bounded attempts for the first connect: with -1 nats-py would retry
            # forever and hide the cause. The configured policy applies afterwards.
            await nc.connect(
                servers=servers,
                name=config.cluster_id,
                connect_timeout=config.connect_timeout,  # type: ignore[arg-type,unused-ignore]
                reconnect_time_wait=min(config.reconnect_wait, 0.1),  # type: ignore[arg-type,unused-ignore]
                max_reconnect_attempts=1,
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
            if refused and nc._transport is not None:
                # (nats-py can wait forever for a transport whose TLS failed to close)
                nc._transport.close()  # type: ignore[no-untyped-call]
            await nc.close()
            if refused:
                raise ConnectError(self.refused) from None
            raise
        finally:
            self._connecting = self._connect_task = None
        nc.options["max_reconnect_attempts"] = config.max_reconnect_attempts
        nc.options["reconnect_time_wait"] = config.reconnect_wait
        for server in nc._server_pool:
            server.reconnects = 0
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
        self.fast = _fast_path_available(nc)
        if self.fast:
            self._read_raw(nc)
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
        if not nc.is_connected and nc._pending_data_size + size > nc._max_pending_size:
            raise PublishError(
                "disconnected and the reconnect buffer is full", unconfirmed=len(commands)
            )
        nc._pending.extend(commands)
        nc._pending_data_size += size
        nc.stats["out_msgs"] += len(commands)
        nc.stats["out_bytes"] += size
        await nc._flush_pending(force_flush=nc._pending_data_size > nc._max_pending_size)

    def _read_raw(self, nc: Client) -> None:
        """Fast path: messages of the provider's own subscriptions (those made
        with a :class:`_ReadLoopDispatch` that takes raw bytes) skip nats-py's
        header parsing and ``Msg`` objects: its ``_process_msg`` is wrapped,
        and hands every other message on unchanged."""
        process: Any = nc._process_msg  # (it is given None for "no headers")
        stats = nc.stats

        async def process_msg(
            sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            sub = nc._subs.get(sid)
            if sub is not None:
                dispatch: Any = sub._future
                if type(dispatch) is _ReadLoopDispatch and dispatch.raw is not None:
                    stats["in_msgs"] += 1
                    stats["in_bytes"] += len(data)
                    sub._received += 1
                    try:
                        dispatch.raw(subject, reply, data, headers)
                    except Exception:
                        logger.exception("handling a message from nats-py's read loop failed")
                    return
            await process(sid, subject, reply, data, headers)

        cast(Any, nc)._process_msg = process_msg

    def send(self, commands: list[bytes]) -> None:
        """Send encoded commands in order with everything queued before (trio).

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
        now = trio.current_time()
        if now - self.last_direct >= _QUIET and self._write_now(commands):
            self.last_direct = now
        else:
            bridge = self.bridge
            out = bridge._out
            was_empty = not out
            out.extend(commands)
            if was_empty:
                bridge._kick()

    def _write_now(self, commands: list[bytes]) -> bool:
        nc = self.nc
        if not self.fast or nc is None or nc._pending or not nc.is_connected:
            return False
        if not self.bridge.idle:
            return False
        writer = getattr(nc._transport, "_io_writer", None)
        if writer is None:  # not a stream transport (websocket): the flusher writes
            return False
        transport = writer.transport
        # A socket that did not take everything yet: the flusher applies backpressure.
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        size = 0
        for command in commands:
            size += len(command)
        if size > _WRITE_NOW_BYTES:
            return False
        data = commands[0] if len(commands) == 1 else b"".join(commands)
        transport.write(data)
        stats = nc.stats
        stats["out_msgs"] += len(commands)
        stats["out_bytes"] += size
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
        with trio.move_on_after(max(self.config.close_timeout, 0.1)):
            try:
                await self.bridge.call(nc.close, grace=0.0)
            except Exception as exc:
                logger.debug("NATS close failed: %s", self.scrub(str(exc)))
        self.connected = False


class _Waiter:
    """Replies expected for one batch (a JetStream publish, a confirmed ack)."""

    __slots__ = ("_done", "_prefix", "_seen", "no_stream", "reason", "remaining", "unconfirmed")

    def __init__(self, prefix: bytes, count: int) -> None:
        self._prefix = prefix
        self._seen = bytearray(count)
        self.remaining = count
        self.unconfirmed = count
        self.reason = ""
        self.no_stream = False
        self._done = trio.Event()

    def reply(self, index: int) -> bytes:
        return self._prefix + str(index).encode()

    def _answer(self, index: int, error: str | None, no_stream: bool = False) -> None:
        seen = self._seen
        if index >= len(seen) or seen[index]:
            return
        seen[index] = 1
        self.remaining -= 1
        if error is None:
            self.unconfirmed -= 1
        else:
            self.reason = self.reason or error
            self.no_stream = self.no_stream or no_stream
        if self.remaining == 0:
            self._done.set()

    def fail(self, reason: str) -> None:
        """Give up on the replies still expected: ``wait`` returns at once."""
        if self.remaining:
            self.reason = self.reason or reason
            self._done.set()

    async def wait(self, limit: float, until: float = math.inf) -> None:
        """Wait for every reply, at most ``limit`` seconds and not past
        ``until`` (trio time), shielded from cancellation (what is in flight
        finishes or fails first)."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = min(trio.current_time() + limit, until)
            await self._done.wait()


class _ReadLoopDispatch:
    """Takes the place of the future of a subscription (nats-py's old-style
    request): nats-py's read loop calls ``set_result`` with every message of
    that subscription, and this calls ``callback`` at once (fast path only).
    With ``raw``, the connection's read path (see ``_Connection._read_raw``)
    hands it the message's bytes instead, before nats-py parses its headers.

    An error of either is logged, never raised: it would end the read loop.
    """

    __slots__ = ("_callback", "raw")

    def __init__(
        self,
        callback: Callable[[Msg], None],
        raw: Callable[[bytes, bytes, bytes, bytes | None], None] | None = None,
    ) -> None:
        self._callback = callback
        #: ``raw(subject, reply, payload, headers)``, bytes as read.
        self.raw = raw

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        try:
            self._callback(msg)
        except Exception:
            logger.exception("handling a message from nats-py's read loop failed")


class _Replies:
    """One inbox subscription collecting the replies of JetStream publishes and
    confirmed acks, counted per batch: no asyncio future per message (each
    future callback would cost a trio scheduling round under trio-asyncio)."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._waiters: dict[str, _Waiter] = {}
        self._prefix = ""
        self._next = 0

    async def start(self) -> None:
        conn = self._conn
        nc = conn.nc
        assert nc is not None
        self._prefix = nc.new_inbox() + "."
        if conn.fast:
            # nats-py hands a message for a subscription made with a future to
            # ``future.set_result`` inside its read loop; this stand-in takes
            # each reply there, sparing the subscription task's scheduling round.
            dispatch = _ReadLoopDispatch(self._on_reply_now, self._on_reply_raw)
            callback, future = None, cast(Any, dispatch)
        else:
            callback, future = self._on_reply, None
        await conn.bridge.call(
            nc.subscribe,
            self._prefix + ">",
            "",
            callback,
            future,
            0,
            _PENDING_MSGS,
            _PENDING_BYTES,
        )

    def expect(self, count: int) -> _Waiter:
        self._next += 1
        key = str(self._next)
        waiter = _Waiter(f"{self._prefix}{key}.".encode(), count)
        self._waiters[key] = waiter
        return waiter

    def forget(self, waiter: _Waiter) -> None:
        key = waiter._prefix.decode()[len(self._prefix) : -1]
        self._waiters.pop(key, None)

    async def _on_reply(self, msg: Msg) -> None:
        self._on_reply_now(msg)

    def _on_reply_now(self, msg: Msg) -> None:
        headers = msg.headers
        self._answer(msg.subject, msg.data, headers.get("Status") if headers else None)

    def _on_reply_raw(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        # An inline status: "NATS/1.0 503\r\n..." (a space after the version).
        status = headers[9:12].decode() if headers and headers[8:9] == b" " else None
        self._answer(subject.decode(), data, status)

    def _answer(self, subject: str, data: bytes, status: str | None) -> None:
        key, _, index = subject[len(self._prefix) :].partition(".")
        waiter = self._waiters.get(key)
        if waiter is None or not index.isdigit():
            return
        if status == "503":
            waiter._answer(
                int(index), "no response from stream (no stream holds the subject)", True
            )
        else:
            if b'"error"' in data:
                try:
                    description = json.loads(data)["error"].get("description", "error")
                except (ValueError, KeyError, AttributeError):
                    description = data.decode(errors="replace")
                waiter._answer(int(index), str(description))
            else:
                waiter._answer(int(index), None)
        if waiter.remaining == 0:
            self._waiters.pop(key, None)


class NatsPublisher:
    """Publishes to NATS subjects (core) or JetStream streams.

    Core NATS: ``publish`` returns once the messages are handed to the
    connection's outgoing batch; it is a cancellation point every call and
    yields to the scheduler once per batch. JetStream: ``publish`` returns
    once every message is stored (the acks of one call are pipelined); a
    call cancelled mid-batch first finishes or fails the batch in flight
    (bounded by ``close_timeout``). A publish that cannot complete raises
    :class:`PublishError` with the number of unconfirmed messages.
    """

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._bridge = connection.bridge
        jetstream = connection.config.jetstream
        self._jetstream = not jetstream.disabled
        self._track_id = jetstream.track_message_id
        self._published = connection.metrics.published
        self._calls = 0
        self._closed = False
        self._prefixes: dict[str, bytes] = {}
        self._max_payload = 1024 * 1024  # the server's, once connected

    async def publish(self, topic: str, *messages: Message) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_topic(topic)
        if self._closed:
            raise ProviderClosedError(f"cannot publish to {topic!r}: the provider is closed")
        if self._jetstream:
            await self._publish_js(topic, messages)
            return
        prefix = self._prefixes.get(topic)
        if prefix is None:
            prefix = self._prefixes[topic] = b"HPUB " + topic.encode() + b" "
        track = self._track_id
        limit = self._max_payload
        # Check and encode every message before queueing any: all or nothing.
        encoded = []
        size = 0
        for msg in messages:
            if type(msg) is not Message:
                _check_message(msg)
            if msg.metadata:
                validate_metadata(msg.metadata)
            command = _encode(prefix, msg, track, limit)
            size += len(command)
            encoded.append(command)
        bridge = self._bridge
        out = bridge._out
        if encoded:
            self._published[topic] += len(encoded)
            # A publish after a quiet spell goes straight to the socket (no
            # scheduling round of the pump nor of nats-py's flusher: latency);
            # those that follow it closely are queued, and written together.
            # (``_Connection.send``, inlined: this is the hot path.)
            conn = self._conn
            now = trio.current_time()
            if now - conn.last_direct < _QUIET or not conn._write_now(encoded):
                was_empty = not out
                out.extend(encoded)
                if was_empty:
                    bridge._kick()
                bridge.queued_bytes += size
            else:
                conn.last_direct = now
        if len(out) >= OUT_LIMIT or bridge.queued_bytes >= OUT_BYTES:
            await bridge.wait_space()
        else:
            self._calls += 1
            if self._calls >= _YIELD_EVERY:
                self._calls = 0
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _publish_js(self, topic: str, messages: tuple[Message, ...]) -> None:
        if not messages:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        conn = self._conn
        for msg in messages:  # refuse bad input before provisioning a stream for it
            if type(msg) is not Message:
                _check_message(msg)
            if msg.metadata:
                validate_metadata(msg.metadata)
        if conn.config.jetstream.auto_provision:
            try:
                await conn.stream_for(topic)
            except (StreamNotFoundError, InvalidTopicError, ProviderClosedError):
                raise
            except Exception as exc:
                why = _no_jetstream(conn, exc) or conn.scrub(str(exc) or type(exc).__name__)
                raise PublishError(
                    f"{len(messages)} of {len(messages)} message(s) to {topic!r} are "
                    f"unconfirmed: no stream for it could be provisioned: {why}",
                    unconfirmed=len(messages),
                ) from exc
        # The message id is qualified by the topic: a copy of a message (same
        # uuid) published to another topic of the same stream is stored too,
        # a republish to the same topic once.
        track = topic.encode() + b":" if self._track_id else False
        subject = b"HPUB " + topic.encode() + b" "
        limit = self._max_payload
        waiter = conn.replies.expect(len(messages))
        try:
            encoded = [
                _encode(subject + waiter.reply(i) + b" ", msg, track, limit)
                for i, msg in enumerate(messages)
            ]
        except BaseException:
            conn.replies.forget(waiter)  # nothing of the call was sent
            raise
        conn.send(encoded)
        # Finish or fail the batch in flight, even if cancelled meanwhile.
        await waiter.wait(
            min(_PUBLISH_ACK_TIMEOUT, conn.config.close_timeout + 1.0), conn.closing_by
        )
        if waiter.remaining:
            conn.replies.forget(waiter)
        failed = waiter.unconfirmed
        stored = len(messages) - failed
        if stored:
            self._published[topic] += stored
        await trio.lowlevel.checkpoint_if_cancelled()
        if failed:
            if waiter.no_stream:
                conn.streams.clear()
                missing = _no_jetstream(conn)
                if missing is not None:
                    raise PublishError(
                        f"{failed} of {len(messages)} message(s) to {topic!r} are "
                        f"unconfirmed: {missing}",
                        unconfirmed=failed,
                    )
                if not conn.config.jetstream.auto_provision:
                    raise StreamNotFoundError(
                        f"no JetStream stream holds topic {topic!r} (auto_provision is off)"
                    )
            reason = waiter.reason or "timed out waiting for the server's acks"
            raise PublishError(
                f"{failed} of {len(messages)} message(s) to {topic!r} are unconfirmed: "
                f"{conn.scrub(reason)}",
                unconfirmed=failed,
            )

    async def _close(self) -> None:
        """The drain's publisher step: refuse new publishes, flush what was
        published before, while the connection is up."""
        self._closed = True
        nc = self._conn.nc
        if nc is not None and not nc.is_closed and self._conn.connected:
            await self._bridge.call(nc.flush)

    async def flush(self) -> None:
        """Return once everything published before has reached the server."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        nc = self._conn.nc
        assert nc is not None
        try:
            await self._bridge.call(nc.flush)
        except Exception as exc:
            raise PublishError(
                f"flush failed: {self._conn.scrub(str(exc) or type(exc).__name__)}",
                unconfirmed=0,
            ) from exc


_OPEN: Final = 0
_CLOSED: Final = 1
_ENDED: Final = 2


class NatsSubscription(trio.abc.ReceiveChannel[Message]):
    """One subscription: a trio ReceiveChannel of received messages.

    Closing it (leaving the ``subscribe`` block) unsubscribes; under
    JetStream every message delivered here and not acked is nacked.
    """

    def __init__(
        self, conn: _Connection, pattern: str, group: str | None, buffer: int = _CAPACITY
    ) -> None:
        from ._bridge import Inbox

        self._conn = conn
        self._bridge = conn.bridge
        self.pattern = pattern
        self.group = group
        self._inbox: Inbox[Any] = Inbox(conn.bridge.loop, buffer)
        self._state = _OPEN
        self._sub: NatsSub | None = None
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()
        self._stopped = False
        metrics = conn.metrics
        self._received = metrics.received
        self._acked = metrics.acked
        self._nacked = metrics.nacked
        self._redelivered = metrics.redelivered

    def _convert(self, raw: Any) -> Message:
        raise NotImplementedError

    def _on_reconnect(self) -> None:
        """The connection came back (called by the reconnect watcher)."""

    def receive_nowait(self) -> Message:
        if self._state != _OPEN:
            raise trio.EndOfChannel if self._state == _ENDED else trio.ClosedResourceError
        return self._convert(self._inbox.get_nowait())

    async def receive(self) -> Message:
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._state != _OPEN:
                if self._state == _ENDED:
                    raise trio.EndOfChannel
                raise trio.ClosedResourceError("this subscription was closed")
            try:
                raw = self._inbox.get_nowait()
            except trio.WouldBlock:
                await self._inbox.wait()
                waited = True
                continue
            msg = self._convert(raw)
            if not waited:  # (a wait was a schedule point already: no second round)
                await trio.lowlevel.cancel_shielded_checkpoint()
            return msg

    async def aclose(self) -> None:
        if self._state == _OPEN:
            self._state = _CLOSED
            self._inbox.close()
        await trio.lowlevel.checkpoint()

    def _end(self) -> None:
        """The provider is closing: receivers see EndOfChannel."""
        if self._state == _OPEN:
            self._state = _ENDED
            self._inbox.close()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError


class _CoreSubscription(NatsSubscription):
    """Core NATS: at-most-once; a nack re-queues inside this process.

    The SUB is queued when ``subscribe()`` is called, ahead of any publish
    made after it, so the subscription sees every message published after
    the call (as the router expects).

    On the fast path nats-py's read loop hands each message straight to
    :meth:`_take` (no subscription task in between). The buffer then holds
    ``_CORE_BUFFER`` messages plus what nats-py's pending limits would have
    held (``_PENDING_MSGS`` / ``_PENDING_BYTES``); past that a message is
    dropped and counted, as nats-py counts a slow consumer.
    """

    def __init__(self, conn: _Connection, pattern: str, group: str | None) -> None:
        super().__init__(conn, pattern, group, _CORE_BUFFER)
        nc = conn.nc
        assert nc is not None
        queue = "" if group is None else queue_group(conn.config.queue_group_prefix, group)
        self._overflow_bytes = 0  # payload bytes buffered past _CORE_BUFFER
        if conn.fast:
            callback, future = None, cast(Any, _ReadLoopDispatch(self._take, self._take_raw))
        else:
            callback, future = self._inbox.put, None
        self._subscribing: Job[NatsSub] = self._bridge.submit_inline(
            nc.subscribe,
            self.pattern,
            queue,
            callback,
            future,
            0,
            _PENDING_MSGS,
            _PENDING_BYTES,
        )
        # First deliveries share one Delivery per subject (str, or bytes as read).
        self._first: dict[str | bytes, Delivery] = {}
        self._handed: dict[int, Message] = {}  # delivered, not yet acked or nacked

    async def _start(self) -> None:
        self._sub = await self._subscribing.wait()

    def _take_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A message as read, from the connection's read path (fast path)."""
        self._take((subject, data, headers))

    def _take(self, raw: Any) -> None:
        """A message from nats-py's read loop (fast path; asyncio side, never
        waits): a nats-py ``Msg``, or ``(subject, payload, headers)`` as read."""
        inbox = self._inbox
        if len(inbox) < _CORE_BUFFER:
            if self._overflow_bytes:
                self._overflow_bytes = 0
            inbox.put_nowait(raw)
            return
        size = len(raw[1] if type(raw) is tuple else raw.data)
        if (
            len(inbox) >= _CORE_BUFFER + _PENDING_MSGS
            or self._overflow_bytes + size > _PENDING_BYTES
        ):
            conn = self._conn
            conn.dropped += 1
            conn._event("slow_consumer")
            return
        self._overflow_bytes += size
        inbox.put_nowait(raw)

    def _convert(self, raw: Any) -> Message:
        if type(raw) is Message:
            self._received[self.pattern] += 1
            self._redelivered[self.pattern] += 1
            self._handed[id(raw)] = raw
            return raw
        subject: str | bytes
        if type(raw) is tuple:  # as read (the fast path)
            subject, data, raw_headers = raw
            uuid, metadata = _raw_metadata(raw_headers)
        else:  # a nats-py Msg
            headers = raw.headers
            if headers is not None and len(headers) == 1 and UUID_HEADER in headers:
                uuid = headers[UUID_HEADER]
                metadata = {}
            else:
                uuid, metadata = _metadata_of(headers)
            subject, data = raw.subject, raw.data
        delivery = self._first.get(subject)
        if delivery is None:
            if len(self._first) >= 1024:
                self._first.clear()
            topic = subject.decode() if type(subject) is bytes else subject
            delivery = self._first[subject] = Delivery(cast(str, topic))
        self._received[self.pattern] += 1
        msg = Message._received(uuid, data, metadata, delivery, self)
        self._handed[id(msg)] = msg
        return msg

    async def ack_message(self, message: Message) -> None:
        self._handed.pop(id(message), None)
        self._acked[self.pattern] += 1

    async def nack_message(self, message: Message, delay: float | None) -> None:
        self._handed.pop(id(message), None)
        self._nacked[self.pattern] += 1
        if self._state != _OPEN:
            return  # at-most-once: nothing outlives the subscription
        old = message.delivery
        assert old is not None
        attempt = old.attempt + 1
        again = Message._received(
            message.uuid,
            message.payload,
            dict(message.metadata),
            Delivery(old.topic, attempt, True),
            self,
        )
        if delay and self._nursery is not None:
            self._nursery.start_soon(self._requeue_later, again, delay)
        else:
            self._inbox.put_nowait(again)

    async def _requeue_later(self, message: Message, delay: float) -> None:
        await trio.sleep(delay)
        if self._state == _OPEN:
            self._inbox.put_nowait(message)

    async def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Delivered and never settled: nacked, as on every provider (at-most-once:
        # core NATS has nowhere to redeliver them once the subscription is gone).
        handed, self._handed = self._handed, {}
        for message in handed.values():
            message._state = _NACKED
            self._nacked[self.pattern] += 1
        sub = self._sub
        nc = self._conn.nc
        self._sub = None
        if sub is None or nc is None or nc.is_closed:
            return
        try:
            await self._bridge.call(sub.unsubscribe)
        except Exception as exc:
            logger.debug("unsubscribe failed: %s", self._conn.scrub(str(exc)))


class _JetStreamSubscription(NatsSubscription):
    """JetStream: a pull consumer fed at the rate this subscription settles.

    It holds at most ``prefetch`` messages unsettled (buffered here or handed
    out and not yet acked or nacked): its pull requests ask for the room left.
    """

    def __init__(
        self,
        conn: _Connection,
        pattern: str,
        group: str | None,
        start: StartPosition,
        prefetch: int = _CAPACITY,
    ) -> None:
        super().__init__(conn, pattern, group, max(prefetch, _CAPACITY))
        self._start_position = start
        self._prefetch = prefetch
        # Ask again once a quarter of the prefetch is free: few, large requests.
        self._refill = max(1, prefetch // 4)
        self._stream = ""
        self._consumer = ""
        self._deliver = ""
        self._credits = 0  # messages requested and not yet delivered
        self._unsettled: dict[str, tuple[Any, float]] = {}  # reply -> (raw, since)
        self._handed: dict[int, tuple[Message, str]] = {}  # id(message) -> (message, reply)
        self._pull_wake = trio.Event()
        self._last_activity = 0.0
        self._recreate = False
        self._conflicts = 0  # 409/503 answers since the last pull: back off
        self._ack_async = conn.config.jetstream.ack_async
        self._acking: set[_Waiter] = set()  # confirmed acks waiting for the server
        self._discard = 0  # messages to nack on arrival (queued across a reconnect)

    # -- setup -------------------------------------------------------------------------

    async def _start(self) -> None:
        conn = self._conn
        nc = conn.nc
        assert nc is not None
        if self.group is not None:
            self._consumer = consumer_name(
                conn.config.jetstream.durable_prefix, self.group, self.pattern
            )
        else:
            self._consumer = f"{conn.config.jetstream.durable_prefix}_eph_{new_uuid()[:18]}"
            self._consumer = self._consumer.replace("-", "")
        await self._create_consumer()
        self._deliver = nc.new_inbox()
        self._sub = await self._bridge.call(
            nc.subscribe,
            self._deliver,
            "",
            self._on_msg,
            None,
            0,
            _PENDING_MSGS,
            _PENDING_BYTES,
        )
        conn.subscriptions.add(self)

    async def _create_consumer(self) -> None:
        """Create (or check) the consumer, retrying while the server is away.

        A server outage while subscribing is not an error of the app: the
        connection reconnects forever (``max_reconnect_attempts=-1``), so this
        retries, with a warning each time, until the server answers or the
        provider closes (the router's drain interrupts it).
        """
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeoutError
        from nats.js.errors import ServiceUnavailableError

        delay = 0.1
        while True:
            try:
                await self._ensure_consumer(first=True)
                return
            except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
                why = _no_jetstream(self._conn, exc)
                if why is not None:
                    raise ConnectError(f"cannot subscribe to {self.pattern!r}: {why}") from None
                if self._conn.closed:
                    raise ProviderClosedError(
                        f"the provider closed while subscribing to {self.pattern!r}"
                    ) from exc
                logger.warning(
                    "creating the consumer for %r failed (%s); retrying in %.1fs",
                    self.pattern,
                    self._conn.scrub(f"{type(exc).__name__}: {exc}"),
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, max(self._conn.config.reconnect_wait, 0.1))

    async def _ensure_consumer(self, *, first: bool = False) -> None:
        from nats.js.errors import NotFoundError

        conn = self._conn
        self._stream = await conn.stream_for(self.pattern)
        try:
            await self._bridge.call(self._aio_ensure_consumer, first)
        except NotFoundError:
            # The stream itself is gone (a server that lost its store): provision again.
            conn.streams.pop(topic_root(self.pattern), None)
            conn.streams.pop(self.pattern, None)
            self._stream = await conn.stream_for(self.pattern)
            await self._bridge.call(self._aio_ensure_consumer, first)

    def _consumer_config(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        start = self._start_position
        if start is None:
            start = "all" if self.group is not None else "new"
        config = ConsumerConfig(
            name=self._consumer,
            durable_name=self._consumer if self.group is not None else None,
            filter_subject=self.pattern,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._conn.config.ack_wait_timeout,
            max_deliver=-1,
        )
        if self.group is None:
            config.inactive_threshold = 60.0
        if start == "all":
            config.deliver_policy = DeliverPolicy.ALL
        elif start == "new":
            config.deliver_policy = DeliverPolicy.NEW
        elif isinstance(start, datetime):
            stamp = start if start.tzinfo else start.replace(tzinfo=UTC)
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = stamp.astimezone(UTC)
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = int(start)
        return config

    async def _aio_ensure_consumer(self, first: bool) -> None:
        from nats.js.errors import NotFoundError

        jsm = self._conn.jsm
        assert jsm is not None
        wanted = self._consumer_config()
        if self.group is not None:
            try:
                info = await jsm.consumer_info(self._stream, self._consumer)
            except NotFoundError:
                info = None
            if info is not None:
                if first:
                    self._check_existing(info.config, wanted)
                return
        await jsm.add_consumer(self._stream, config=wanted)

    def _check_existing(self, have: Any, wanted: Any) -> None:
        problems = []
        if have.filter_subject != wanted.filter_subject:
            problems.append(f"filter_subject={have.filter_subject!r}")
        if have.ack_wait is not None and not math.isclose(
            have.ack_wait, wanted.ack_wait, rel_tol=1e-6
        ):
            problems.append(f"ack_wait={have.ack_wait:g}s (asked {wanted.ack_wait:g}s)")
        if self._start_position is not None:
            if have.deliver_policy != wanted.deliver_policy:
                problems.append(f"deliver_policy={getattr(have.deliver_policy, 'value', None)!r}")
            elif wanted.opt_start_seq is not None and have.opt_start_seq != wanted.opt_start_seq:
                problems.append(f"opt_start_seq={have.opt_start_seq!r}")
            elif wanted.opt_start_time is not None and have.opt_start_time != wanted.opt_start_time:
                # nats-py parses the server's normalised RFC 3339 text into an aware
                # datetime: this compares instants, whatever the zone asked for.
                problems.append(f"opt_start_time={have.opt_start_time.isoformat()!r}")
        if problems:
            raise ConfigError(
                f"group {self.group!r} of {self.pattern!r} exists (consumer {self._consumer!r}) "
                f"with other settings: {', '.join(problems)}; asked start={self._start_position!r}"
            )

    # -- delivery (asyncio side) -------------------------------------------------------

    async def _on_msg(self, raw: Msg) -> None:
        self._last_activity = trio.current_time()
        if self._discard:
            # Queued in nats-py before the reconnect was seen (see _on_reconnect).
            self._discard -= 1
            if raw.reply:
                if self._credits > 0:
                    self._credits -= 1
                await raw.nak()
                return
        headers = raw.headers
        if headers and not raw.reply:
            status = headers.get("Status")
            if status is not None:
                self._on_status(status, headers)
                return
        if self._credits > 0:
            self._credits -= 1
        inbox = self._inbox
        if inbox.closed:
            await raw.nak()
            return
        self._unsettled[raw.reply] = (raw, self._last_activity)
        await inbox.put(raw)

    def _on_status(self, status: str, headers: dict[str, str]) -> None:
        if status == "100":
            return  # idle heartbeat / flow control
        pending = headers.get("Nats-Pending-Messages")
        if status in ("404", "408") and pending is not None and pending.isdigit():
            self._credits = max(0, self._credits - int(pending))
        elif status in ("404", "408"):
            self._credits = 0
        else:  # 409 (consumer deleted, max ack pending, ...), 503 (no responders)
            self._credits = 0
            self._conflicts += 1
            if status == "503" or "deleted" in headers.get("Description", "").lower():
                self._recreate = True
        self._wake_puller()

    def _wake_puller(self) -> None:
        wake = self._pull_wake
        if not wake.is_set():
            wake.set()

    def _on_reconnect(self) -> None:
        """A server restarted after ``kill -9`` may have lost the last acks and
        deliveries of this consumer: it delivers those messages again and never
        answers acks of deliveries it forgot (each would wait the ack timeout).
        So what was received and not handed out yet is nacked instead (the
        server sends it again), and confirmed acks in flight fail now."""
        self._credits = 0
        self._recreate = True
        # What nats-py still queues for this subscription came (mostly) from the
        # connection that was lost: nacked on arrival, like the buffer here.
        self._discard = self._sub.pending_msgs if self._sub is not None else 0
        for waiter in list(self._acking):
            waiter.fail("the connection was lost before the server confirmed the ack")
        push = self._bridge.push
        for raw in self._inbox.drain():
            self._unsettled.pop(raw.reply, None)
            push((raw.reply, b"-NAK", "", None))
        self._wake_puller()

    # -- the puller (trio side) --------------------------------------------------------

    async def _pull(self) -> None:
        """Keep pull requests outstanding for exactly the room this subscription has."""
        subject = ""
        while True:
            if self._conflicts:
                # The server refused the last requests: do not spin on it.
                await trio.sleep(min(0.05 * self._conflicts, 1.0))
                self._conflicts = 0
            if self._recreate:
                self._recreate = False
                try:
                    await self._ensure_consumer()
                except (PikoEventsError, Exception) as exc:
                    logger.warning(
                        "re-creating consumer %s failed (retrying): %s",
                        self._consumer,
                        self._conn.scrub(str(exc)),
                    )
                    self._recreate = True
                    await trio.sleep(0.5)
                    continue
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}"
            room = self._prefetch - len(self._unsettled) - self._credits
            if room >= self._refill or (room > 0 and self._credits == 0):
                request = json.dumps(
                    {
                        "batch": room,
                        "expires": int(_PULL_EXPIRES * 1e9),
                        "idle_heartbeat": int(_PULL_HEARTBEAT * 1e9),
                    }
                ).encode()
                self._credits += room
                self._last_activity = trio.current_time()
                self._bridge.push((subject, request, self._deliver, None))
            self._pull_wake = trio.Event()
            with trio.move_on_after(_PULL_HEARTBEAT * 3):
                await self._pull_wake.wait()
            if (
                self._credits > 0
                and trio.current_time() - self._last_activity > _PULL_HEARTBEAT * 3
            ):
                # No message, heartbeat or status for a while: the requests died
                # (a server restart); ask again and make sure the consumer exists.
                self._credits = 0
                if self._conn.connected:
                    self._recreate = True

    async def _keep_in_progress(self) -> None:
        """Tell the server that messages held here longer than a third of
        AckWait are still being worked on, so they are not redelivered."""
        period = self._conn.config.ack_wait_timeout / 3
        while True:
            await trio.sleep(period)
            if not self._conn.connected:
                continue
            limit = trio.current_time() - period
            push = self._bridge.push
            for reply, (raw, since) in list(self._unsettled.items()):
                if since <= limit:
                    push((reply, b"+WPI", "", None))
                    self._unsettled[reply] = (raw, trio.current_time())

    # -- receive / settle --------------------------------------------------------------

    def _convert(self, raw: Any) -> Message:
        meta = raw.metadata
        attempt = meta.num_delivered or 1
        uuid, metadata = _metadata_of(raw.headers)
        delivery = Delivery(
            raw.subject,
            attempt,
            attempt > 1,
            meta.sequence.stream if meta.sequence else None,
            meta.timestamp,
        )
        msg = Message._received(uuid, raw.data, metadata, delivery, self)
        self._handed[id(msg)] = (msg, raw.reply)
        self._received[self.pattern] += 1
        if attempt > 1:
            self._redelivered[self.pattern] += 1
        return msg

    def _settled(self, message: Message) -> str | None:
        entry = self._handed.pop(id(message), None)
        reply = None
        if entry is not None:
            reply = entry[1]
            self._unsettled.pop(reply, None)
            room = self._prefetch - len(self._unsettled) - self._credits
            if room >= self._refill:
                self._wake_puller()
        return reply

    async def ack_message(self, message: Message) -> None:
        reply = self._settled(message)
        if reply is None:
            await trio.lowlevel.checkpoint()
            return
        self._acked[self.pattern] += 1
        if self._ack_async:
            self._bridge.push((reply, b"+ACK", "", None))
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        replies = self._conn.replies
        waiter = replies.expect(1)
        self._acking.add(waiter)
        self._conn.send([b"PUB %b %b 4\r\n+ACK\r\n" % (reply.encode(), waiter.reply(0))])
        try:
            await waiter.wait(_ACK_TIMEOUT, self._conn.closing_by)
        finally:
            self._acking.discard(waiter)
        if waiter.unconfirmed:
            replies.forget(waiter)
            raise AckError(
                f"the server did not confirm the ack of {message.uuid!r} on {self.pattern!r}: "
                f"{self._conn.scrub(waiter.reason or 'timed out')}"
            )
        await trio.lowlevel.checkpoint_if_cancelled()

    async def nack_message(self, message: Message, delay: float | None) -> None:
        reply = self._settled(message)
        if reply is None:
            await trio.lowlevel.checkpoint()
            return
        self._nacked[self.pattern] += 1
        self._bridge.push((reply, _nak(delay), "", None))
        await trio.lowlevel.checkpoint_if_cancelled()

    def _nack_all(self) -> None:
        """Nack everything delivered here and not settled (buffered or handed out)."""
        for raw in self._inbox.drain():
            self._unsettled.pop(raw.reply, None)
            self._bridge.push((raw.reply, b"-NAK", "", None))
        for message, _reply in self._handed.values():
            message._state = _NACKED
        self._handed.clear()
        for reply in list(self._unsettled):
            self._bridge.push((reply, b"-NAK", "", None))
            self._nacked[self.pattern] += 1
        self._unsettled.clear()

    async def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._conn.subscriptions.discard(self)
        self._inbox.close()  # from now on, late deliveries are nacked on arrival
        sub = self._sub
        self._sub = None
        nc = self._conn.nc
        if sub is not None and nc is not None and not nc.is_closed:
            with trio.move_on_after(2.0):
                try:
                    await self._bridge.call(sub.drain)
                except Exception as exc:
                    logger.debug("draining the subscription failed: %s", self._conn.scrub(str(exc)))
        self._nack_all()
        if self.group is None and nc is not None and not nc.is_closed and self._conn.jsm:
            with trio.move_on_after(2.0):
                try:
                    await self._bridge.call(
                        self._conn.jsm.delete_consumer, self._stream, self._consumer
                    )
                except Exception as exc:
                    logger.debug(
                        "deleting ephemeral consumer failed: %s", self._conn.scrub(str(exc))
                    )


def _nak(delay: float | None) -> bytes:
    if not delay:
        return b"-NAK"
    return b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()


class NatsSubscriber:
    """Opens subscriptions on NATS (core or JetStream)."""

    def __init__(self, conn: _Connection) -> None:
        self._nursery: trio.Nursery | None = None  # set once the provider runs
        self._conn = conn
        self._closed = False
        self._open: set[NatsSubscription] = set()

    def subscribe(
        self,
        topic: str,
        group: str | None = None,
        start: StartPosition = None,
        *,
        prefetch: int | None = None,
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Message]]:
        """Subscribe to ``topic`` (``*`` and ``>`` allowed).

        Under JetStream a named group is a durable consumer (it outlives the
        provider and starts at ``start``, by default the first message the
        stream holds); ``group=None`` is an ephemeral consumer starting with
        new messages. Under core NATS a named group is a queue group and
        ``start`` must be None or ``"new"``. Leaving the block unsubscribes
        and nacks every message delivered and not acked.

        Under JetStream the subscription holds at most ``prefetch`` messages
        unsettled (default 256), buffered or received and not yet acked or
        nacked: the rest of a group's backlog stays on the server for its
        other members. Core NATS has no flow control: there ``prefetch`` is
        checked and unused.
        """
        validate_topic(topic, wildcards=True)
        if group is not None and (not isinstance(group, str) or not group):
            raise ConfigError(f"group must be a non-empty str or None, not {group!r}")
        start = validate_start(start)
        prefetch = validate_prefetch(prefetch)
        conn = self._conn
        if self._closed:
            raise ProviderClosedError(f"cannot subscribe to {topic!r}: the provider is closed")
        if conn.config.jetstream.disabled:
            if start not in (None, "new"):
                raise ConfigError(
                    f"start={start!r}: core NATS cannot replay (enable JetStream for it)"
                )
            subscription: NatsSubscription = _CoreSubscription(conn, topic, group)
        else:
            if topic_root(topic) in ("*", ">"):
                raise InvalidTopicError(
                    f"topic {topic!r}: under JetStream the first token may not be a wildcard"
                )
            subscription = _JetStreamSubscription(
                conn, topic, group, start, _CAPACITY if prefetch is None else prefetch
            )
        return self._run(subscription)

    @asynccontextmanager
    async def _run(self, subscription: NatsSubscription) -> AsyncIterator[NatsSubscription]:
        if self._closed or self._nursery is None:
            raise ProviderClosedError("the provider is closed")
        self._open.add(subscription)
        try:
            await subscription._start()
            # Its background tasks live in the provider's (shielded) nursery, so
            # that this context manager never wraps errors in exception groups.
            await self._nursery.start(self._background, subscription)
            yield subscription
        finally:
            self._open.discard(subscription)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = min(
                    trio.current_time() + self._conn.config.close_timeout + 1,
                    self._conn.closing_by,
                )
                if subscription._state == _OPEN:
                    subscription._state = _CLOSED
                await subscription._stop()
            subscription._scope.cancel()

    async def _background(
        self, subscription: NatsSubscription, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with subscription._scope:
            try:
                async with trio.open_nursery() as nursery:
                    subscription._nursery = nursery
                    if isinstance(subscription, _JetStreamSubscription):
                        nursery.start_soon(subscription._pull)
                        nursery.start_soon(subscription._keep_in_progress)
                    task_status.started()
                    await trio.sleep_forever()
            except Exception as exc:
                logger.error(
                    "subscription to %r failed: %s",
                    subscription.pattern,
                    self._conn.scrub(f"{type(exc).__name__}: {exc}"),
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                subscription._end()

    async def _close_all(self) -> None:
        """End every subscription still open (receivers see EndOfChannel) and
        unsubscribe it now, nacking what it holds, while the connection is up."""
        self._closed = True
        for subscription in list(self._open):
            subscription._end()
            await subscription._stop()


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
    info = getattr(conn.nc, "_server_info", None) or {}
    if info.get("jetstream"):
        return None
    return (
        f"JetStream is not enabled on the NATS server at {redact_url(conn.config.url)}: "
        f"start nats-server with -js (jetstream {{}} in its config), or use core NATS "
        f"with NatsConfig(jetstream=JetStreamConfig(disabled=True))"
    )


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error (not counting trio.Cancelled) inside nested groups, else ``group``.

    trio-asyncio's loop and the provider's nurseries wrap errors from the
    body in exception groups; a single error leaves the provider unwrapped.
    """
    leaves = error_leaves(group)
    errors = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(errors) == 1:
        return errors[0]
    if not errors and leaves:
        return leaves[0]
    return group


def _drain_steps(
    config: NatsConfig,
    conn: _Connection,
    subscriber: NatsSubscriber,
    publisher: NatsPublisher,
    bridge: Bridge,
) -> list[DrainStep]:
    """The NATS provider's steps after the router, each with its reserve of
    the one budget (``close_timeout``): subscriptions (unsubscribe, nack what
    they hold) -> publisher (closed, flushed) -> connection (drained, closed)
    -> the asyncio loop bridge."""
    budget = config.close_timeout
    steps = [
        DrainStep("subscriptions", subscriber._close_all, reserve(budget, 0.05, 1.0)),
        DrainStep("publisher", publisher._close, reserve(budget, 0.05, 1.0)),
        DrainStep("connection", conn.close, reserve(budget, 0.05, 1.5)),
        DrainStep("bridge", bridge.aclose, reserve(budget, 0.03, 0.5)),
    ]
    # What still uses the connection (a subscription's own close, a JetStream
    # publish or confirmed ack in flight) gives up before the connection step.
    conn.closing_by = trio.current_time() + budget - steps[2].reserve - steps[3].reserve
    return steps


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
    try:
        async with _open(config) as provider:
            yield provider
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is group:
            raise
        raise single from None


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
    started = time.perf_counter()
    async with trio_asyncio.open_loop() as loop:
        bridge = Bridge(loop, OUT_LIMIT, OUT_BYTES)
        conn = _Connection(config, bridge, metrics)
        service_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:

            async def service(*, task_status: trio.TaskStatus[None]) -> None:
                with service_scope:
                    async with trio.open_nursery() as inner:
                        await inner.start(bridge.serve)
                        await inner.start(conn.watch)
                        subscriber._nursery = inner
                        task_status.started()

            publisher = NatsPublisher(conn)
            subscriber = NatsSubscriber(conn)
            router = Router(
                publisher, subscriber, config.router, default_concurrency=config.subscribers_count
            )
            provider = NatsProvider(config, conn, publisher, subscriber, router)
            try:
                await nursery.start(service)
                await conn.connect()
                assert conn.nc is not None
                publisher._max_payload = conn.nc.max_payload
                await nursery.start(router._run)
            except BaseException:
                metrics.start_error_count.add(1)
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + config.close_timeout
                    await conn.close()
                    await bridge.aclose()
                router._run_scope.cancel()
                service_scope.cancel()
                raise
            metrics.start_count.add(1)
            metrics.start_duration.record((time.perf_counter() - started) * 1000)
            provider._running = True
            try:
                yield provider
            finally:
                provider._running = False
                closing = time.perf_counter()
                report = await drain(
                    router,
                    _drain_steps(config, conn, subscriber, publisher, bridge),
                    budget=config.close_timeout,
                    scrub=conn.scrub,
                )
                router._run_scope.cancel()
                service_scope.cancel()
                conn.events_send.close()
                if not report.ok:
                    metrics.close_error_count.add(1)
                metrics.close_count.add(1)
                metrics.close_duration.record((time.perf_counter() - closing) * 1000)
