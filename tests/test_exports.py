"""The public surface: every API.md name is exported once; nothing private leaks."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import piko_trio_events

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
    for name in ("ConfigError", "InvalidTopicError", "DecodeError"):
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


def test_importing_the_package_loads_no_asyncio_stack() -> None:
    code = (
        "import sys, piko_trio_events, piko_trio_events.middleware;"
        "bad = [m for m in ('asyncio', 'nats', 'trio_asyncio') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
