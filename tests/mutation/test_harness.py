"""The mutation harness itself (tests/mutation/run.py): its logic, every row's
snippet against the code as it is, and real runs end to end.

The full run (``python -m tests.mutation.run``) is not part of the suite.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from tests.mutation import run

ROWS = run.load()


def _mutation(**fields: object) -> run.Mutation:
    base: dict[str, object] = {
        "id": "T01",
        "guarantee": "g",
        "file": "f.py",
        "where": "w",
        "original": "a = 1",
        "replacement": "a = 2",
        "tests": ("tests/test_x.py::test_y",),
    }
    return run.Mutation(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("mutation", ROWS, ids=[m.id for m in ROWS])
def test_every_rows_snippet_occurs_once_and_its_tests_exist(mutation: run.Mutation) -> None:
    refused = run.check_snippet(mutation)
    assert refused is None, (
        f"{mutation.id}: {refused} in {mutation.file}; the code moved or changed: "
        "update the row in tests/mutation/mutations.toml to where the guarantee lives now"
    )
    for node in mutation.tests:
        path, _, name = node.partition("::")
        assert (run.ROOT / path).is_file(), f"{mutation.id}: no file {path}"
        if name:
            function = name.partition("[")[0]
            tree = ast.parse((run.ROOT / path).read_text(encoding="utf-8"))
            defined = {
                n.name
                for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            assert function in defined, f"{mutation.id}: {path} defines no {function}"


def test_exactly_one_sanity_row_and_every_id_once() -> None:
    assert [m.id for m in ROWS if m.sanity] == ["S01"]
    assert len({m.id for m in ROWS}) == len(ROWS)


def test_a_snippet_must_occur_exactly_once(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text("a = 1\nb = 1\n")
    assert run.check_snippet(_mutation(), tmp_path) is None
    assert run.check_snippet(_mutation(original="= 1"), tmp_path) == run.AMBIGUOUS
    assert run.check_snippet(_mutation(original="c = 1"), tmp_path) == run.MISSING
    assert run.check_snippet(_mutation(file="gone.py"), tmp_path) == run.MISSING
    assert run.occurrences("aaa", "aa") == 2  # overlapping ones count too
    run.apply(_mutation(), tmp_path)
    assert (tmp_path / "f.py").read_text() == "a = 2\nb = 1\n"


@pytest.mark.parametrize("original", ["= 1", "c = 1"])
def test_apply_refuses_a_missing_or_ambiguous_snippet(tmp_path: Path, original: str) -> None:
    (tmp_path / "f.py").write_text("a = 1\nb = 1\n")
    with pytest.raises(run.HarnessError):
        run.apply(_mutation(original=original, replacement="x"), tmp_path)
    assert (tmp_path / "f.py").read_text() == "a = 1\nb = 1\n"


def test_a_missing_snippet_is_reported_without_running_anything(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text("b = 1\n")
    result = run.run_one(_mutation(), tmp_path)
    assert result.outcome == run.MISSING
    equivalent = _mutation(equivalent=True, reason="no test can tell")
    assert run.run_one(equivalent, tmp_path).outcome == run.MISSING
    (tmp_path / "f.py").write_text("a = 1\n")
    assert run.run_one(equivalent, tmp_path).outcome == run.EQUIVALENT


ROW = """
[[mutation]]
id = "X01"
guarantee = "g"
file = "f.py"
where = "w"
original = "a"
replacement = "b"
tests = ["tests/test_x.py::test_y"]
"""


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (ROW + ROW, "id used twice"),
        (ROW.replace('where = "w"', 'where = "w"\nwhatever = 1'), "unknown fields"),
        (ROW.replace('where = "w"\n', ""), "missing"),
        (ROW + "equivalent = true\n", "needs a reason"),
        (ROW.replace('replacement = "b"', 'replacement = "a"'), "is the original"),
        (ROW.replace('["tests/test_x.py::test_y"]', "[]"), "names no test"),
    ],
)
def test_bad_rows_are_refused(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(run.HarnessError, match=why):
        run.load(path)


def test_the_table_is_rendered_between_the_markers() -> None:
    caught = run.Result(
        _mutation(id="A01", guarantee="x | y"), run.CAUGHT, "tests/nats/test_a.py::test_b[c d]"
    )
    hung = run.Result(
        _mutation(id="A02"), run.TIMEOUT, "tests/test_a.py::test_c still running after 9 s"
    )
    lived = run.Result(_mutation(id="A03"), run.SURVIVED)
    same = run.Result(_mutation(id="A04", equivalent=True, reason="why"), run.EQUIVALENT, "why")
    table = run.render(
        [caught, hung, lived, same], date="2026-12-03", command="cmd", seconds=90, jobs=1
    )
    lines = table.splitlines()
    assert lines[0] == run.BEGIN
    assert lines[-1] == run.END
    assert "Run of 2026-12-03: `cmd` (4 mutations, 1 at a time, 1.5 min)" in table
    assert "1 caught, 1 caught (timeout), 1 survived, 1 equivalent." in table
    rows = [line for line in lines if line.startswith("| A0")]
    assert len(rows) == 4
    assert "x \\| y" in rows[0]
    assert "caught: `test_b[c d]` (nats/test_a.py)" in rows[0]
    assert "caught by timeout (hang): `test_c` (test_a.py)" in rows[1]
    assert "**SURVIVED**" in rows[2]
    assert "equivalent: why" in rows[3]
    document = f"# Proof\n\nintro\n\n{run.BEGIN}\nold\n{run.END}\n\n## After\n"
    new = run.replace_table(document, table)
    assert new.startswith("# Proof\n\nintro\n\n" + run.BEGIN)
    assert new.endswith(run.END + "\n\n## After\n")
    assert "old" not in new
    with pytest.raises(run.HarnessError):
        run.replace_table("no markers", table)


def test_the_proof_page_has_the_markers_once() -> None:
    text = run.PROOF.read_text(encoding="utf-8")
    assert text.count(run.BEGIN) == 1
    assert text.count(run.END) == 1


def test_a_hanging_test_counts_as_caught_by_timeout(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_hang.py").write_text(
        "import time\n\ndef test_fine():\n    pass\n\ndef test_hangs():\n    time.sleep(60)\n"
    )
    outcome, detail, _ = run.run_tests(tmp_path, ["tests/test_hang.py"], timeout=4.0)
    assert outcome == run.TIMEOUT
    assert detail == "tests/test_hang.py::test_hangs still running after 4 s"


def test_the_sanity_mutation_is_caught_in_a_copy_and_the_checkout_is_untouched() -> None:
    """End to end: copy, mutate, import the copy, run the named test, see it fail."""
    sanity = next(m for m in ROWS if m.sanity)
    before = (run.ROOT / sanity.file).read_text(encoding="utf-8")
    result = run.run_one(sanity)
    assert result.outcome == run.CAUGHT, result.output[-3000:]
    assert result.detail == sanity.tests[0]
    assert (run.ROOT / sanity.file).read_text(encoding="utf-8") == before


def test_a_harmless_mutation_survives() -> None:
    """The same path with a mutation no test can see: the harness does not
    call everything caught."""
    sanity = next(m for m in ROWS if m.sanity)
    harmless = dataclasses.replace(
        sanity, id="S00", replacement=sanity.original + "  # harmless", sanity=False
    )
    result = run.run_one(harmless)
    assert result.outcome == run.SURVIVED, result.output[-3000:]
