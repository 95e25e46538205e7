"""The README opens with the two commands, and the Makefile and CI provide them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, re.S).group(1)
    assert first_block.split() == ["make", "demo", "make", "test"]


def test_makefile_has_the_targets_and_creates_the_venv():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:"):
        assert re.search(rf"^{target}", makefile, re.M), target
    assert "-m venv" in makefile and "pip install" in makefile
    assert "smotune data synth" in makefile and "search_spaces/demo.yaml" in makefile


def test_ci_runs_make_test_only():
    lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "make test" in lines
    assert not any("pytest" in line for line in lines)
