"""Importing the package (and its NATS provider) loads no asyncio machinery."""

from __future__ import annotations

import subprocess
import sys


def test_nats_py_trio_asyncio_and_asyncio_load_lazily() -> None:
    code = (
        "import sys, piko_trio_events, piko_trio_events.nats, piko_trio_events.testing._server\n"
        "print(sorted(m for m in ('asyncio', 'nats', 'trio_asyncio') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
