"""Shared test configuration: hypothesis profiles, a deadline per trio test, a hang guard."""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import inspect
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("large", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: Real-time seconds a trio test's body may run (each example, for a hypothesis
#: test) before it is cancelled and fails with its name, the run going on: a
#: regression that makes a test wait forever fails that one test. A test that
#: needs longer says so with ``@pytest.mark.deadline(seconds)``; on a sync
#: test the marker only moves the hang guard (below), the test bounding itself.
#: PIKO_TEST_DEADLINE=0 turns it off.
DEADLINE = float(os.environ.get("PIKO_TEST_DEADLINE", "120"))

#: Seconds one test may run before the whole run is stopped (exit status 1)
#: with every thread's stack printed: the backstop for a hang the deadline
#: cannot end (a shielded wait, a blocked thread, a sync test). At least a
#: minute past the test's deadline. PIKO_TEST_HANG_LIMIT=0 turns it off (for
#: the large hypothesis runs, say).
HANG_LIMIT = float(os.environ.get("PIKO_TEST_HANG_LIMIT", "600"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deadline(seconds): this trio test's real-time deadline (default 120 s)"
    )


def _deadline_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("deadline")
    if marker is not None:
        return float(marker.args[0])
    return DEADLINE


def _with_deadline(
    test: Callable[..., Awaitable[None]], seconds: float, name: str
) -> Callable[..., Awaitable[None]]:
    """``test`` cancelled after ``seconds`` of real time (a thread's timer, so a
    MockClock's virtual time does not count), then failed with its name."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        token = trio.lowlevel.current_trio_token()
        expired = False
        with trio.CancelScope() as scope:

            def expire() -> None:
                nonlocal expired
                expired = True
                scope.cancel()

            def fire() -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(expire)

            timer = threading.Timer(seconds, fire)
            timer.daemon = True
            timer.start()
            try:
                await test(*args, **kwargs)
            finally:
                timer.cancel()
        if expired:
            pytest.fail(f"{name} ran past its deadline of {seconds:g} s", pytrace=False)

    return run


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Put a trio test's body under its deadline (before pytest-trio wraps it)."""
    seconds = _deadline_of(item)
    if seconds > 0 and isinstance(item, pytest.Function):
        inner = getattr(item.obj, "hypothesis", None)
        if inner is not None and inspect.iscoroutinefunction(inner.inner_test):
            inner.inner_test = _with_deadline(inner.inner_test, seconds, item.nodeid)
        elif inspect.iscoroutinefunction(item.obj):
            item.obj = _with_deadline(item.obj, seconds, item.nodeid)
    yield


@pytest.fixture(autouse=True)
def _hang_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    if HANG_LIMIT <= 0:
        yield
        return
    name = request.node.nodeid
    limit = max(HANG_LIMIT, _deadline_of(request.node) + 60)

    def stop() -> None:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)  # so the stacks reach the log
        print(f"\n{name} ran past {limit:g} s: stopping the run", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(limit, stop)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
