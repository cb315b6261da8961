"""The mutation harness behind docs/proof.md: break the library in one place,
run the tests named for it, see whether one fails.

Each mutation (``tests/mutation/mutations.toml``) names a file, an exact
snippet of it and its replacement, and the tests expected to catch it. The
snippet must occur exactly once in the file: a refactor that moves or changes
the code makes the harness refuse the mutation ("snippet missing" or
"ambiguous") instead of testing nothing.

Per mutation, the working tree (the files git tracks or would track) is
copied to a temporary directory, the snippet replaced there, and pytest runs
the named tests with ``-x`` from the copy, with ``PYTHONPATH`` pointing at it
(so the mutated package is imported, not the checkout's editable install:
checked in every copy before pytest runs). The checkout is never changed.

    python -m tests.mutation.run                    # the whole table
    python -m tests.mutation.run --only N01,R02     # some rows
    python -m tests.mutation.run --write            # regenerate docs/proof.md's table

Outcomes: ``caught`` (a named test failed), ``caught (timeout)`` (a test
hung: stopped after the row's timeout), ``survived``, ``equivalent`` (not
run: no test can tell it apart; the row says why), ``snippet missing`` /
``ambiguous`` (the data no longer matches the code), ``error`` (pytest could
not run the tests, e.g. a test id that does not exist).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("mutations.toml")
PROOF = ROOT / "docs" / "proof.md"
BEGIN = "<!-- mutation-table:begin (written by python -m tests.mutation.run --write) -->"
END = "<!-- mutation-table:end -->"
DEFAULT_TIMEOUT = 240.0
#: Directories never copied (besides what git ignores).
_SKIP_PARTS = {".git", ".venv", "__pycache__", ".hypothesis", ".mypy_cache", ".pytest_cache"}

CAUGHT = "caught"
TIMEOUT = "caught (timeout)"
SURVIVED = "survived"
EQUIVALENT = "equivalent"
MISSING = "snippet missing"
AMBIGUOUS = "snippet ambiguous"
ERROR = "error"
OUTCOMES = (CAUGHT, TIMEOUT, SURVIVED, EQUIVALENT, MISSING, AMBIGUOUS, ERROR)


class HarnessError(Exception):
    """The data or the environment is wrong: the run stops."""


@dataclasses.dataclass(frozen=True)
class Mutation:
    id: str
    guarantee: str
    file: str
    where: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    equivalent: bool = False
    reason: str = ""
    timeout: float = DEFAULT_TIMEOUT
    sanity: bool = False


@dataclasses.dataclass
class Result:
    mutation: Mutation
    outcome: str
    detail: str = ""  # the test that failed, or why it could not run
    seconds: float = 0.0
    output: str = ""


_FIELDS = {f.name for f in dataclasses.fields(Mutation)}
_REQUIRED = {"id", "guarantee", "file", "where", "original", "replacement", "tests"}


def load(path: Path = DATA) -> list[Mutation]:
    """The mutations of ``path``, checked for form (ids unique, fields known)."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    rows = data.get("mutation")
    if not isinstance(rows, list) or not rows:
        raise HarnessError(f"{path}: no [[mutation]] tables")
    mutations: list[Mutation] = []
    seen: set[str] = set()
    for row in rows:
        name = row.get("id", "?")
        unknown = set(row) - _FIELDS
        missing = _REQUIRED - set(row)
        if unknown or missing:
            raise HarnessError(
                f"{name}: unknown fields {sorted(unknown)}, missing {sorted(missing)}"
            )
        if name in seen:
            raise HarnessError(f"{name}: id used twice")
        seen.add(name)
        tests = row["tests"]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise HarnessError(f"{name}: tests must be a list of pytest node ids")
        if not tests and not row.get("equivalent", False):
            raise HarnessError(f"{name}: names no test")
        if row.get("equivalent", False) and not row.get("reason"):
            raise HarnessError(f"{name}: an equivalent mutant needs a reason")
        if row["original"] == row["replacement"]:
            raise HarnessError(f"{name}: the replacement is the original")
        mutations.append(Mutation(**{**row, "tests": tuple(tests)}))
    return mutations


def occurrences(text: str, snippet: str) -> int:
    """How many times ``snippet`` occurs in ``text`` (overlapping ones too)."""
    count, start = 0, 0
    while (found := text.find(snippet, start)) >= 0:
        count += 1
        start = found + 1
    return count


def check_snippet(mutation: Mutation, root: Path = ROOT) -> str | None:
    """None if the snippet occurs exactly once in its file, else the outcome
    that refuses the mutation (MISSING or AMBIGUOUS)."""
    path = root / mutation.file
    if not path.is_file():
        return MISSING
    count = occurrences(path.read_text(encoding="utf-8"), mutation.original)
    if count == 1:
        return None
    return MISSING if count == 0 else AMBIGUOUS


def apply(mutation: Mutation, root: Path) -> None:
    """Replace the snippet in the copy at ``root`` (refuses a missing or ambiguous one)."""
    refused = check_snippet(mutation, root)
    if refused is not None:
        raise HarnessError(f"{mutation.id}: {refused} in {mutation.file}")
    path = root / mutation.file
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(mutation.original, mutation.replacement, 1), encoding="utf-8")


def _tree_files(root: Path) -> list[Path]:
    """The working tree's files (tracked or not ignored), relative to ``root``."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        names = [Path(n) for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    return [n for n in names if not _SKIP_PARTS & set(n.parts) and (root / n).is_file()]


def copy_tree(root: Path, into: Path) -> None:
    for name in _tree_files(root):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, target)


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_imports_copy(copy: Path, python: str = sys.executable) -> None:
    """The package and its pytest plugin resolve to ``copy``, not the checkout."""
    code = (
        "import piko_trio_events, piko_trio_events.testing._plugin as p;"
        "print(piko_trio_events.__file__); print(p.__file__)"
    )
    out = subprocess.run(
        [python, "-c", code], cwd=copy, env=_env(copy), capture_output=True, text=True, check=True
    ).stdout.split()
    real = copy.resolve()
    for where in out:
        if not Path(where).resolve().is_relative_to(real):
            raise HarnessError(f"the copy imports {where}, not the code under {copy}")


#: A summary line (not a captured log record: "ERROR    logger:file.py:1 ...").
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S.*?)(?: - .*)?$", re.MULTILINE)
_RESULT = re.compile(r"\s+(?:PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b.*$")


def last_started(output: str) -> str:
    """The last test pytest -v started in ``output`` ("?" if none)."""
    for line in reversed(output.splitlines()):
        if line.startswith("tests/") and "::" in line:
            return _RESULT.sub("", line).strip()
    return "?"


def run_tests(
    copy: Path, tests: Sequence[str], timeout: float, python: str = sys.executable
) -> tuple[str, str, str]:
    """Run ``tests`` in ``copy``: (outcome, detail, output)."""
    command = [python, "-m", "pytest", "-x", "-v", "-p", "no:cacheprovider", *tests]
    env = _env(copy)
    # The suite's own hang guard stops a test past its limit; the harness's
    # timeout comes first, so that a hang is reported as one.
    env["PIKO_TEST_HANG_LIMIT"] = str(timeout + 60)
    process = subprocess.Popen(
        command,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its nats-servers go with it on a timeout
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return TIMEOUT, f"{last_started(output)} still running after {timeout:g} s", output
    finally:
        if process.poll() is None:  # pragma: no cover - interrupted
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    code = process.returncode
    if code == 0:
        return SURVIVED, "", output
    failed = _FAILED.findall(output)
    if code == 1 and failed:
        return CAUGHT, failed[0], output
    tail = " / ".join(line for line in output.strip().splitlines()[-3:])
    return ERROR, f"pytest exit status {code}: {tail}", output


def run_one(
    mutation: Mutation,
    root: Path = ROOT,
    python: str = sys.executable,
    *,
    run_equivalent: bool = False,
) -> Result:
    """Apply ``mutation`` to a copy of ``root`` and run its tests (an
    equivalent one only with ``run_equivalent``, to check that it still is)."""
    started = time.monotonic()
    if mutation.equivalent and not run_equivalent:
        refused = check_snippet(mutation, root)
        return Result(mutation, refused or EQUIVALENT, mutation.reason)
    refused = check_snippet(mutation, root)
    if refused is not None:
        return Result(mutation, refused, mutation.file)
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.id}-") as tmp:
        copy = Path(tmp)
        copy_tree(root, copy)
        apply(mutation, copy)
        check_imports_copy(copy, python)
        outcome, detail, output = run_tests(copy, mutation.tests, mutation.timeout, python)
    return Result(mutation, outcome, detail, time.monotonic() - started, output)


def baseline(
    mutations: Iterable[Mutation], root: Path = ROOT, python: str = sys.executable
) -> None:
    """Every named test passes on the unmutated code (else a catch means nothing)."""
    tests = sorted({t for m in mutations if not m.equivalent for t in m.tests})
    if not tests:
        return
    with tempfile.TemporaryDirectory(prefix="mutation-baseline-") as tmp:
        copy = Path(tmp)
        copy_tree(root, copy)
        check_imports_copy(copy, python)
        outcome, detail, output = run_tests(copy, tests, 60.0 * len(tests), python)
    if outcome != SURVIVED:
        print(output[-4000:], file=sys.stderr)
        raise HarnessError(f"the unmutated code fails its tests: {outcome}: {detail}")


# -- the table -------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _short(node: str) -> str:
    """``tests/nats/test_x.py::test_y[p]`` -> ``test_y[p]`` (nats/test_x.py)."""
    path, _, name = node.partition("::")
    return f"`{name}` ({path.removeprefix('tests/')})" if name else f"`{path}`"


def outcome_cell(result: Result) -> str:
    if result.outcome == CAUGHT:
        return f"caught: {_short(result.detail)}"
    if result.outcome == TIMEOUT:
        running = result.detail.partition(" still running")[0]
        return f"caught by timeout (hang): {_short(running)}"
    if result.outcome == EQUIVALENT:
        return f"equivalent: {result.mutation.reason}"
    return f"**{result.outcome.upper()}** {result.detail}".strip()


def counts(results: Sequence[Result]) -> dict[str, int]:
    return {o: sum(r.outcome == o for r in results) for o in OUTCOMES}


def render(results: Sequence[Result], *, date: str, command: str, seconds: float, jobs: int) -> str:
    """The markdown between the markers of docs/proof.md."""
    c = counts(results)
    summary = ", ".join(f"{n} {o}" for o, n in c.items() if n)
    minutes = seconds / 60
    lines = [
        BEGIN,
        "",
        f"Run of {date}: `{command}` ({len(results)} mutations, {jobs} at a time, "
        f"{minutes:.1f} min): {summary}.",
        "",
        "| id | guarantee | mutation (file: what was changed) | tests run | outcome |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        m = r.mutation
        tests = "<br>".join(_short(t) for t in m.tests) or "-"
        lines.append(
            f"| {m.id} | {_cell(m.guarantee)} | `{m.file.removeprefix('piko_trio_events/')}` "
            f"{_cell(m.where)} | {tests} | {_cell(outcome_cell(r))} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def replace_table(document: str, table: str) -> str:
    """``document`` with the text between the markers (included) replaced by ``table``."""
    if document.count(BEGIN) != 1 or document.count(END) != 1:
        raise HarnessError("docs/proof.md must hold each table marker exactly once")
    head, _, rest = document.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + table + tail


# -- the command -----------------------------------------------------------------------


def select(mutations: Sequence[Mutation], only: str | None) -> list[Mutation]:
    if not only:
        return list(mutations)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {m.id for m in mutations}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise HarnessError(f"unknown mutation ids: {unknown}")
    return [m for m in mutations if m.id in wanted]


def run_all(
    mutations: Sequence[Mutation],
    jobs: int,
    report: Callable[[Result], None],
    root: Path = ROOT,
    *,
    run_equivalent: bool = False,
) -> list[Result]:
    by_id: dict[str, Result] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(run_one, m, root, run_equivalent=run_equivalent): m for m in mutations
        }
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            by_id[result.mutation.id] = result
            report(result)
    return [by_id[m.id] for m in mutations]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.run", description=__doc__)
    parser.add_argument("--only", help="comma-separated mutation ids")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run at once (default 1)")
    parser.add_argument("--write", action="store_true", help="regenerate docs/proof.md's table")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--check", action="store_true", help="only check the snippets")
    parser.add_argument("--verbose", action="store_true", help="print pytest's output")
    parser.add_argument(
        "--run-equivalent",
        action="store_true",
        help="run the equivalent mutants too (they should survive), with --only",
    )
    args = parser.parse_args(argv)
    if args.write and args.only:
        parser.error("--write regenerates the whole table: run it without --only")
    started = time.monotonic()
    mutations = load()
    chosen = select(mutations, args.only)
    refused = [(m.id, why) for m in chosen if (why := check_snippet(m)) is not None]
    for mid, why in refused:
        print(f"{mid}: {why}", file=sys.stderr)
    if args.check:
        return 1 if refused else 0
    sanity = [m for m in mutations if m.sanity]
    if sanity:  # the harness itself: a mutation that must be caught, first
        result = run_one(sanity[0])
        print(f"{sanity[0].id} (sanity): {result.outcome} {result.detail}", flush=True)
        if result.outcome != CAUGHT:
            print(result.output[-4000:], file=sys.stderr)
            raise HarnessError("the sanity mutation was not caught: the harness tests nothing")
    if not args.no_baseline:
        print("baseline: the named tests on the unmutated code ...", flush=True)
        baseline(chosen)

    def report(result: Result) -> None:
        print(
            f"{result.mutation.id}: {result.outcome} {result.detail} ({result.seconds:.0f} s)",
            flush=True,
        )
        if args.verbose and result.output:
            print(result.output)

    if args.run_equivalent and not args.only:
        parser.error("--run-equivalent goes with --only")
    results = run_all(chosen, max(1, args.jobs), report, run_equivalent=args.run_equivalent)
    seconds = time.monotonic() - started
    c = counts(results)
    print(", ".join(f"{n} {o}" for o, n in c.items() if n), f"in {seconds / 60:.1f} min")
    if args.write:
        command = "python -m tests.mutation.run --write" + (
            f" --jobs {args.jobs}" if args.jobs != 1 else ""
        )
        date = datetime.date.today().isoformat()
        table = render(results, date=date, command=command, seconds=seconds, jobs=args.jobs)
        PROOF.write_text(replace_table(PROOF.read_text(encoding="utf-8"), table), encoding="utf-8")
        print(f"wrote {PROOF.relative_to(ROOT)}")
    bad = c[SURVIVED] + c[MISSING] + c[AMBIGUOUS] + c[ERROR]
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
