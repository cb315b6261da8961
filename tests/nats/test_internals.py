"""nats-py internals, then the trio-asyncio internals the bridge batches with:
for each, the canary, the one check, and a fallback that needs none."""

from __future__ import annotations

import ast
import inspect
import socket
import textwrap
from collections.abc import Callable
from typing import Any, cast

import pytest
import trio
import trio.testing

from piko_trio_events import JetStreamConfig, Message, NatsConfig
from piko_trio_events.nats import _bridge as bridge
from piko_trio_events.nats import _internals as internals
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import open_nats_server
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


# -- trio-asyncio: the bridge's batching (run_callbacks_in_batches) ------------------


def _handle_reads(function: Any) -> set[str]:
    """The attributes ``function`` reads of its ``handle``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "handle"
    }


async def test_the_trio_asyncio_in_use_has_every_internal_the_bridge_batching_uses() -> None:
    """The canary: fails (naming it) when a trio-asyncio release drops or
    reshapes an internal that run_callbacks_in_batches relies on."""
    import trio_asyncio
    from trio_asyncio._handles import ScopedHandle

    where = f"trio-asyncio {trio_asyncio.__version__}, for nats/_bridge.py run_callbacks_in_batches"
    async with trio_asyncio.open_loop() as loop:
        gone = bridge.missing_loop_internals(loop)
        assert gone == (), f"{where}: missing or reshaped: {', '.join(gone)}"
        # How they are used, beyond being there:
        cls = type(loop)
        # The running main loop looks _main_loop_one up on the loop at every
        # step, so the batched version set on the instance takes over.
        assert "await self._main_loop_one()" in inspect.getsource(cls._main_loop), (
            f"{where}: loop._main_loop no longer calls self._main_loop_one() at each step"
        )
        # no_wait=True takes what is queued or raises trio.WouldBlock: the end
        # of a batch.
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            await loop._main_loop_one(True)
        # Readers and writers: a ScopedHandle each, run by self._io_task.
        assert "self._io_task, fd, handle, wait_ready" in inspect.getsource(cls._add_io_handler), (
            f"{where}: loop._add_io_handler no longer starts self._io_task(fd, handle, wait_ready)"
        )
        left, right = socket.socketpair()
        with left, right:
            handle = loop.add_reader(left.fileno(), lambda: None)
            try:
                assert isinstance(handle, ScopedHandle), (
                    f"{where}: loop.add_reader returns a {type(handle).__qualname__}, "
                    "not a ScopedHandle"
                )
            finally:
                loop.remove_reader(left.fileno())
        # The bridge's _io_task is trio-asyncio's without the synchronize()
        # after each callback: it reads what the original reads of the handle,
        # and the check covers each of those.
        original = _handle_reads(cls._io_task)
        checked = {name for names in bridge._HANDLE_ATTRIBUTES.values() for name in names}
        assert original == _handle_reads(bridge._io_task) == checked, (
            f"{where}: loop._io_task reads handle.{sorted(original)}; the bridge's copy "
            f"reads handle.{sorted(_handle_reads(bridge._io_task))} and checks {sorted(checked)}"
        )
        assert "await self.synchronize()" in inspect.getsource(cls._io_task), (
            f"{where}: loop._io_task no longer synchronizes after each callback: "
            "the bridge's copy may be out of date (or no longer needed)"
        )


def _no_wait_keyword_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trio-asyncio whose ``_main_loop_one`` takes ``no_wait`` by keyword only."""
    from trio_asyncio._base import BaseTrioEventLoop

    original = BaseTrioEventLoop._main_loop_one

    async def _main_loop_one(self: Any, *, no_wait: bool = False) -> None:
        await original(self, no_wait)

    monkeypatch.setattr(BaseTrioEventLoop, "_main_loop_one", _main_loop_one)


def _io_task_with_a_new_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_asyncio._base import BaseTrioEventLoop

    original = BaseTrioEventLoop._io_task

    async def _io_task(
        self: Any, fd: int, handle: Any, wait_ready: Any, name: str | None = None
    ) -> None:
        await original(self, fd, handle, wait_ready)

    monkeypatch.setattr(BaseTrioEventLoop, "_io_task", _io_task)


def _handle_raise_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_asyncio._handles import ScopedHandle

    monkeypatch.delattr(ScopedHandle, "_raise")


_LOSSES: list[tuple[Callable[[pytest.MonkeyPatch], None], str]] = [
    (_no_wait_keyword_only, "loop._main_loop_one(no_wait)"),
    (_io_task_with_a_new_parameter, "loop._io_task(fd, handle, wait_ready)"),
    (_handle_raise_removed, "ScopedHandle._raise"),
]


@pytest.mark.parametrize(("lose", "named"), _LOSSES, ids=[name for _, name in _LOSSES])
async def test_without_a_trio_asyncio_internal_the_bridge_does_not_patch_and_still_works(
    monkeypatch: pytest.MonkeyPatch, lose: Callable[[pytest.MonkeyPatch], None], named: str
) -> None:
    monkeypatch.delenv("PIKO_NATS_PUBLIC_PATH", raising=False)  # (else it is never tried)
    lose(monkeypatch)
    tried: list[tuple[Any, bool]] = []
    real = bridge.run_callbacks_in_batches

    def run_callbacks_in_batches(loop: Any) -> bool:
        patched = real(loop)
        tried.append((loop, patched))
        return patched

    monkeypatch.setattr(bridge, "run_callbacks_in_batches", run_callbacks_in_batches)
    sent = [Message(b"%d" % i, {"k": str(i)}) for i in range(20)]
    with trio.fail_after(20):
        async with (
            open_nats_server(jetstream=False) as server,
            open_nats_provider(
                NatsConfig(url=server.url, jetstream=JetStreamConfig(disabled=True))
            ) as provider,
            provider.subscriber.subscribe("canary.x") as channel,
        ):
            loop: Any = provider._conn.bridge.loop
            assert tried == [(loop, False)]
            assert bridge.missing_loop_internals(loop) == (named,)
            assert not getattr(loop._main_loop_one, "_piko_batched", False)
            assert loop._io_task.__module__ != bridge.__name__
            await provider.publisher.publish("canary.x", *sent)
            got = [await channel.receive() for _ in sent]
    assert [(m.uuid, m.payload, m.metadata) for m in got] == [
        (m.uuid, m.payload, m.metadata) for m in sent
    ]
