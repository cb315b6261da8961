"""Every nats-py internal the provider uses, behind one check.

The provider drives nats-py through its public API, with one exception: the
*fast path*, which writes framed commands into nats-py's outgoing buffer or
straight to its socket, takes its own subscriptions' messages from the read
loop as bytes, and tunes the reconnect policy after the first connect. Each
of those touches nats-py internals, and every such touch is a function here.

:func:`available` is the one check: it looks for every internal these
functions use (client attributes, the classes' attributes, ``subscribe``'s
``future`` parameter) and says no when one is missing, or when
``PIKO_NATS_PUBLIC_PATH=1``. The provider calls the functions below only
when it said yes; otherwise it runs on nats-py's public API alone (same
bytes on the wire, slower), so a nats-py release that renames an internal
costs speed, not correctness. ``tests/nats/test_internals.py`` is the canary:
it fails when the nats-py in use lacks one of them.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = [
    "ReadLoopDispatch",
    "available",
    "class_at",
    "close_socket",
    "count_out",
    "give_up_reconnecting",
    "missing",
    "read_in_place",
    "server_info",
    "set_reconnect_policy",
    "socket_writer",
    "subscribe",
    "take_raw_messages",
    "write_pending",
]

logger = logging.getLogger("piko_trio_events.nats")

#: Attributes of a ``nats.aio.client.Client`` instance the fast path uses.
CLIENT_ATTRIBUTES: Final = (
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_flush_pending",
    "_process_msg",
    "_subs",
    "_transport",
    "_server_pool",
    "_server_info",
    "_ps",
    "options",
    "stats",
)
#: Attributes the classes' ``__init__`` sets, by class (``module:Class``).
INIT_ATTRIBUTES: Final = {
    "nats.aio.subscription:Subscription": ("_future", "_received"),
    "nats.aio.transport:TcpTransport": ("_io_writer", "_io_reader"),
    "asyncio.streams:StreamReader": ("_buffer", "_waiter", "_exception"),
}
#: Other names: ``Client._process_op_err``,
#: ``Parser.parse``, ``Srv.reconnects`` and the ``future`` parameter of
#: ``Client.subscribe``.
_missing_by_type: dict[type, tuple[str, ...]] = {}


def class_at(path: str) -> Any:
    """The class ``module:Class`` names, or None when there is no such class
    (nor module): for checks of internals, here and in ``_bridge``."""
    import importlib

    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:  # pragma: no cover - a module moved
        return None


def missing(nc: Any) -> tuple[str, ...]:
    """The internals ``nc`` (a nats-py ``Client``) lacks; empty when all are there."""
    kind = type(nc)
    known = _missing_by_type.get(kind)
    if known is not None:
        return known
    gone = [name for name in CLIENT_ATTRIBUTES if not hasattr(nc, name)]
    if not callable(getattr(kind, "_process_op_err", None)):
        gone.append("Client._process_op_err")
    if not callable(getattr(class_at("nats.protocol.parser:Parser"), "parse", None)):
        gone.append("Parser.parse")
    subscribe = getattr(kind, "subscribe", None)
    try:
        if subscribe is None or "future" not in inspect.signature(subscribe).parameters:
            gone.append("Client.subscribe(future=)")
    except (TypeError, ValueError):  # pragma: no cover - not introspectable
        gone.append("Client.subscribe(future=)")
    for path, names in INIT_ATTRIBUTES.items():
        cls = class_at(path)
        init = getattr(cls, "__init__", None)
        code = getattr(init, "__code__", None)
        stored = code.co_names if code is not None else ()
        gone += [f"{path.partition(':')[2]}.{name}" for name in names if name not in stored]
    server_class = class_at("nats.aio.client:Srv")
    if "reconnects" not in getattr(server_class, "__dataclass_fields__", {}):
        gone.append("Srv.reconnects")
    result = _missing_by_type[kind] = tuple(gone)
    return result


def available(nc: Any) -> bool:
    """Whether the fast path may run on ``nc``: every internal is there and
    ``PIKO_NATS_PUBLIC_PATH`` is not ``1``."""
    if os.environ.get("PIKO_NATS_PUBLIC_PATH") == "1":
        return False
    return not missing(nc)


# -- writing -------------------------------------------------------------------------


async def write_pending(nc: Client, commands: list[bytes], size: int) -> bool:
    """Append framed commands to nats-py's outgoing buffer, as ``publish`` does
    one at a time, and kick its flusher once. False (nothing appended) when
    disconnected with the reconnect buffer full."""
    if not nc.is_connected and nc._pending_data_size + size > nc._max_pending_size:
        return False
    nc._pending.extend(commands)
    nc._pending_data_size += size
    nc.stats["out_msgs"] += len(commands)
    nc.stats["out_bytes"] += size
    await nc._flush_pending(force_flush=nc._pending_data_size > nc._max_pending_size)
    return True


def socket_writer(nc: Client) -> Any:
    """The asyncio transport to write to directly, or None: when nats-py's
    outgoing buffer holds something (order), or the transport is not a
    stream (websocket), closing, or still has bytes to send (backpressure)."""
    if nc._pending:
        return None
    writer = getattr(nc._transport, "_io_writer", None)
    if writer is None:
        return None
    transport = writer.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        return None
    return transport


def count_out(nc: Client, messages: int, size: int) -> None:
    """Count bytes written around nats-py in its statistics."""
    stats = nc.stats
    stats["out_msgs"] += messages
    stats["out_bytes"] += size


# -- reading -------------------------------------------------------------------------


class ReadLoopDispatch:
    """Takes the place of the future of a subscription (nats-py's old-style
    ``subscribe(future=...)``): nats-py hands each message of that
    subscription to ``set_result`` inside its read loop, and this calls
    ``callback`` at once. With :func:`take_raw_messages`, ``raw`` gets the
    message as read (bytes), before nats-py parses its headers.

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


async def subscribe(
    nc: Client,
    subject: str,
    queue: str,
    pending_msgs: int,
    pending_bytes: int,
    dispatch: ReadLoopDispatch | None,
    callback: Callable[[Msg], Awaitable[None]] | None = None,
) -> Any:
    """Subscribe with ``dispatch`` as the subscription's future (fast path:
    internal), or with ``callback`` (public API)."""
    if dispatch is not None:
        return await nc.subscribe(
            subject, queue, None, cast(Any, dispatch), 0, pending_msgs, pending_bytes
        )
    return await nc.subscribe(
        subject,
        queue,
        cb=callback,
        pending_msgs_limit=pending_msgs,
        pending_bytes_limit=pending_bytes,
    )


def take_raw_messages(nc: Client) -> None:
    """Wrap nats-py's ``_process_msg``: a message of a subscription whose
    future is a :class:`ReadLoopDispatch` with ``raw`` goes to ``raw`` as
    bytes (no header parsing, no ``Msg``); every other message on unchanged."""
    process: Any = nc._process_msg  # (it is given None for "no headers")
    stats = nc.stats
    subs = nc._subs

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        sub = subs.get(sid)
        if sub is not None:
            dispatch: Any = sub._future
            if type(dispatch) is ReadLoopDispatch and dispatch.raw is not None:
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


def read_in_place(nc: Client) -> bool:
    """Parse what the server sends where it is received, in the transport's
    ``data_received`` (trio-asyncio runs it in its reader task), not one
    scheduling round later in nats-py's read loop task; False (nothing
    changed) when the connection's transport has no stream reader.

    The reader's ``feed_data`` is wrapped: a chunk goes through nats-py's own
    parser at once when nats-py's read loop waits for data with nothing
    buffered (so nothing read before can be overtaken) and the parse ends
    without waiting, which it does for messages and replies (a message of
    a :class:`ReadLoopDispatch` subscription goes to its callback there;
    others to nats-py's queues as usual). If a parse has to wait (an error
    being handled, a PONG on a full buffer), an asyncio task finishes it and
    takes the chunks that arrive meanwhile, in order. Anything else (the
    read loop busy, data buffered, end of stream, errors of the socket)
    goes to the reader as before, for the read loop. The wrap goes with the
    transport: after a reconnect, call this again for the new one.
    """
    import asyncio

    from nats.errors import ProtocolError

    found = getattr(nc._transport, "_io_reader", None)
    if type(found) is not asyncio.StreamReader:
        return False
    reader: Any = found
    if getattr(reader.feed_data, "_piko_in_place", False):
        return True
    feed = reader.feed_data
    parse = nc._ps.parse
    backlog: list[bytes] = []
    finishing: list[bool] = []  # [True] while a task finishes a parse that waited

    async def failed(error: BaseException) -> None:
        # As nats-py's read loop does with an error of the parser.
        if isinstance(error, ProtocolError):
            await nc._process_op_err(ProtocolError())
        else:
            logger.error("nats: encountered error", exc_info=error)

    async def finish(coro: Any, waiting: Any) -> None:
        try:
            while True:  # drive the parse that waited, as a task would
                try:
                    if waiting is None:
                        await asyncio.sleep(0)
                    else:
                        await waiting
                except BaseException as exc:  # handed to the parse, as a task does
                    waiting = coro.throw(exc)
                else:
                    waiting = coro.send(None)
        except StopIteration:
            pass
        except asyncio.CancelledError:
            finishing.clear()
            raise
        except BaseException as exc:
            await failed(exc)
        try:
            while backlog:
                await parse(backlog.pop(0))
        except BaseException as exc:
            backlog.clear()
            await failed(exc)
        finally:
            finishing.clear()

    def feed_data(data: bytes) -> None:
        if finishing:
            backlog.append(bytes(data))
            return
        if (
            reader._waiter is None
            or reader._buffer
            or reader._exception is not None
            or not data
            or nc.is_reconnecting
            or nc.is_closed
        ):
            feed(data)
            return
        coro = parse(bytes(data))
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except BaseException as exc:
            asyncio.get_event_loop().create_task(failed(exc))
            return
        finishing.append(True)
        asyncio.get_event_loop().create_task(finish(coro, waiting))

    feed_data._piko_in_place = True  # type: ignore[attr-defined]
    setattr(reader, "feed_data", feed_data)  # noqa: B010 (an instance attribute, on purpose)
    return True


# -- the connection ------------------------------------------------------------------


# These two only read, and degrade to "nothing known" / "nothing done" when
# the internal is gone: they run on the public path too.


def server_info(client: Client | None) -> dict[str, Any]:
    """The server's INFO as the client last read it (``{}`` if unknown)."""
    return cast(dict[str, Any], getattr(client, "_server_info", None) or {})


def close_socket(client: Client) -> None:
    """Close the client's socket now (nats-py opens the next attempt's socket
    without closing a refused one, and can wait forever on a failed TLS one)."""
    transport = getattr(client, "_transport", None)
    if transport is not None:
        transport.close()


def set_reconnect_policy(nc: Client, max_attempts: int, wait: float) -> None:
    """After a first connect made with bounded attempts: the configured policy,
    with every server's attempt count reset."""
    nc.options["max_reconnect_attempts"] = max_attempts
    nc.options["reconnect_time_wait"] = wait
    for server in nc._server_pool:
        server.reconnects = 0


def give_up_reconnecting(nc: Client) -> None:
    """Make nats-py's own reconnect loop give up: a server that failed more than
    ``max_reconnect_attempts`` times leaves the pool, and an empty pool closes
    the connection (its ``closed_cb`` runs)."""
    nc.options["max_reconnect_attempts"] = 1
    for server in nc._server_pool:
        server.reconnects = max(server.reconnects, 2)
