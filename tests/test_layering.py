"""The package's layers: arrows point one way (docs/design.md, "Map of the package").

Every import of every module counts, inside functions too; an import under
``if TYPE_CHECKING:`` counts as well unless it is listed in TYPE_ONLY (a
type named in a signature, which creates no import at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import piko_trio_events

PACKAGE = Path(piko_trio_events.__file__).parent

#: Lowest first. A module may import its own layer and the layers below.
LAYERS: dict[str, tuple[str, ...]] = {
    # the message model and the port: no router, no provider
    "core": (
        "_errors",
        "_uuid",
        "_util",
        "_topics",
        "_message",
        "_config",
        "_metrics",
        "_types",
        "_signals",
        "_abc",
        "_request_transport",
    ),
    # the router and what every provider shares: no provider
    "router": ("_router", "_provider_base", "_lifecycle", "middleware"),
    # the providers: neither each other nor anything above
    "providers": ("memory", "nats"),
    # built on the port: typed buses, the testing toolkit
    "above": ("cqrs", "testing"),
    # what a user runs
    "top": ("bench", "_demo", "__main__", "__init__"),
}
#: Imports of a higher layer allowed under TYPE_CHECKING only, with the reason.
TYPE_ONLY = {
    ("_abc", "_router"): "Provider.router is a Router (the contract names it)",
}
#: The only modules that may import asyncio, trio-asyncio, nats-py or FastStream.
ASYNCIO_WORLD = ("asyncio", "trio_asyncio", "nats", "faststream")


def _top(module: str) -> str:
    """``nats`` for ``piko_trio_events.nats._x``, ``_router`` for ``..._router``."""
    rest = module.removeprefix("piko_trio_events").lstrip(".")
    return rest.split(".")[0] if rest else "__init__"


def _layer(module: str) -> int:
    top = _top(module)
    for index, members in enumerate(LAYERS.values()):
        if top in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, under TYPE_CHECKING) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(inner) for inner in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in type_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, id(node) in type_only))
            for alias in node.names:  # from . import _x: _x may be a module
                candidate = f"{name}.{alias.name}"
                if candidate in KNOWN:
                    found.append((candidate, id(node) in type_only))
    return found


MODULES = _modules()
KNOWN = {module for module, _ in MODULES}


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_arrows_point_one_way(module: str, path: Path) -> None:
    mine = _layer(module)
    wrong = []
    for name, type_checking in _imports(module, path):
        if not name.startswith("piko_trio_events") or _top(name) == _top(module):
            continue
        theirs = _layer(name)
        if theirs < mine:
            continue
        if theirs == mine and mine != list(LAYERS).index("providers"):
            continue
        if type_checking and (_top(module), _top(name)) in TYPE_ONLY:
            continue
        wrong.append(name)
    assert not wrong, f"{module} ({list(LAYERS)[mine]}) imports {wrong}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_only_the_nats_package_and_the_benchmark_peers_touch_asyncio(
    module: str, path: Path
) -> None:
    allowed = module.startswith("piko_trio_events.nats") or module.startswith(
        "piko_trio_events.bench._peer_"
    )
    touched = sorted(
        {name for name, _ in _imports(module, path) if name.split(".")[0] in ASYNCIO_WORLD}
    )
    assert allowed or not touched, f"{module} imports {touched}"


def test_the_checks_see_a_wrong_arrow(tmp_path: Path) -> None:
    """The scanner itself: a core module importing the router is caught."""
    bad = tmp_path / "_message.py"
    bad.write_text("from ._router import Router\nimport asyncio\n")
    imports = _imports("piko_trio_events._message", bad)
    assert ("piko_trio_events._router", False) in imports
    assert ("asyncio", False) in imports
    assert _layer("piko_trio_events._router") > _layer("piko_trio_events._message")
