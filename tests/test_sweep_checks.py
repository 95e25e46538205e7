"""A sweep's checks before any cluster starts, and its summary with any kind of searched value."""

from __future__ import annotations

from pathlib import Path

import pytest

from smotune import sweep, tuners
from smotune.config import SweepConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("where", ["file_in_the_way", "proc"])
def test_unwritable_storage_is_one_line_before_ray_starts(
    tmp_path, sqlite_uri, where, minimal_sweep, bare_sweep
):
    if where == "file_in_the_way":
        (tmp_path / "blocker").write_text("a file, not a folder")
        storage = str(tmp_path / "blocker" / "runs")
    else:
        storage = "/proc/smotune-runs"
    path = minimal_sweep("checks", storage, sqlite_uri)
    done = bare_sweep(path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "storage.path" in lines[0] and "cannot create or write" in lines[0]
    assert not (tmp_path / "ray").exists()  # no Ray session was started


def test_summary_shows_string_and_mixed_choices():
    cfg = SweepConfig.model_validate(
        {
            "name": "s",
            "train": {"data": {"train": "x.tar", "zeroshot": "zs"}, "epochs": 2},
            "space": {
                "model.arch": {"choice": ["tiny-vit", "small-vit"]},
                "optim.grad_clip": {"choice": [None, 1.0]},
                "loss.label_smoothing": {"uniform": [0.0, 0.2]},
            },
        }
    )
    rows = [
        {
            "trial_id": "a",
            "params": {
                "model.arch": "small-vit",
                "optim.grad_clip": None,
                "loss.label_smoothing": 0.1,
            },
            "epochs_run": 2,
            "value": 0.5,
            "status": "completed",
        },
        {"trial_id": "b", "params": {}, "epochs_run": 0, "value": None, "status": "failed"},
    ]
    table = sweep.format_summary(rows, cfg).splitlines()
    assert table[0].split() == [
        "trial",
        "arch",
        "grad_clip",
        "label_smoothing",
        "epochs",
        "zeroshot_top1",
        "status",
    ]
    assert table[1].split() == ["a", "small-vit", "None", "0.1", "2/2", "0.5000", "completed"]
    assert table[2].split() == ["b", "-", "-", "-", "0/2", "-", "failed"]


def test_resume_with_an_edited_sweep_file_names_what_changed(tmp_path, sqlite_uri, minimal_sweep):
    path = minimal_sweep("checks", str(tmp_path / "runs"), sqlite_uri)
    from smotune import config

    cfg = config.load_sweep(path)
    sweep._write_record(cfg, tuners.experiment_path(cfg), str(path), resume=False)
    sweep._check_unchanged(cfg, tuners.experiment_path(cfg), str(path))  # the same file passes
    edited = cfg.model_copy(deep=True)
    edited.train.optim.lr = 0.5
    with pytest.raises(Exception, match=r"train.optim.lr \(0.001 -> 0.5\)") as err:
        sweep._check_unchanged(edited, tuners.experiment_path(cfg), str(path))
    assert "fix:" in str(err.value) and "\n" not in str(err.value)
