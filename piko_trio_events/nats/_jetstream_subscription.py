"""JetStream subscriptions: pull consumers with explicit acks, flow control,
in-progress signals, redelivery.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from .._abc import StartPosition
from .._errors import AckError, ConfigError, ConnectError, PikoEventsError, ProviderClosedError
from .._message import Delivery, Message
from .._uuid import new_uuid
from ._connection import _no_jetstream
from ._limits import (
    _ACK_TIMEOUT,
    _CAPACITY,
    _CONFIRMED_KEPT,
    _PENDING_BYTES,
    _PENDING_MSGS,
    _PULL_EXPIRES,
    _PULL_HEARTBEAT,
)
from ._names import consumer_name, topic_root
from ._replies import _Waiter
from ._subscription import NatsSubscription
from ._wire import _metadata_of, _nak

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from ._connection import _Connection

logger = logging.getLogger("piko_trio_events.nats")


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
        # Stream sequences of the latest confirmed acks (insertion order, bounded).
        self._confirmed: dict[tuple[int, str], None] = {}
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

        A server that answers with a refusal (settings it cannot take, such
        as replicas on a single server; a cluster with no peers for the
        placement while a node is down) is asked again for
        ``_REFUSAL_PATIENCE`` seconds, then subscribe raises ConnectError
        with the server's reason.
        """
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeoutError
        from nats.js.errors import APIError, ServiceUnavailableError

        from . import _limits

        delay = 0.1
        refused_since: float | None = None
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
            except APIError as exc:  # (after ServiceUnavailableError, one too)
                reason = self._conn.scrub(exc.description or str(exc) or type(exc).__name__)
                now = trio.current_time()
                if refused_since is None:
                    refused_since = now
                if now - refused_since >= _limits._REFUSAL_PATIENCE or self._conn.closed:
                    raise ConnectError(
                        f"cannot subscribe to {self.pattern!r}: the server refused its stream "
                        f"or consumer: {reason} (code {exc.code}, error {exc.err_code})"
                    ) from None
                logger.warning(
                    "the server refused the stream or consumer for %r (%s); asking again in %.1fs",
                    self.pattern,
                    reason,
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

    def _convert(self, raw: Any) -> Message | None:
        meta = raw.metadata
        sequence = meta.sequence.stream if meta.sequence else None
        uuid, metadata = _metadata_of(raw.headers)
        # (sequence and uuid: a stream re-created after a server lost it numbers
        # its messages from 1 again)
        if (sequence, uuid) in self._confirmed:
            self._drop_stale(raw)
            return None
        attempt = meta.num_delivered or 1
        delivery = Delivery(
            raw.subject,
            attempt,
            attempt > 1,
            sequence,
            meta.timestamp,
        )
        msg = Message._received(uuid, raw.data, metadata, delivery, self)
        self._handed[id(msg)] = (msg, raw.reply)
        self._received[self.pattern] += 1
        if attempt > 1:
            self._redelivered[self.pattern] += 1
        return msg

    def _drop_stale(self, raw: Any) -> None:
        """A delivery of a message whose ack the server already confirmed here
        (the server redelivered it while it was held: an outage longer than
        AckWait): never handed out, for ``ack()`` returned True. Acked again
        (harmless: the server holds the ack) so that it settles at once."""
        self._unsettled.pop(raw.reply, None)
        self._bridge.push((raw.reply, b"+ACK", "", None))
        room = self._prefetch - len(self._unsettled) - self._credits
        if room >= self._refill:
            self._wake_puller()

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
        command = b"PUB %b %b 4\r\n+ACK\r\n" % (reply.encode(), waiter.reply(0))
        self._conn.send([command], len(command))
        try:
            await waiter.wait(_ACK_TIMEOUT, self._conn.closing_by)
        finally:
            self._acking.discard(waiter)
        if not waiter.unconfirmed:
            # Remembered, so that a stale redelivery of it is not handed out.
            sequence = message.delivery.sequence if message.delivery else None
            if sequence is not None:
                confirmed = self._confirmed
                confirmed[sequence, message.uuid] = None
                if len(confirmed) > _CONFIRMED_KEPT:
                    del confirmed[next(iter(confirmed))]
        else:
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
            message._mark_nacked()
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
