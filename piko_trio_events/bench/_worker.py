"""Run one contender once: ``python -m piko_trio_events.bench._worker < spec.json``.

The spec is ``{"target": "module:function", "params": {...}}``; the function's
result, plus where the package under test was imported from, is printed as
one JSON line on stdout. Anything else a contender prints goes to stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from typing import Any


def main() -> None:
    spec = json.load(sys.stdin)
    module_name, _, func_name = spec["target"].partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    with contextlib.redirect_stdout(sys.stderr):
        result: dict[str, Any] = dict(func(spec["params"]))
    package = importlib.import_module("piko_trio_events")
    result.setdefault("package_path", package.__path__[0])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
