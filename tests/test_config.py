"""Config errors: one line naming the file, the field and the fix; exit 2; before Ray starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smotune import cli, config
from smotune.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SMOOTHING, DROPOUT = "train.loss.label_smoothing", "train.model.text_dropout"


def _sweep(tmp_path: Path) -> dict:
    (tmp_path / "shards").mkdir()
    for i in range(2):
        (tmp_path / "shards" / f"train-{i:04d}.tar").write_bytes(b"")
    (tmp_path / "zs").mkdir()
    data = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    data["train"]["data"] = {
        "train": str(tmp_path / "shards" / "train-{0000..0001}.tar"),
        "zeroshot": str(tmp_path / "zs"),
    }
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, data: dict, capsys) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(UserError):
        config.load_sweep(path)
    code = cli.main(["sweep", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and "fix:" in err
    return err


def test_demo_sweep_loads():
    sweep = config.load_sweep(ROOT / "search_spaces" / "demo.yaml", check_paths=False)
    assert sweep.name == "demo" and sweep.experiment == "demo"
    assert sweep.train.model.arch == "tiny-vit"
    assert set(sweep.space) == {"loss.label_smoothing", "optim.weight_decay", "model.text_dropout"}
    assert sweep.train.global_batch_size == 128


def test_valid_sweep_file(tmp_path):
    sweep = config.load_sweep(_write(tmp_path, _sweep(tmp_path)))
    assert sweep.search.samples == 3 and sweep.search.confirm.seeds == 2


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda d: d["train"]["loss"].update(smoothing=0.1), "train.loss.smoothing", "unknown key"),
        (lambda d: d.update(serach={}), "serach", "unknown key"),
        (lambda d: d["train"].update(epochs="six"), "train.epochs", "integer"),
        (
            lambda d: d["train"]["loss"].update(label_smoothing=1.0),
            "train.loss.label_smoothing",
            "less than 1",
        ),
        (
            lambda d: d["train"]["loss"].update(label_smoothing=-0.1),
            "train.loss.label_smoothing",
            "greater",
        ),
        (
            lambda d: d["train"]["model"].update(text_dropout=1.5),
            "train.model.text_dropout",
            "less than 1",
        ),
        (
            lambda d: d["space"].update({"loss.label_smoothing": {"uniform": [0.3, 0.1]}}),
            "space.loss.label_smoothing",
            "low < high",
        ),
        (
            lambda d: d["space"].update({"optim.weight_decay": {"loguniform": [0.0, 1.0]}}),
            "space.optim.weight_decay",
            "low > 0",
        ),
        (
            lambda d: d["space"].update({"loss.smoothing": {"uniform": [0.0, 0.1]}}),
            "space.loss.smoothing",
            "not a field",
        ),
        (
            lambda d: d["space"].update({"loss.label_smoothing": {"uniform": [0.0, 1.0]}}),
            "space.loss.label_smoothing",
            "not valid for train.loss.label_smoothing",
        ),
        (
            lambda d: d["space"].update({"model.text_dropout": {"normal": [0, 1]}}),
            "space.model.text_dropout",
            "exactly one of",
        ),
        (
            lambda d: d["space"].update({"epochs": {"int": [2, 6]}}),
            "space.epochs",
            "cannot be searched",
        ),
        (
            lambda d: d["space"].update({"seed": {"int": [0, 3]}}),
            "space.seed",
            "cannot be searched",
        ),
        (
            lambda d: d["schedule"]["asha"].update(metric="zeroshot_top1"),
            "schedule.asha",
            "set search.metric",
        ),
        (lambda d: d["search"].update(metric="top1"), "search.metric", "engine reports"),
        (lambda d: d["search"].update(mode="maximize"), "search.mode", "'max' or 'min'"),
        (
            lambda d: d["search"].update(confirm={"top": 1, "seeds": 1}),
            "search.confirm.seeds",
            "greater than or equal to 2",
        ),
        (
            lambda d: d["search"].update(confirm={"seeds": 3, "max_seeds": 2}),
            "search.confirm.max_seeds",
            "must be at least search.confirm.seeds (3), got 2",
        ),
        (
            lambda d: d["search"].update(confirm={"seeds": 3, "min_gain": -0.01}),
            "search.confirm.min_gain",
            "greater than or equal to 0",
        ),
        (
            lambda d: d["train"]["data"].update(rewrite="LaCLIP"),
            "train.data.rewrite",
            "'prob' or 'laclip'",
        ),
        (
            lambda d: d["train"]["data"].update(rewrite="laclip", rewrite_prob=0.5),
            "train.data.rewrite_prob",
            "fix: leave rewrite_prob out, or set data.rewrite: prob",
        ),
        (
            lambda d: (
                d.update(space={"data.rewrite_prob": {"uniform": [0.0, 0.8]}})
                or d["train"]["data"].update(rewrite="laclip")
            ),
            "space.data.rewrite_prob",
            "read only with data.rewrite: prob",
        ),
        (
            lambda d: d["train"]["data"].update(train="/nonexistent/train-{0..3}.tar"),
            "train.data.train",
            "does not exist",
        ),
        (
            lambda d: d["train"]["data"].update(zeroshot="/nonexistent/zs"),
            "train.data.zeroshot",
            "does not exist",
        ),
    ],
)
def test_each_mistake_is_one_line_with_exit_2(tmp_path, capsys, edit, field, words):
    data = _sweep(tmp_path)
    edit(data)
    err = _error(tmp_path, data, capsys)
    assert f" {field}:" in err, err
    assert words in err, err


def test_caption_rules_old_configs_keep_theirs(tmp_path):
    """A config without data.rewrite is read as before (rewrite_prob's rule, off at 0);
    LaCLIP's rule is a choice, and a searchable one."""
    data = _sweep(tmp_path)
    assert config.load_sweep(_write(tmp_path, data)).train.data.rewrite == "prob"
    data["train"]["data"]["rewrite_prob"] = 0.5
    old = config.load_sweep(_write(tmp_path, data)).train.data
    assert (old.rewrite, old.rewrite_prob) == ("prob", 0.5)
    del data["train"]["data"]["rewrite_prob"]
    data["train"]["data"]["rewrite"] = "laclip"
    data["space"]["data.rewrite"] = {"choice": ["prob", "laclip"]}
    sweep = config.load_sweep(_write(tmp_path, data))
    assert sweep.train.data.rewrite == "laclip"
    assert config.apply(sweep.train, {"data.rewrite": "prob"}).data.rewrite == "prob"


def test_remote_data_urls_are_passed_through(tmp_path):
    data = _sweep(tmp_path)
    data["train"]["data"]["train"] = "s3://bucket/cc3m/train-{0000..0100}.tar"
    sweep = config.load_sweep(_write(tmp_path, data))
    assert config.absolute_paths(sweep.train).data.train.startswith("s3://")


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _sweep(tmp_path)
    data["train"]["data"] = {"train": "shards/train-{0000..0001}.tar", "zeroshot": "zs"}
    train = config.load_sweep(_write(tmp_path, data)).train
    assert train.data.train == "shards/train-{0000..0001}.tar"  # kept as written
    fixed = config.absolute_paths(train)
    assert fixed.data.train == str(tmp_path / "shards/train-{0000..0001}.tar")
    assert fixed.data.zeroshot == str(tmp_path / "zs")


def test_bad_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert cli.main(["sweep", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_train_command_takes_a_train_config(tmp_path, capsys):
    data = _sweep(tmp_path)["train"]
    data["optim"]["lr"] = -1
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert " optim.lr:" in err and "greater than 0" in err


def test_errors_come_before_ray_is_imported(tmp_path):
    data = _sweep(tmp_path)
    data["train"]["loss"]["label_smoothing"] = 2
    path = _write(tmp_path, data)
    code = (
        f"import sys; from smotune import cli; rc = cli.main(['sweep', {str(path)!r}]); "
        "print('ray' in sys.modules, 'torch' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout.split() == ["False", "False"]
    assert "train.loss.label_smoothing" in proc.stderr


def test_dump_train_round_trips(tmp_path):
    sweep = config.load_sweep(_write(tmp_path, _sweep(tmp_path)))
    path = tmp_path / "best.yaml"
    path.write_text(config.dump_train(sweep.train))
    assert config.load_train(path) == sweep.train


def test_a_space_entry_in_words():
    """How the report's "searched:" line says each entry (no Python dicts)."""
    words = {
        "{uniform: [0.0, 0.3]}": "uniform 0-0.3",
        "{loguniform: [1.0e-4, 1.0]}": "loguniform 0.0001-1",
        "{int: [1, 8]}": "int 1-8",
        "{uniform: [-1.0, 1.0]}": "uniform -1 to 1",
        "{choice: [prob, laclip]}": "choice prob, laclip",
        "{fixed: 0.1}": "fixed 0.1",
    }
    for entry, text in words.items():
        assert config.Distribution.model_validate(yaml.safe_load(entry)).words() == text
