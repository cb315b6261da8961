"""Each chaos fault alone against each handler of the worked ledger example.

The example itself (``docs/examples/test_ledger_idempotency.py``, run by
``tests/test_docs.py``) shows the property catching the broken handlers; this
matrix pins which single fault breaks which handler, so a chaos fault that
stops doing its job fails here by name.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from piko_trio_events.testing import ChaosSchedule, Fault

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "test_ledger_idempotency.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ledger_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


example = _load_example()
naive, two_step, fixed = example.naive_handler, example.two_step_handler, example.fixed_handler


@pytest.mark.parametrize(
    ("make_handler", "fault", "breaks"),
    [
        (naive, Fault.duplicate(), True),
        (naive, Fault.ack_lost(), True),
        (naive, Fault.crash(), True),
        (naive, Fault.hold(1), False),
        (two_step, Fault.duplicate(), False),
        (two_step, Fault.ack_lost(), False),
        (two_step, Fault.crash(), False),
        (two_step, Fault.crash(at=2), False),
        (two_step, Fault.crash(at=3), True),
        (fixed, Fault.crash(at=1), False),
        (fixed, Fault.crash(at=2), False),
        (fixed, Fault.crash(), False),
        (fixed, Fault.duplicate(), False),
        (fixed, Fault.ack_lost(), False),
    ],
)
def test_one_fault_against_each_handler(
    make_handler: Callable[..., Any], fault: Fault, breaks: bool
) -> None:
    schedule = ChaosSchedule([fault])
    if breaks:
        with pytest.raises(AssertionError, match="balance"):
            example.run(make_handler, schedule, [10, 20])
    else:
        example.run(make_handler, schedule, [10, 20])
