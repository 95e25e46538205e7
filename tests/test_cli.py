"""`smotune ... --help` read as a user reads it: run in a subprocess, the printed text checked.

Every command and subcommand has a description of its own, every argument and option a
help text, and no help shows code (``json.dumps(...)``) or a developer's note about the
module ("Argument parsing only").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GROUP_METAVARS = ("COMMAND", "SET")  # the metavars cli.py gives its subcommand groups
CODE = re.compile(r"json\.dumps|model_dump|Argument parsing only|\w+\(\w*\)")


def help_text(*command: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "smotune", *command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def description(text: str) -> str:
    """The paragraph between the usage lines and the first section."""
    body = text.split("\n\n", 1)[1]
    first = body.split("\n\n", 1)[0]
    return "" if first.rstrip().endswith(":") or ":\n" in first else " ".join(first.split())


def entries(text: str) -> dict[str, str]:
    """Each argument, option or subcommand of the help's sections -> its help ('' if none).

    argparse prints an entry at indent 2 (its help after two spaces or on the next lines,
    indented further); a subcommand group is its metavar at indent 2 and one entry per
    subcommand at indent 4.
    """
    out: dict[str, str] = {}
    current = None
    in_section = in_group = False
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            in_section = line in ("options:", "positional arguments:")
            current = None
            continue
        if not in_section or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        invocation, _, rest = line.strip().partition("  ")
        if indent == 2:
            in_group = invocation in GROUP_METAVARS
            current = None
        if indent == 2 and in_group:
            continue
        if indent == 2 or (indent == 4 and in_group):
            current = re.split(r", (?=-)", invocation)[-1].split()[0]
            out[current] = rest.strip()
        elif current is not None:
            out[current] = (out[current] + " " + line.strip()).strip()
    return out


def commands(text: str) -> list[str]:
    """The subcommands a group's help lists."""
    group = text.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in group.splitlines() if line.startswith("    ")]


def test_top_level_help_describes_the_tool():
    text = help_text()
    about = description(text)
    assert "Argument parsing only" not in text
    assert len(about.split()) >= 40, about
    for word in ("CLIP", "sweep", "Optuna", "ASHA", "MLflow", "smotune train"):
        assert word in about, word
    listed = entries(text)
    assert set(commands(text)) == {"data", "train", "sweep", "best", "report", "ensemble", "sync"}
    for command in commands(text):
        assert listed[command], f"{command} has no help in `smotune --help`"


SUBCOMMANDS = [
    ("data",),
    ("data", "synth"),
    ("train",),
    ("sweep",),
    ("best",),
    ("report",),
    ("ensemble",),
    ("sync",),
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_command_has_a_description_and_every_option_a_help(command):
    text = help_text(*command)
    assert len(description(text).split()) >= 5, f"`smotune {' '.join(command)} --help`: {text}"
    listed = entries(text)
    assert listed, text
    for name, help_ in listed.items():
        assert help_, f"`smotune {' '.join(command)} --help`: {name} has no help"
        assert not CODE.search(help_), f"{name}: {help_}"
    assert not CODE.search(description(text)), description(text)


def test_best_explains_every_option():
    listed = entries(help_text("best"))
    assert set(listed) == {
        "--help",
        "--experiment",
        "--tracking-uri",
        "--out",
        "--format",
        "--epochs",
        "--workers",
        "--address",
    }
    fmt = listed["--format"]
    for choice in ("yaml =", "cmd =", "open_clip_train ="):
        assert choice in fmt, fmt
    assert "best.yaml" in listed["--out"]


def test_train_name_is_said_in_words():
    name = entries(help_text("train"))["--name"]
    assert "json.dumps" not in name and "model_dump" not in name
    for words in ("SHA-256", "8 hex digits", "sorted keys", "--epochs/--workers"):
        assert words in name, name
