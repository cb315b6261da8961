"""The pytest plugin: its fixtures work under pytest-trio, and loading it is cheap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

PLUGIN = "piko_trio_events.testing._plugin"
# Once the `pytest11` entry point `piko_trio_events` is installed, pytest loads
# the plugin by itself, and `-p <module>` alone would register it twice (pytest
# refuses that). Blocking the entry point's name makes `-p <module>` work either way.
EXPLICIT = ("-p", "no:piko_trio_events", "-p", PLUGIN)

USES_THE_FIXTURES = """
import trio

from piko_trio_events import Message

opened = []


async def test_memory_provider(memory_provider):
    opened.append(memory_provider)
    assert memory_provider.running
    with trio.fail_after(5):
        async with memory_provider.subscriber.subscribe("orders.created") as messages:
            sent = Message(b"one", {"k": "v"})
            await memory_provider.publisher.publish("orders.created", sent)
            got = await messages.receive()
            assert got == sent
            assert await got.ack()


async def test_nats_server(nats_server):
    opened.append(nats_server)
    assert nats_server.running
    assert nats_server.url.startswith("nats://127.0.0.1:")


async def test_nats_provider(nats_provider, nats_server):
    opened.extend([nats_provider, nats_server])
    assert nats_provider.running
    assert nats_provider.connected
    with trio.fail_after(10):
        async with nats_provider.subscriber.subscribe("orders.created") as messages:
            sent = Message(b"two", {"k": "v"})
            await nats_provider.publisher.publish("orders.created", sent)
            got = await messages.receive()
            assert got == sent
            assert got.delivery.sequence == 1  # JetStream
            assert await got.ack()


def test_everything_was_closed_after_its_test():
    assert len(opened) == 4
    assert not any(thing.running for thing in opened)
"""

SYNC_TEST = """
def test_sync(memory_provider):
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


def test_fixtures_work_in_trio_mode(project: pytest.Pytester) -> None:
    project.makepyfile(test_app=USES_THE_FIXTURES)
    result = project.runpytest_subprocess(*EXPLICIT, "-o", "trio_mode=true", timeout=120)
    result.assert_outcomes(passed=4)


def test_fixtures_work_with_the_trio_marker(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_app="""
        import pytest

        @pytest.mark.trio
        async def test_memory(memory_provider):
            assert memory_provider.running
        """
    )
    result = project.runpytest_subprocess(*EXPLICIT, timeout=60)
    result.assert_outcomes(passed=1)


def test_the_entry_point_loads_the_plugin(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for the installed distribution's `pytest11` entry point
    # (pytester puts its directory on the subprocess's PYTHONPATH).
    dist = project.mkdir("piko_entry_point-0.dist-info")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: piko-entry-point\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[pytest11]\npiko_trio_events = {PLUGIN}\n")
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    project.makepyfile(test_app=USES_THE_FIXTURES)
    result = project.runpytest_subprocess("-o", "trio_mode=true", timeout=120)
    result.assert_outcomes(passed=4)


def test_a_conftest_fixture_overrides_the_plugins(project: pytest.Pytester) -> None:
    project.makeconftest(
        """
        import pytest

        @pytest.fixture
        def nats_server():
            return "mine"
        """
    )
    project.makepyfile(
        test_app="""
        async def test_mine(nats_server):
            assert nats_server == "mine"
        """
    )
    result = project.runpytest_subprocess(*EXPLICIT, "-o", "trio_mode=true", timeout=60)
    result.assert_outcomes(passed=1)


def test_without_pytest_trio_a_fixture_says_what_is_missing(project: pytest.Pytester) -> None:
    project.makepyfile(test_app=SYNC_TEST)
    result = project.runpytest_subprocess(*EXPLICIT, "-p", "no:trio", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*'memory_provider' is async (trio)*pytest-trio is not installed*"]
    )


def test_a_sync_test_is_told_to_be_a_trio_test(project: pytest.Pytester) -> None:
    project.makepyfile(test_app=SYNC_TEST)
    result = project.runpytest_subprocess(*EXPLICIT, timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'memory_provider' is async (trio)*is not a trio test*"])


def test_importing_the_plugin_loads_nothing_heavy() -> None:
    code = f"""
import json, sys
import pytest
import {PLUGIN}
print(json.dumps(sorted({{name.partition(".")[0] for name in sys.modules}})))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    assert PLUGIN.partition(".")[0] in loaded
    assert loaded.isdisjoint({"nats", "trio_asyncio", "hypothesis", "asyncio"})
