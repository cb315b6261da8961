"""pyproject.toml in the current form: nothing for an install to warn about."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    """A license table makes setuptools >= 77 print a deprecation warning on every install."""
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert data["project"]["license"] == "Apache-2.0"
    floors = [
        re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement)
        for requirement in data["build-system"]["requires"]
    ]
    found = [int(match.group(1)) for match in floors if match]
    assert found, data["build-system"]["requires"]
    assert found[0] >= 77, "an SPDX string in project.license needs setuptools >= 77 (PEP 639)"
