"""What nats-py itself does wrong, shown without this library (kept apart from its record)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nats


def test_nats_py_leaves_a_socket_open_when_its_handshake_fails() -> None:
    """When this fails, nats-py closes it: drop the nemesis's warning filters."""
    script = Path(__file__).with_name("raw_nats_py_unclosed.py")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "empty response from server when expecting INFO" in result.stdout, result.stdout
    unclosed = int(result.stdout.rsplit("unclosed: ", 1)[1])
    assert unclosed >= 1, result.stdout
