"""nats-py internals: the canary, the one check, and a fallback that needs none."""

from __future__ import annotations

import inspect
from typing import Any, cast

import pytest
import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig
from piko_trio_events.nats import _internals as internals
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer


def test_the_nats_py_in_use_has_every_internal_the_fast_path_uses() -> None:
    """The canary: fails (naming them) when a nats-py release drops one."""
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription
    from nats.protocol.parser import Parser

    nc = Client()
    assert internals.missing(nc) == ()
    # How they are used, beyond being there:
    assert list(inspect.signature(Client._process_msg).parameters) == [
        "self",
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ]
    assert "self.nc._process_msg(" in inspect.getsource(Parser.parse)
    assert "sub._future.set_result(msg)" in inspect.getsource(Client._process_msg)
    sub = Subscription(nc, 1, "s", future=cast(Any, object()))
    assert sub._received == 0
    # read_in_place: the read loop feeds what the transport's reader returns to
    # the parser, and the reader is the stream reader the transport reads from.
    from nats.aio.transport import TcpTransport

    assert "await self._ps.parse(b)" in inspect.getsource(Client._read_loop)
    assert "self._io_reader.read(" in inspect.getsource(TcpTransport.read)


def test_one_missing_internal_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from nats.aio.client import Client

    class Renamed(Client):
        """A nats-py whose outgoing buffer was renamed."""

        def __init__(self) -> None:
            super().__init__()
            del self._pending_data_size

    monkeypatch.delenv("PIKO_NATS_PUBLIC_PATH", raising=False)
    assert internals.available(Client())
    assert internals.missing(Renamed()) == ("_pending_data_size",)
    assert not internals.available(Renamed())
    monkeypatch.setenv("PIKO_NATS_PUBLIC_PATH", "1")
    assert not internals.available(Client())


@pytest.fixture
def no_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nats-py without the internals: the check says so, and every function
    that touches one fails the test if it is called anyway."""
    monkeypatch.delenv("PIKO_NATS_PUBLIC_PATH", raising=False)
    monkeypatch.setattr(internals, "missing", lambda nc: ("a renamed internal",))

    def forbidden(name: str) -> Any:
        def call(*args: object, **kwargs: object) -> Any:
            raise AssertionError(f"internals.{name} called on the public path")

        return call

    for name in (
        "write_pending",
        "socket_writer",
        "count_out",
        "take_raw_messages",
        "read_in_place",
        "set_reconnect_policy",
        "give_up_reconnecting",
    ):
        monkeypatch.setattr(internals, name, forbidden(name))
    real_subscribe = internals.subscribe

    async def subscribe(*args: Any) -> Any:
        assert args[5] is None, "a read-loop dispatch on the public path"
        return await real_subscribe(*args)

    monkeypatch.setattr(internals, "subscribe", subscribe)


@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
@pytest.mark.usefixtures("no_internals")
async def test_without_the_internals_the_provider_runs_on_the_public_api(
    nats_server: NatsServer, jetstream: bool
) -> None:
    config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(disabled=not jetstream))
    sent = [Message(b"%d" % i, {"k": str(i)}) for i in range(50)]
    with trio.fail_after(20):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("fallback.x", group="g") as channel,
        ):
            assert not provider._conn.fast
            await provider.publisher.publish("fallback.x", *sent)
            got = []
            for _ in sent:
                msg = await channel.receive()
                assert await msg.ack()
                got.append(msg)
    assert [(m.uuid, m.payload, m.metadata) for m in got] == [
        (m.uuid, m.payload, m.metadata) for m in sent
    ]


class _FakeClient:
    """What read_in_place touches: a transport's reader, a parser, a status."""

    def __init__(self, reader: Any, parse: Any) -> None:
        self._transport = type("T", (), {"_io_reader": reader})()
        self._ps = type("P", (), {"parse": staticmethod(parse)})()
        self.is_reconnecting = False
        self.is_closed = False
        self.op_errors: list[Exception] = []

    async def _process_op_err(self, error: Exception) -> None:
        self.op_errors.append(error)


def test_read_in_place_parses_where_data_arrives_in_order() -> None:
    """Parsed at once while the read loop waits with nothing buffered; a parse
    that has to wait is finished by a task, and what arrives meanwhile is
    parsed after it, in order; while the read loop is busy the reader buffers."""
    import asyncio

    async def main() -> None:
        parsed: list[bytes] = []
        gate = asyncio.get_running_loop().create_future()

        async def parse(data: bytes) -> None:
            if data == b"wait":
                await gate
            parsed.append(data)

        reader = asyncio.StreamReader()
        nc = _FakeClient(reader, parse)
        read_loop = asyncio.create_task(reader.read(100))  # nats-py's read loop
        await asyncio.sleep(0)
        assert internals.read_in_place(cast(Any, nc))
        assert internals.read_in_place(cast(Any, nc))  # (once)
        reader.feed_data(b"a")
        reader.feed_data(b"b")
        assert parsed == [b"a", b"b"]  # where they arrived, not in a later round
        reader.feed_data(b"wait")
        reader.feed_data(b"c")
        reader.feed_data(b"d")
        assert parsed == [b"a", b"b"]
        gate.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert parsed == [b"a", b"b", b"wait", b"c", b"d"]
        assert not read_loop.done()  # nothing went to the reader
        read_loop.cancel()  # the read loop is busy elsewhere: buffered for it
        await asyncio.sleep(0)
        reader.feed_data(b"e")
        assert parsed == [b"a", b"b", b"wait", b"c", b"d"]
        assert await reader.read(100) == b"e"
        reader.feed_eof()  # the end of the stream is the read loop's
        assert await reader.read(100) == b""
        assert nc.op_errors == []

    asyncio.run(main())


def test_read_in_place_reports_a_protocol_error_as_the_read_loop_does() -> None:
    import asyncio

    from nats.errors import ProtocolError

    async def main() -> None:
        async def parse(data: bytes) -> None:
            raise ProtocolError()

        reader = asyncio.StreamReader()
        nc = _FakeClient(reader, parse)
        read_loop = asyncio.create_task(reader.read(100))
        await asyncio.sleep(0)
        internals.read_in_place(cast(Any, nc))
        reader.feed_data(b"-garbage\r\n")
        for _ in range(3):
            await asyncio.sleep(0)
        assert [type(e) for e in nc.op_errors] == [ProtocolError]
        read_loop.cancel()

    asyncio.run(main())
