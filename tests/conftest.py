"""Shared test configuration: hypothesis profiles and a hang guard."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections.abc import Iterator

import pytest
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

#: Seconds one test may run before the whole run is stopped (exit status 1)
#: with every thread's stack printed: a regression that makes a test wait
#: forever, rather than fail, ends CI at once and says where it hung.
#: PIKO_TEST_HANG_LIMIT=0 turns it off (for the large hypothesis runs, say).
HANG_LIMIT = float(os.environ.get("PIKO_TEST_HANG_LIMIT", "600"))


@pytest.fixture(autouse=True)
def _hang_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    if HANG_LIMIT <= 0:
        yield
        return
    name = request.node.nodeid

    def stop() -> None:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)  # so the stacks reach the log
        print(f"\n{name} ran past {HANG_LIMIT:g} s: stopping the run", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(HANG_LIMIT, stop)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
