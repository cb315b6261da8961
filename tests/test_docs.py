"""The documentation: every sample runs, every command works, the site builds.

Samples live as files under ``docs/examples/`` and are included into the
pages, so running the files runs the docs. Each runs in its own process
(samples install global OpenTelemetry providers and signal handlers) with a
bounded time; the NATS ones start their own embedded nats-server. The site
build runs with warnings as errors when Sphinx and myst-parser are installed
(the ``docs`` extra) and is skipped, saying so, when they are not.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

HAVE_NATS = importlib.util.find_spec("nats") is not None
HAVE_DOCS_TOOLS = all(importlib.util.find_spec(m) is not None for m in ("sphinx", "myst_parser"))
HAVE_HYPOTHESIS = importlib.util.find_spec("hypothesis") is not None
HAVE_OTEL_SDK = importlib.util.find_spec("opentelemetry.sdk") is not None

needs_nats = pytest.mark.skipif(not HAVE_NATS, reason="needs the nats extra (nats-py)")

# Every example script: (file, arguments, needs NATS, a line it must print).
SCRIPTS: list[tuple[str, tuple[str, ...], bool, str]] = [
    ("quickstart.py", (), False, "memory: [b'audited: {\"id\": 1}']"),
    ("quickstart.py", ("--nats",), True, "nats: [b'audited: {\"id\": 1}']"),
    ("lifecycle.py", (), False, "stopped by a signal: True"),
    ("middleware.py", (), False, "flaky handler calls: 3"),
    ("guarantees.py", (), True, "core NATS group kept: []"),
    ("provisioning.py", (), True, "received from the provisioned stream: b'1'"),
    ("observability.py", (), False, "events.router.handler_duration"),
    ("security.py", (), True, "password shown: False"),
    ("migrating.py", (), False, "NatsConfig(url='nats://nats-1:4222,nats://nats-2:4222'"),
    ("shop.py", (), False, "reply: CardCharged(order=2, receipt='r-2')"),
    ("shop.py", ("--nats",), True, "no one serves ShipOrder (the server said so)"),
]
# Example test files, run with pytest.
TEST_FILES = [
    "test_my_handlers.py",
    "test_ledger_idempotency.py",
    "test_cqrs_handlers.py",
    "test_fault_tools.py",
]
# Example test files with nothing to run without NATS.
NATS_ONLY_TEST_FILES = {"test_fault_tools.py"}

TIMEOUT = 120.0


def _run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} exited with {result.returncode}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}"
    )


def _script_params() -> list[object]:
    params: list[object] = []
    for name, args, nats, expected in SCRIPTS:
        marks: list[pytest.MarkDecorator] = []
        if nats:
            marks += [pytest.mark.nats, needs_nats]
        if name == "observability.py":
            marks.append(pytest.mark.skipif(not HAVE_OTEL_SDK, reason="needs opentelemetry-sdk"))
        params.append(pytest.param(name, args, expected, marks=marks, id=" ".join((name, *args))))
    return params


@pytest.mark.parametrize(("name", "args", "expected"), _script_params())
def test_example_script_runs(name: str, args: tuple[str, ...], expected: str) -> None:
    result = _run(str(EXAMPLES / name), *args)
    _check(result, f"docs/examples/{name} {' '.join(args)}")
    assert expected in result.stdout


SPAN_LINE = re.compile(
    r"^span '(?P<name>[^']+)' trace_id=(?P<trace>[0-9a-f]{32}) "
    r"span_id=(?P<span>[0-9a-f]{16}) parent=(?P<parent>[0-9a-f]{16}|-)$",
    re.M,
)
METRIC_LINE = re.compile(r"^metric (?P<name>\S+) ", re.M)


@pytest.mark.nats
@needs_nats
@pytest.mark.skipif(not HAVE_OTEL_SDK, reason="needs opentelemetry-sdk")
def test_quickstart_step_3_shows_one_trace_and_the_metrics_on_nats() -> None:
    """The quickstart's last step: publish -> process -> output in one trace, and the metrics."""
    result = _run(str(EXAMPLES / "quickstart.py"), "--nats", "--trace")
    _check(result, "docs/examples/quickstart.py --nats --trace")
    out = result.stdout
    spans = {m["name"]: m for m in SPAN_LINE.finditer(out)}
    assert {"orders.created publish", "orders.created process"} <= spans.keys(), out
    publish, process = spans["orders.created publish"], spans["orders.created process"]
    assert publish["parent"] == "-", out
    assert process["trace"] == publish["trace"], out
    assert process["parent"] == publish["span"], out
    # The handler's output carries the trace on: its parent is the process span.
    assert f"traceparent: 00-{process['trace']}-{process['span']}-" in out, out
    names = {m["name"] for m in METRIC_LINE.finditer(out)}
    for name in (
        "events.adapters.nats.messages_published",
        "events.adapters.nats.messages_received",
        "events.adapters.nats.messages_acked",
        "events.adapters.nats.provider_start_duration",
        "events.router.handler_duration",
        "events.router.handler_in_flight",
    ):
        assert name in names, out
    # What the observability page shows as this step's output is what it prints.
    shown = (DOCS / "observability.md").read_text(encoding="utf-8")
    shown_names = set(METRIC_LINE.findall(shown))
    assert shown_names, "observability.md shows no output of the quickstart's step 3"
    assert shown_names <= names, f"shown but not printed: {shown_names - names}"
    assert {m["name"] for m in SPAN_LINE.finditer(shown)} <= spans.keys()


@pytest.mark.skipif(not HAVE_HYPOTHESIS, reason="needs hypothesis")
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.nats, needs_nats])
        if name in NATS_ONLY_TEST_FILES
        else name
        for name in TEST_FILES
    ],
)
def test_example_test_file_passes(name: str) -> None:
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / name)]
    if not HAVE_NATS:
        args += ["-k", "not nats"]
    result = _run(*args)
    _check(result, f"pytest docs/examples/{name}")
    assert re.search(r"\d+ passed", result.stdout), result.stdout


def test_every_example_is_run_here() -> None:
    on_disk = {p.name for p in EXAMPLES.glob("*.py")}
    covered = {name for name, *_ in SCRIPTS} | set(TEST_FILES)
    assert on_disk == covered, f"examples not run by tests/test_docs.py: {on_disk - covered}"


def test_pages_hold_no_untested_python() -> None:
    """Python in a page comes from an included (hence tested) example file."""
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"^```\s*(python|py|pycon)\b", text, re.M), (
            f"{page.name}: a Python code block; put it in docs/examples/ and include it"
        )
        for included in re.findall(r"^```\{literalinclude\}\s+(\S+)", text, re.M):
            assert (DOCS / included).is_file(), f"{page.name}: {included} does not exist"


def test_readme_python_runs() -> None:
    """The README's Python block (not under docs/, so checked here)."""
    blocks = re.findall(
        r"^```python\n(.*?)^```", (ROOT / "README.md").read_text("utf-8"), re.M | re.S
    )
    assert len(blocks) == 1, "one Python block in the README: update this test"
    result = _run("-c", blocks[0])
    _check(result, "the README's Python block")
    assert "auditing b'{\"id\": 1}'" in result.stdout


def test_documented_bench_commands_run() -> None:
    """The performance page's commands, on tiny counts (a smoke test, not a benchmark)."""
    memory = _run(
        "-m",
        "piko_trio_events.bench",
        "memory",
        "--rounds",
        "1",
        "--messages",
        "2000",
        "--warmup",
        "100",
        "--json",
        "",
    )
    _check(memory, "python -m piko_trio_events.bench memory")
    assert "ratio memory-provider / bare-channel" in memory.stdout


@pytest.mark.nats
@needs_nats
def test_documented_nats_bench_command_runs() -> None:
    result = _run("-m", "piko_trio_events.bench", "nats", "--quick", "--json", "")
    _check(result, "python -m piko_trio_events.bench nats --quick")
    assert "piko / raw-nats-py" in result.stdout


@pytest.mark.skipif(
    not HAVE_DOCS_TOOLS,
    reason="the docs tools are not installed (pip install -e '.[docs]': sphinx, myst-parser)",
)
def test_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    result = _run(
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-E",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        str(DOCS),
        str(tmp_path / "html"),
    )
    _check(result, "sphinx-build -W")
    assert (tmp_path / "html" / "index.html").is_file()


def _migrating_sections() -> dict[str, str]:
    """The migration guide's text under each ``### `` heading (issue 12, item 5)."""
    text = (DOCS / "migrating.md").read_text(encoding="utf-8")
    parts = re.split(r"^### (.+)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_the_migration_guide_states_what_the_code_does() -> None:
    from piko_trio_events import NatsConfig
    from piko_trio_events.nats._names import consumer_name, queue_group

    text = (DOCS / "migrating.md").read_text(encoding="utf-8")
    # Durable names hold the topic as well as the group; queue groups do not.
    durable = consumer_name("piko", "audit", "orders.created")
    assert f"`{durable}`" in text, f"the example durable name {durable} is not shown"
    assert f"`{queue_group('piko', 'audit')}`" in text
    assert "durable consumer names: prefix + group |" not in text
    # Piko's default URL is nats.go's DefaultURL, which is ours too.
    assert "localhost" not in text
    assert f"`{NatsConfig().url}`" in text
    # Piko's Go provider connects three times (its own, Watermill's publisher's
    # and subscriber's); we connect once.
    assert "two connections" not in text
    assert "three connections" in text


#: Each surprise of a migration: a heading of the guide's "Surprises" section,
#: and words its text must hold (what happens and what to do about it).
SURPRISES = {
    "A subscription without a group is private": ["ephemeral", '`"new"`', "group="],
    "`subscribers_count` applies to router handlers only": ["concurrency", "subscribe("],
    "`queue_group_prefix` has no effect on JetStream": ["durable_prefix"],
    "Go and Python replicas do not share groups": ["Nats-Msg-Id", "topic:uuid"],
    "A stuck handler keeps its message": ["in progress", "timeout("],
    "Changing `ack_wait_timeout` of an existing group is a `ConfigError`": [
        "rolling",
        "nats consumer edit",
    ],
    "No `Connection()`, and no connection callbacks": [
        "provider.connected",
        "error_cb",
        "disconnected_cb",
        "reconnected_cb",
        "closed_cb",
    ],
}


@pytest.mark.parametrize("title", list(SURPRISES))
def test_the_migration_guide_lists_each_surprise_with_what_to_do(title: str) -> None:
    sections = _migrating_sections()
    assert title in sections, f"no section {title!r} in docs/migrating.md"
    body = sections[title]
    for words in SURPRISES[title]:
        assert words in body, f"{title!r} does not mention {words!r}"
    assert "What to do:" in body, f"{title!r} does not say what to do"


def test_the_callbacks_the_guide_names_are_refused_by_the_provider() -> None:
    from piko_trio_events.nats._provider import _RESERVED_OPTIONS

    body = _migrating_sections()["No `Connection()`, and no connection callbacks"]
    named = set(re.findall(r"`(\w+_cb)`", body))
    assert named, "the section names no callback"
    assert named <= set(_RESERVED_OPTIONS), named - set(_RESERVED_OPTIONS)
