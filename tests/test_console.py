"""The console's lines and where Ray's logs go, without a cluster (the lines of real sweeps are
checked in test_search's Tune run and test_sweep's end-to-end sweep)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

import optuna
import pytest
from ray.tune.experimental.output import get_air_verbosity

from smotune import console, lines


def test_eta_is_the_ended_trials_rate_over_the_trials_left():
    assert console.eta(elapsed=100.0, ended=2, remaining=3) == pytest.approx(150.0)
    assert console.eta(elapsed=100.0, ended=0, remaining=3) is None  # no rate yet
    assert console.eta(elapsed=100.0, ended=4, remaining=0) == 0.0
    line = console.progress_line(done=2, running=1, total=5, elapsed=100.0, ended_here=2)
    assert line == "progress: 2/5 trials done, 1 running, elapsed 1m40s, ETA 2m30s"
    first = console.progress_line(done=0, running=1, total=5, elapsed=3.0, ended_here=0)
    assert first.endswith("elapsed 3s, ETA -")
    # a resumed sweep: 3 trials ended before this process, 1 in it, in 60 s; 2 left
    resumed = console.progress_line(done=4, running=1, total=6, elapsed=60.0, ended_here=1)
    assert resumed.endswith("ETA 2m00s")
    assert console.duration(3725) == "1h02m"


def test_an_asha_stop_names_the_rung_and_its_cutoff_when_known():
    who = "[search] trial t1"
    line = console.stopped_line(who, 1, 3, "zeroshot_top1", 0.1666, (1, 0.33333))
    assert line == (
        "[search] trial t1 stopped by ASHA at epoch 1/3: zeroshot_top1 0.1666 below the "
        "epoch-1 rung's cutoff 0.3333"
    )
    assert console.stopped_line(who, 2, 3, "zeroshot_top1", 0.5, None).endswith("0.5000")
    # minimising, a stopped trial's value is above the cutoff; MLflow's reason tag is the same
    # words without the trial's name
    reason = console.stop_reason(1, 3, "train_loss", 2.5, (1, 2.0), mode="min")
    assert (
        reason
        == "stopped by ASHA at epoch 1/3: train_loss 2.5000 above the epoch-1 rung's cutoff 2.0000"
    )


def test_an_epoch_is_one_line_everywhere(capsys):
    """The workers' log, smotune train's console and a sweep's console print the same line (a
    sweep puts its objective first)."""
    metrics = {"epoch": 2, "zeroshot_top1": 0.25, "zeroshot_top5": 0.5, "train_loss": 3.14159}
    metrics["samples_per_s"] = 812.4
    line = "epoch 2/4  zeroshot_top1 0.2500  zeroshot_top5 0.5000  train_loss 3.1416"
    assert lines.epoch_line(metrics, 4) == line + "  samples_per_s 812"
    assert lines.epoch_line({**metrics, "data_skipped": 3}, 4).endswith("  data_skipped 3")
    assert lines.epoch_line(metrics, 4, first="train_loss") == (
        "epoch 2/4  train_loss 3.1416  zeroshot_top1 0.2500  zeroshot_top5 0.5000  "
        "samples_per_s 812"
    )
    from types import SimpleNamespace

    from smotune.config import SweepConfig

    sweep = SweepConfig.model_validate(
        {"name": "s", "train": {"data": {"train": "x.tar", "zeroshot": "zs"}, "epochs": 4}}
    )
    trial = SimpleNamespace(trial_id="a")
    console.SweepConsole(sweep, total=1).on_trial_result(0, [trial], trial, metrics)
    assert capsys.readouterr().out == f"[search] trial a {line}  samples_per_s 812\n"


@pytest.mark.parametrize("verbose", [False, True])
def test_rays_logs_go_to_the_file_and_to_the_terminal_only_when_verbose(tmp_path, verbose):
    import ray  # noqa: F401  (Ray's logging as Ray sets it up: a stderr handler on "ray")

    path = tmp_path / "runs" / "sweep" / console.LOG_FILE
    before = list(logging.getLogger("ray").handlers)
    (terminal,) = [h for h in before if console.is_rays_terminal(h)]
    seen = io.StringIO()  # what Ray's own (stderr) handler writes, read here
    stream = terminal.setStream(seen)
    try:
        with console.ray_logs_to(path, verbose=verbose):
            logging.getLogger("ray.tune.tune").warning("tune says %s", "hello")
            logging.getLogger("ray.train").warning("train says hi")
            optuna.logging.get_logger("optuna.study").info("optuna says so")
            tune_prints = get_air_verbosity(0) is not None  # Tune's new engine: its header
            with pytest.warns(DeprecationWarning) if verbose else contextlib.nullcontext():
                warnings.warn("ray warns", DeprecationWarning, stacklevel=1)
        logging.getLogger("ray.tune").warning("after the block")
        assert console.TUNE_OUTPUT_ENGINE not in os.environ  # put back as it was (unset)
    finally:
        terminal.setStream(stream)
    held = path.read_text()
    assert "ray.tune.tune: tune says hello" in held and "ray.train: train says hi" in held
    assert "after the block" not in held
    shown = seen.getvalue()
    assert ("tune says hello" in shown) == verbose and ("train says hi" in shown) == verbose
    assert ("ray warns" in held) == (not verbose)
    assert "optuna.study: optuna says so" in held
    assert tune_prints == verbose
    assert "after the block" in shown  # Ray's own handler is back
    assert logging.getLogger("ray").handlers == before


def test_the_log_file_of_a_remote_storage_is_local_and_said_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local, under = console.log_file(str(tmp_path / "runs"), "demo")
    assert (local, under) == (tmp_path / "runs" / "demo" / console.LOG_FILE, True)
    remote, under = console.log_file("s3://bucket/sweeps", "demo")
    assert (remote, under) == (tmp_path / "smotune-logs" / "demo" / console.LOG_FILE, False)
    said = console.where_logs_go(remote, under, "/tmp/ray/session_x/logs")
    assert said.startswith(f"ray's logs: {remote} (storage.path is remote: a local file);")
    assert "/tmp/ray/session_x/logs" in said


def test_an_epoch_reported_again_after_a_restart_is_said_once(capsys):
    """A restarted trial reports its checkpoint's epoch again (engine.resume): said once."""
    from types import SimpleNamespace

    from smotune.config import SweepConfig

    sweep = SweepConfig.model_validate(
        {"name": "s", "train": {"data": {"train": "x.tar", "zeroshot": "zs"}, "epochs": 3}}
    )
    say = console.SweepConsole(sweep, total=2)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial, epoch in ((a, 1), (a, 2), (b, 1), (a, 2), (a, 1), (a, 3)):
        say.on_trial_result(0, [a, b], trial, {"epoch": epoch, "zeroshot_top1": 0.5})
    said = [ln.split("  ")[0] for ln in capsys.readouterr().out.splitlines()]
    assert said == [
        "[search] trial a epoch 1/3",
        "[search] trial a epoch 2/3",
        "[search] trial b epoch 1/3",
        "[search] trial a epoch 3/3",
    ]


def test_each_damaged_shard_is_said_once_in_a_sweep_and_a_run(capsys):
    """The workers' damage lines (every rank's, carried in each report) reach the console: a
    line a shard, the first time a report names it, whichever trial of the sweep met it."""
    from types import SimpleNamespace

    from smotune.config import SweepConfig

    sweep = SweepConfig.model_validate(
        {"name": "s", "train": {"data": {"train": "x.tar", "zeroshot": "zs"}, "epochs": 3}}
    )
    cut = "/d/train-0000.tar: ends at byte 4096 of 4096: truncated inside 000001251.jpg"
    garbled = "/d/train-0001.tar: bytes 6380032-6445568 of 9000000 unreadable: invalid tar header"
    say = console.SweepConsole(sweep, total=2)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial, epoch, damage in ((a, 1, cut), (a, 2, f"{cut}\n{garbled}"), (b, 1, cut)):
        result = {"epoch": epoch, "zeroshot_top1": 0.5, "data_damage": damage}
        say.on_trial_result(0, [a, b], trial, result)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "damaged" in ln]
    assert said == [
        f"[search] trial a damaged shard {cut}",
        f"[search] trial a damaged shard {garbled}",
    ]

    class Reports:  # the Ray queue's side EpochFeed reads: get, then Empty when drained
        def __init__(self, items):
            self.items = list(items)

        def get(self, timeout):
            if not self.items:
                raise console.Empty
            return self.items.pop(0)

    import threading

    feed = console.EpochFeed.__new__(console.EpochFeed)  # its printing, without a Ray queue
    feed.epochs, feed._said, feed._damage = 3, 0, set()
    feed.queue = Reports(
        {"epoch": e, "zeroshot_top1": 0.5, "data_damage": d}
        for e, d in ((1, cut), (2, f"{cut}\n{garbled}"), (3, f"{cut}\n{garbled}"))
    )
    stop = threading.Event()
    stop.set()
    feed._drain(stop)
    assert [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("epoch")] == [
        f"damaged shard {cut}",
        f"damaged shard {garbled}",
    ]
