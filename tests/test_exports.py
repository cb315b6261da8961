"""The public surface: every API.md name is exported once; nothing private leaks;
every error the library raises for a bad value is a ``PikoEventsError``."""

from __future__ import annotations

import ast
import importlib
import math
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import piko_trio_events
from piko_trio_events import (
    ConfigError,
    InvalidMessageError,
    JetStreamConfig,
    MemoryConfig,
    Message,
    NatsConfig,
    PikoEventsError,
    open_memory_provider,
    open_nats_provider,
)
from piko_trio_events.testing import NatsServer

API_NAMES = {
    "Message",
    "Delivery",
    "Provider",
    "Publisher",
    "Subscriber",
    "Router",
    "Handler",
    "HandlerFunc",
    "Middleware",
    "RouterConfig",
    "MemoryConfig",
    "NatsConfig",
    "JetStreamConfig",
    "open_memory_provider",
    "open_nats_provider",
    "PikoEventsError",
    "ConfigError",
    "InvalidTopicError",
    "ProviderClosedError",
    "ConnectError",
    "StreamNotFoundError",
    "PublishError",
    "AckError",
}
EXTRA_NAMES = {
    "AuthError",
    "InvalidMessageError",
    "StartPosition",
    "cancel_on_signals",
    "current_handler_name",
    "HandlerOutputError",
    # the cqrs layer's errors (also exported by piko_trio_events.cqrs)
    "DecodeError",
    "RequestError",
    "NoResponderError",
}


def test_all_matches_contract() -> None:
    exported = set(piko_trio_events.__all__)
    missing = API_NAMES - exported
    assert not missing, f"API names not exported: {sorted(missing)}"
    unexpected = exported - API_NAMES - EXTRA_NAMES
    assert not unexpected, f"names exported without being part of the surface: {unexpected}"
    assert len(piko_trio_events.__all__) == len(exported), "a name is listed twice in __all__"


def test_every_listed_name_exists_and_is_public() -> None:
    for name in piko_trio_events.__all__:
        assert not name.startswith("_")
        assert getattr(piko_trio_events, name) is not None


def test_no_private_module_names_leak() -> None:
    # ("@py_builtins" and such are pytest's assertion rewriting, not ours.)
    public = {n for n in dir(piko_trio_events) if not n.startswith(("_", "@"))}
    allowed = set(piko_trio_events.__all__) | {
        "memory",
        "middleware",
        "testing",
        "nats",
        "bench",
        "cqrs",
    }
    assert public <= allowed, f"unexpected public attributes: {sorted(public - allowed)}"


def test_errors_form_one_hierarchy() -> None:
    for name in ("ConfigError", "InvalidTopicError", "InvalidMessageError", "DecodeError"):
        cls = getattr(piko_trio_events, name)
        assert issubclass(cls, piko_trio_events.PikoEventsError)
        assert issubclass(cls, ValueError)
    for name in (
        "ConnectError",
        "StreamNotFoundError",
        "PublishError",
        "AckError",
        "ProviderClosedError",
        "RequestError",
        "NoResponderError",
    ):
        assert issubclass(getattr(piko_trio_events, name), piko_trio_events.PikoEventsError)
    # Credentials or a certificate refused: a kind of connect failure.
    assert issubclass(piko_trio_events.AuthError, piko_trio_events.ConnectError)


@pytest.mark.parametrize(
    "module", ["piko_trio_events.middleware", "piko_trio_events.testing", "piko_trio_events.cqrs"]
)
def test_subpackages_import(module: str) -> None:
    importlib.import_module(module)


def test_every_name_of_testing_resolves_and_free_port_is_public() -> None:
    import socket

    from piko_trio_events import testing

    for name in testing.__all__:
        assert getattr(testing, name) is not None, name
    assert "free_port" in testing.__all__
    port = testing.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))  # free when returned (not reserved: it may race)


def test_importing_the_package_loads_no_asyncio_stack() -> None:
    code = (
        "import sys, piko_trio_events, piko_trio_events.middleware;"
        "bad = [m for m in ('asyncio', 'nats', 'trio_asyncio') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


PACKAGE = Path(piko_trio_events.__file__).parent


def _plain_value_error_raises(source: str) -> list[int]:
    """Lines of ``source`` that raise the builtin ValueError itself."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "ValueError":
                lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_a_plain_value_error() -> None:
    source = "def f(x):\n    if x:\n        raise ValueError('bad')\n    raise ValueError\n"
    assert _plain_value_error_raises(source) == [3, 4]
    assert _plain_value_error_raises("raise ConfigError('bad')\n") == []


def test_no_plain_value_error_is_raised_anywhere_in_the_package() -> None:
    # A bad value must be catchable with `except PikoEventsError`: raise one
    # of its ValueError subclasses (ConfigError, InvalidTopicError,
    # InvalidMessageError), never the builtin itself.
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in _plain_value_error_raises(path.read_text(encoding="utf-8"))
    ]
    assert not found, f"plain ValueError raised at {found}"


def test_every_value_error_class_of_the_library_is_a_piko_events_error() -> None:
    from piko_trio_events import middleware, testing

    for module in (piko_trio_events, middleware, testing):
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, ValueError):
                assert issubclass(value, PikoEventsError), f"{module.__name__}.{name}"


async def _noop(msg: Message) -> None:
    pass


def _bad_values() -> list[tuple[str, Callable[[], object]]]:
    from piko_trio_events.middleware import retry, timeout
    from piko_trio_events.testing import Fault, chaos_schedules, topics

    return [
        ("empty uuid", lambda: Message(b"", uuid="")),
        ("uuid with a line break", lambda: Message(b"", uuid="a\nb")),
        ("retry(max_retries=-1)", lambda: retry(max_retries=-1)),
        ("timeout(0)", lambda: timeout(0)),
        ("Fault(kind='nope')", lambda: Fault(kind="nope")),  # type: ignore[arg-type]
        ("Fault('hold', 0)", lambda: Fault("hold", 0)),
        ("chaos_schedules(max_faults=-1)", lambda: chaos_schedules(max_faults=-1)),
        ("topics(max_tokens=0)", lambda: topics(max_tokens=0)),
    ]


@pytest.mark.parametrize(("what", "call"), _bad_values(), ids=[w for w, _ in _bad_values()])
def test_a_bad_value_raises_a_piko_events_error(what: str, call: Callable[[], object]) -> None:
    with pytest.raises(PikoEventsError) as info:
        call()
    assert isinstance(info.value, ValueError), what


@pytest.mark.parametrize("delay", [-1, -0.5, math.inf, math.nan])
async def test_a_bad_nack_delay_raises_invalid_message_error(delay: float) -> None:
    with pytest.raises(InvalidMessageError, match="nack delay"):
        await Message(b"x").nack(delay)


@pytest.mark.parametrize(
    "metadata",
    [{"Nats-Msg-Id": "x"}, {"nats-expected-stream": "x"}, {"bad key": "x"}, {"k": "a\r\nb"}],
)
async def test_bad_metadata_raises_invalid_message_error_on_publish(
    metadata: dict[str, str],
) -> None:
    async with open_memory_provider(MemoryConfig()) as provider:
        with pytest.raises(InvalidMessageError, match="metadata"):
            await provider.publisher.publish("t", Message(b"", metadata))


def _router_calls() -> list[tuple[str, Callable[[piko_trio_events.Router], object]]]:
    return [
        ("concurrency=0", lambda r: r.add_handler("h2", "t", _noop, concurrency=0)),
        ("concurrency=-1", lambda r: r.add_handler("h2", "t", _noop, concurrency=-1)),
        ("duplicate name", lambda r: r.add_handler("h", "t", _noop)),
        ("empty name", lambda r: r.add_handler("", "t", _noop)),
        ("empty group", lambda r: r.add_handler("h2", "t", _noop, group="")),
        ("bad start", lambda r: r.add_handler("h2", "t", _noop, start=0)),
    ]


@pytest.mark.parametrize(("what", "call"), _router_calls(), ids=[w for w, _ in _router_calls()])
async def test_bad_handler_options_raise_config_error(
    what: str, call: Callable[[piko_trio_events.Router], object]
) -> None:
    async with open_memory_provider(MemoryConfig()) as provider:
        provider.router.add_handler("h", "t", _noop)
        with pytest.raises(ConfigError):
            call(provider.router)
        assert list(provider.router.handlers) == ["h"], what


@pytest.mark.nats
@pytest.mark.parametrize("jetstream", [True, False], ids=["jetstream", "core"])
async def test_a_payload_over_max_payload_raises_invalid_message_error(
    nats_server: NatsServer, jetstream: bool
) -> None:
    with trio.fail_after(15):
        config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(disabled=not jetstream))
        async with open_nats_provider(config) as provider:
            publish: Callable[..., Awaitable[None]] = provider.publisher.publish
            too_big = b"x" * (2 * 1024 * 1024)
            with pytest.raises(InvalidMessageError, match="max_payload"):
                await publish("big.x", Message(too_big))
            await publish("big.x", Message(b"the provider carries on"))
