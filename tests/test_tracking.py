"""MLflow logging of a sweep: a real Tune run on the local Ray, a real sqlite store and a real
`mlflow server`; resume re-attachment; tracking URI checks; the journal (a dead store, a
replay, a killed writer and `smotune sync`)."""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from ray.tune.experiment import Trial

from smotune import cli, space, tracking
from smotune.config import SweepConfig, absolute_paths, dump_train
from smotune.errors import UserError
from smotune.tracking.check import error_line
from smotune.tracking.journal import live
from smotune.tracking.writer import close_journal

EPOCHS = 3
# label smoothing -> expected status; the trainable scores lower smoothing higher, runs the
# grid in this order one at a time, so ASHA (grace 1, reduction 2) stops 0.15 and 0.2 at epoch 1.
GRID = {0.1: "completed", 0.0: "completed", 0.15: "early_stopped", 0.2: "failed", 0.25: "failed"}
NAN_AT = 0.2
FAIL_AT = 0.25

SWEEP_YAML = """\
name: {name}
train:
  data: {{train: "data/synth/train-{{0000..0003}}.tar", zeroshot: data/synth/zeroshot}}
  epochs: 3
  workers: {{num: 2, cpus: 0}}
space:
  loss.label_smoothing: {{uniform: [0.0, 0.3]}}
  optim.weight_decay: {{fixed: 0.2}}
search: {{algo: random, samples: 5, concurrent: 1, seed: 0}}
schedule: {{asha: {{grace: 1, reduction: 2}}}}
tracking: {{uri: "{uri}"}}
"""


def make_sweep(uri: str, name: str = "tsweep") -> tuple[SweepConfig, str]:
    text = SWEEP_YAML.format(name=name, uri=uri)
    return SweepConfig.model_validate(yaml.safe_load(text)), text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def epoch_result(smoothing: float, epoch: int, nan: bool = False) -> dict:
    return {
        "epoch": epoch,
        "zeroshot_top1": round(0.5 - smoothing + 0.01 * epoch, 6),
        "zeroshot_top5": 0.9,
        "train_loss": float("nan") if nan else 2.0 - 0.1 * epoch,
        "lr": 1e-3,
        "samples_per_s": 100.0,
        "data_skipped": 0,
    }


def make_trainable(fail_marker: Path | None = None):
    """A trial function: one result per epoch; NAN_AT reports a NaN loss, FAIL_AT raises,
    0.0 saves a checkpoint each epoch.

    With ``fail_marker``, FAIL_AT raises only while the marker file is absent (and creates it).
    This test module is not importable on Ray workers, so it is pickled by value.
    """
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def trainable(config):
        from ray import tune

        s = config["loss.label_smoothing"]
        if s == FAIL_AT and (fail_marker is None or not fail_marker.exists()):
            if fail_marker is not None:
                fail_marker.touch()
            raise RuntimeError("synthetic failure before epoch 1")
        for epoch in range(1, EPOCHS + 1):
            result = epoch_result(s, epoch, nan=s == NAN_AT)
            if s != 0.0:
                tune.report(result)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "weights.txt").write_text(f"epoch {epoch}")
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    return trainable


def run_tune(sweep: SweepConfig, text: str, storage: Path, grid: list[float], fail_marker=None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    callback = tracking.MlflowSweepCallback(sweep, text)
    tuner = tune.Tuner(
        tune.with_resources(make_trainable(fail_marker), {"cpu": 0, "trial_driver": 1}),
        param_space={"loss.label_smoothing": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(
                time_attr="epoch",
                metric="zeroshot_top1",
                mode="max",
                max_t=EPOCHS,
                grace_period=1,
                reduction_factor=2,
            ),
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=str(storage), callbacks=[callback], verbose=0
        ),
    )
    tuner.fit()
    return callback


def runs_of(uri: str, experiment: str):
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    return client, parents, children


def check_logged_sweep(uri: str, sweep: SweepConfig, callback: tracking.MlflowSweepCallback):
    client, parents, children = runs_of(uri, sweep.experiment)
    assert len(parents) == 1 and len(children) == len(GRID)
    parent = parents[0]
    assert parent.info.run_id == callback.parent_run_id
    assert parent.info.run_name == f"sweep {sweep.name}"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.loss.label_smoothing"] == "{uniform: [0.0, 0.3]}"
    assert parent.data.params["search.algo"] == "random"
    assert parent.data.params["schedule.asha.reduction"] == "2.0"
    sweep_yaml = client.download_artifacts(parent.info.run_id, "sweep.yaml")
    assert Path(sweep_yaml).read_text() == callback.sweep_file_text

    by_smoothing = {float(c.data.params["loss.label_smoothing"]): c for c in children}
    assert set(by_smoothing) == set(GRID)
    for smoothing, child in by_smoothing.items():
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        # what it is: its number (start order) and searched value; no include_default, no
        # baseline among the search trials
        assert re.fullmatch(rf"search #[0-4] ls={smoothing:g}", child.info.run_name)
        assert "baseline" not in tags
        assert tags["status"] == GRID[smoothing], (smoothing, tags)
        want = "FAILED" if GRID[smoothing] == "failed" else "FINISHED"
        assert child.info.status == want
        assert params["optim.weight_decay"] == "0.2"  # the fixed value
        assert params["global_batch_size"] == "256"
        assert params["workers.num"] == "2"
        train_yaml = client.download_artifacts(child.info.run_id, "train.yaml")
        assert yaml.safe_load(Path(train_yaml).read_text())["loss"]["label_smoothing"] == smoothing
        assert not any(
            k.startswith(("time_", "training_iteration", "pid")) for k in child.data.metrics
        )

    history = client.get_metric_history(by_smoothing[0.0].info.run_id, "zeroshot_top1")
    assert [(m.step, m.value) for m in history] == [(1, 0.51), (2, 0.52), (3, 0.53)]
    stopped = client.get_metric_history(by_smoothing[0.15].info.run_id, "zeroshot_top1")
    assert [m.step for m in stopped] == [1]
    assert by_smoothing[NAN_AT].data.tags["reason"] == "nan loss"
    assert by_smoothing[FAIL_AT].data.tags["reason"].startswith("RuntimeError: synthetic failure")
    assert "reason" not in by_smoothing[0.0].data.tags

    best = by_smoothing[0.0]
    checkpoint = Path(best.data.tags["checkpoint"])
    assert (checkpoint / "weights.txt").read_text() == "epoch 3"
    assert "checkpoint" not in by_smoothing[0.1].data.tags
    assert parent.data.tags["best_trial"] == best.data.tags["trial_id"]
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_zeroshot_top1"] == pytest.approx(0.53)
    assert [c.data.tags.get("best") for c in children].count("true") == 1
    assert best.data.tags["best"] == "true"
    best_yaml = Path(client.download_artifacts(parent.info.run_id, "best.yaml")).read_text()
    assert yaml.safe_load(best_yaml)["loss"]["label_smoothing"] == 0.0
    # the trial's config, its data paths absolute from where the sweep ran (the test's cwd)
    best_cfg = absolute_paths(space.trial_config(sweep, {"loss.label_smoothing": 0.0}))
    assert best_yaml == dump_train(best_cfg)

    assert not [r for r in [parent, *children] if r.info.status == "RUNNING"]
    rows = {r["trial_id"]: r for r in tracking.sweep_summary(sweep)}
    assert set(rows) == {c.data.tags["trial_id"] for c in children}
    row = rows[best.data.tags["trial_id"]]
    assert row["status"] == "completed" and row["epochs_run"] == 3
    assert row["params"] == {"loss.label_smoothing": 0.0}
    assert row["value"] == pytest.approx(0.53)


@pytest.mark.ray
def test_tune_sweep_logged_to_sqlite(ray_cluster, sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = sqlite_uri
    sweep, text = make_sweep(uri)
    callback = run_tune(sweep, text, tmp_path / "ray", list(GRID))
    check_logged_sweep(uri, sweep, callback)


@pytest.mark.ray
def test_tune_sweep_logged_to_mlflow_server(ray_cluster, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sweep's journal: runs/<name>/ under the cwd
    tracking.check_tracking(mlflow_server, experiment="tsweep-http")
    sweep, text = make_sweep(mlflow_server, name="tsweep-http")
    callback = run_tune(sweep, text, tmp_path / "ray", list(GRID))
    check_logged_sweep(mlflow_server, sweep, callback)


def trial(trial_id: str, smoothing: float) -> Trial:
    """A real Tune ``Trial`` (never run: its callback events are called directly)."""
    from ray import tune

    tune.register_trainable("smotune_test_trainable", make_trainable())
    config = {"loss.label_smoothing": smoothing}
    return Trial("smotune_test_trainable", config=config, trial_id=trial_id)


def test_state_round_trip_reuses_runs(sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = sqlite_uri
    sweep, text = make_sweep(uri)
    a, b = trial("aaaa0001", 0.1), trial("bbbb0002", 0.2)

    first = tracking.MlflowSweepCallback(sweep, text)
    first.setup()
    first.on_trial_start(0, [a], a)
    first.on_trial_result(0, [a], a, epoch_result(0.1, 1))
    assert first.flush(30)
    state = pickle.loads(pickle.dumps(first.get_state()))
    # b starts after the state was saved: the restored callback finds its run in the journal
    first.on_trial_start(0, [a, b], b)
    first.on_trial_result(0, [a, b], b, epoch_result(0.2, 1))
    first.on_experiment_end([a, b])  # the interrupted sweep: both runs end KILLED

    _, parents, children = runs_of(uri, sweep.experiment)
    assert {c.info.status for c in children} == {"KILLED"}
    assert {c.data.tags["status"] for c in children} == {"killed"}

    # Tune unpickles the callback from tuner.pkl, then calls set_state, then setup
    second = pickle.loads(pickle.dumps(tracking.MlflowSweepCallback(sweep, text)))
    second.set_state(state)
    second.setup()
    assert second.parent_run_id == first.parent_run_id
    for t in (a, b):
        second.on_trial_start(0, [a, b], t)
    assert second.flush(30)
    _, parents, children = runs_of(uri, sweep.experiment)
    assert [p.info.status for p in parents] == ["RUNNING"]
    assert {c.info.status for c in children} == {"RUNNING"}
    assert not any("reason" in c.data.tags for c in children)
    for epoch in (2, 3):
        second.on_trial_result(0, [a, b], a, epoch_result(0.1, epoch))
    second.on_trial_complete(0, [a, b], a)
    # b resumed from no checkpoint: it re-reports epoch 1, which MLflow already holds
    second.on_trial_result(0, [a, b], b, {**epoch_result(0.2, 1), "zeroshot_top1": 0.99})
    second.on_trial_result(0, [a, b], b, epoch_result(0.2, 2))
    second.on_trial_complete(0, [a, b], b)
    second.on_experiment_end([a, b])

    client, parents, children = runs_of(uri, sweep.experiment)
    assert len(parents) == 1 and len(children) == 2
    by_id = {c.data.tags["trial_id"]: c for c in children}
    assert by_id["aaaa0001"].data.tags["status"] == "completed"
    assert by_id["bbbb0002"].data.tags["status"] == "early_stopped"
    history = client.get_metric_history(by_id["aaaa0001"].info.run_id, "zeroshot_top1")
    assert [m.step for m in history] == [1, 2, 3]
    history = client.get_metric_history(by_id["bbbb0002"].info.run_id, "zeroshot_top1")
    assert [(m.step, m.value) for m in history] == [(1, 0.31), (2, 0.32)]
    assert parents[0].data.tags["best_trial"] == "aaaa0001"
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parents[0].info.status == "FINISHED"
    # each run named at its start, numbered in start order; described as it ended
    names = {c.data.tags["trial_id"]: c.info.run_name for c in children}
    assert names == {"aaaa0001": "search #0 ls=0.1", "bbbb0002": "search #1 ls=0.2"}
    said = {c.data.tags["trial_id"]: c.data.tags["mlflow.note.content"] for c in children}
    assert said == {
        "aaaa0001": "completed 3/3 epochs: zeroshot_top1 0.4300",
        "bbbb0002": "stopped by ASHA at epoch 2/3: zeroshot_top1 0.3200",
    }

    # a resume whose journal is lost (e.g. kept on another machine) still finds the runs:
    # the parent from Tune's saved state, b by its trial_id tag under the parent
    third = tracking.MlflowSweepCallback(sweep, text, journal=tmp_path / "other.jsonl")
    third.set_state(state)
    for t in (a, b):
        third.on_trial_start(0, [a, b], t)
        third.on_trial_complete(0, [a, b], t)
    third.on_experiment_end([a, b])
    _, parents, children = runs_of(uri, sweep.experiment)
    assert len(parents) == 1 and len(children) == 2
    assert third.parent_run_id == first.parent_run_id


@pytest.mark.ray
def test_tuner_restore_reattaches(ray_cluster, sqlite_uri, tmp_path, monkeypatch):
    from ray import tune

    monkeypatch.chdir(tmp_path)
    uri = sqlite_uri
    sweep, text = make_sweep(uri, name="trestore")
    marker = tmp_path / "failed-once"
    grid = [0.0, FAIL_AT]
    first = run_tune(sweep, text, tmp_path / "ray", grid, fail_marker=marker)
    _, _, children = runs_of(uri, sweep.experiment)
    assert sorted(c.data.tags["status"] for c in children) == ["completed", "failed"]

    path = str(tmp_path / "ray" / sweep.name)
    # resume_errored keeps the trial id (what an interrupted trial gets); restart_errored would
    # make a new trial, and rightly a new run
    trainable = tune.with_resources(make_trainable(marker), {"cpu": 0, "trial_driver": 1})
    tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    tuner.fit()
    _, parents, children = runs_of(uri, sweep.experiment)
    assert len(parents) == 1 and parents[0].info.run_id == first.parent_run_id
    assert len(children) == 2
    assert sorted(c.data.tags["status"] for c in children) == ["completed", "completed"]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert not any("reason" in c.data.tags for c in children)
    assert parents[0].info.status == "FINISHED"


def test_check_tracking_dead_http_port():
    uri = f"http://127.0.0.1:{free_port()}"
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # a journal writer may have set it
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        tracking.check_tracking(uri)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert message.startswith("tracking.uri:") and "\n" not in message
    assert (
        f"cannot reach the MLflow server at {uri}" in message and "mlflow server" in err.value.fix
    )
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == before


def test_check_tracking_bad_scheme():
    with pytest.raises(UserError, match="unsupported tracking URI scheme 'foo'.*sqlite:///"):
        tracking.check_tracking("foo://somewhere/db")


def test_check_tracking_unwritable_sqlite(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="is not a directory"):
        tracking.check_tracking(f"sqlite:///{blocker}/sub/mlflow.db")


def test_check_tracking_ok_and_deleted_experiment(sqlite_uri, tmp_path):
    uri = sqlite_uri
    tracking.check_tracking(uri, experiment="gone")
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone", artifact_location=str(tmp_path)))
    with pytest.raises(UserError, match="'gone' .* is deleted"):
        tracking.check_tracking(uri, experiment="gone")


def test_check_tracking_hides_password():
    uri = f"postgresql://user:s3cret@127.0.0.1:{free_port()}/mlflow"
    with pytest.raises(UserError) as err:
        tracking.check_tracking(uri)
    assert "s3cret" not in str(err.value) and "user:***@127.0.0.1" in str(err.value)


# -- the journal: a store that is down, refusing or killed mid-write loses nothing


def log_trials(callback, trials: list[tuple[Trial, float]], end: bool = True) -> None:
    """Drive the callback as Tune would: each trial runs its epochs and completes."""
    done: list[Trial] = []
    for t, smoothing in trials:
        done.append(t)
        callback.on_trial_start(0, done, t)
        for epoch in range(1, EPOCHS + 1):
            callback.on_trial_result(0, done, t, epoch_result(smoothing, epoch))
        callback.on_trial_complete(0, done, t)
    if end:
        callback.on_experiment_end(done)


def tracking_line(out: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("tracking:")]
    return line


def check_written(uri: str, experiment: str, trial_ids: list[str]) -> None:
    """Every trial's run holds each epoch once; nothing is RUNNING; the best is marked."""
    client, parents, children = runs_of(uri, experiment)
    assert len(parents) == 1 and sorted(c.data.tags["trial_id"] for c in children) == trial_ids
    for run in [*parents, *children]:
        assert run.info.status == "FINISHED", run.data.tags
    for child in children:
        assert child.data.tags["status"] == "completed"
        for key in ("zeroshot_top1", "epoch", "train_loss"):
            history = client.get_metric_history(child.info.run_id, key)
            assert [m.step for m in history] == [1, 2, 3], (key, history)
    assert parents[0].data.tags["best_trial"] == "bbbb0002"


def test_dead_store_never_holds_up_the_hooks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMOTUNE_TRACKING_DRAIN_S", "1")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sweep, text = make_sweep(uri)
    callback = tracking.MlflowSweepCallback(sweep, text)
    start = time.monotonic()
    log_trials(callback, [(trial("aaaa0001", 0.1), 0.1)], end=False)
    assert time.monotonic() - start < 5
    callback.on_experiment_end([])
    assert time.monotonic() - start < 10
    path = tracking.sweep_journal_path(sweep)
    assert tracking_line(capsys.readouterr().out) == (  # 7 writes and 2 plot refreshes
        f"tracking: 9 writes not yet written (store unreachable): run `smotune sync {path}`"
    )
    try:
        # the sweep's last steps read what the journal knows, and refuse to export from MLflow
        rows = tracking.sweep_summary(sweep)
        assert [(r["trial_id"], r["status"], r["epochs_run"], r["value"]) for r in rows] == [
            ("aaaa0001", "completed", 3, 0.43)
        ]
        parent = tracking.sweep_parent_id(uri, sweep.experiment, str(path.parent))
        assert parent.startswith("sweep-") and callback.parent_run_id is None  # its journal key
        with pytest.raises(UserError, match=f"9 MLflow writes .* not yet written.*sync {path}"):
            tracking.check_tracking(uri, existing=True)
        assert cli.main(["sync", str(path), "--timeout", "1"]) == 1
        assert "9 writes not yet written" in tracking_line(capsys.readouterr().out)
    finally:
        close_journal(live(path))


def test_journal_replays_exactly_once(sqlite_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep, text = make_sweep(sqlite_uri)
    callback = tracking.MlflowSweepCallback(sweep, text)
    log_trials(callback, [(trial("aaaa0001", 0.1), 0.1), (trial("bbbb0002", 0.0), 0.0)])
    assert tracking_line(capsys.readouterr().out) == "tracking: 0 writes delayed, all written"
    path = tracking.sweep_journal_path(sweep)
    close_journal(live(path))
    assert cli.main(["sync", str(path)]) == 0  # nothing is written twice
    assert tracking_line(capsys.readouterr().out) == "tracking: 0 writes delayed, all written"

    # a writer killed after its last 5 writes, before it marked them: they are written again,
    # and writing them again changes nothing
    lines = path.read_text().splitlines()
    marks = [i for i, ln in enumerate(lines) if json.loads(ln)["t"] == "done"]
    path.write_text("\n".join(ln for i, ln in enumerate(lines) if i not in marks[-5:]) + "\n")
    assert cli.main(["sync", str(path.parent)]) == 0
    assert tracking_line(capsys.readouterr().out) == "tracking: 5 writes delayed, all written"
    check_written(sqlite_uri, sweep.experiment, ["aaaa0001", "bbbb0002"])
    client, parents, _ = runs_of(sqlite_uri, sweep.experiment)
    assert len(client.get_metric_history(parents[0].info.run_id, "best_zeroshot_top1")) == 1


KILLED_WRITER = """
import sqlite3, sys, time
sys.path.insert(0, {tests!r})
from test_tracking import log_trials, make_sweep, trial
from smotune import tracking

sweep, text = make_sweep({uri!r})
callback = tracking.MlflowSweepCallback(sweep, text)
a, b = trial("aaaa0001", 0.1), trial("bbbb0002", 0.0)
log_trials(callback, [(a, 0.1)], end=False)
assert callback.flush(120)
lock = sqlite3.connect({db!r})
lock.execute("BEGIN EXCLUSIVE")  # the store now refuses every write
log_trials(callback, [(b, 0.0)], end=False)
callback.on_experiment_end([a, b])
time.sleep(600)
"""


def test_killed_writer_leaves_a_journal_sync_completes(sqlite_uri, tmp_path, capsys):
    sweep, _ = make_sweep(sqlite_uri)
    db = sqlite_uri.removeprefix("sqlite:///")
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), uri=sqlite_uri, db=db)
    env = {**os.environ, "SMOTUNE_TRACKING_DRAIN_S": "2"}
    log = tmp_path / "writer.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 240
            while "tracking:" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        finally:
            proc.kill()
            proc.wait()
    path = tmp_path / "runs" / sweep.name / tracking.JOURNAL_FILE
    # b's start, 3 epochs, end and plots; the sweep's end and plots
    assert tracking_line(log.read_text()) == (
        f"tracking: 8 writes not yet written (store unreachable): run `smotune sync {path}`"
    )
    assert cli.main(["sync", str(path)]) == 0
    assert tracking_line(capsys.readouterr().out) == "tracking: 8 writes delayed, all written"
    check_written(sqlite_uri, sweep.experiment, ["aaaa0001", "bbbb0002"])
    assert cli.main(["sync", str(path)]) == 0
    assert tracking_line(capsys.readouterr().out) == "tracking: 0 writes delayed, all written"


def test_sync_of_a_missing_journal(tmp_path, capsys):
    assert cli.main(["sync", str(tmp_path / "nothing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tracking journal there" in err


def test_a_refused_write_does_not_hold_up_the_rest(sqlite_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep, text = make_sweep(sqlite_uri)
    callback = tracking.MlflowSweepCallback(sweep, text)
    a = trial("aaaa0001", 0.1)
    callback.on_trial_start(0, [a], a)
    a.config = {"loss.label_smoothing": 0.2}  # MLflow refuses to change a logged param
    log_trials(callback, [(a, 0.2)])
    line = tracking_line(capsys.readouterr().out)
    assert re.fullmatch(
        r"tracking: \d+ writes delayed, all written; 1 refused by the store "
        r"\(start_trial #3: .*param.*; see .*mlflow-journal.jsonl\)",
        line,
    ), line
    client, parents, (child,) = runs_of(sqlite_uri, sweep.experiment)
    history = client.get_metric_history(child.info.run_id, "zeroshot_top1")
    assert [m.step for m in history] == [1, 2, 3] and child.info.status == "FINISHED"


def test_confirm_phase_and_verdict_go_through_the_journal(sqlite_uri, tmp_path, monkeypatch):
    """The verdict and everything "best" on the parent tell one story: the chosen config (the
    baseline, when nothing beats it) has best_run_id, best.yaml, best_* (its confirmed means)
    and the only `best` tags, though the search's best trial had them first."""
    from smotune import confirm as confirming
    from smotune.config import ConfirmConfig

    monkeypatch.chdir(tmp_path)
    sweep, text = make_sweep(sqlite_uri)
    sweep.search.confirm = ConfirmConfig(top=1, seeds=2)
    search = tracking.MlflowSweepCallback(sweep, text)
    log_trials(search, [(trial("aaaa0001", 0.05), 0.05), (trial("bbbb0002", 0.2), 0.2)])
    path = tracking.sweep_journal_path(sweep)
    parent_id = tracking.sweep_parent_id(sqlite_uri, sweep.experiment, str(path.parent))
    assert parent_id == search.parent_run_id
    groups = [
        confirming.Group("baseline", {"loss.label_smoothing": 0.1}),
        confirming.Group("aaaa0001", {"loss.label_smoothing": 0.05}),
    ]
    confirm = tracking.MlflowSweepCallback(
        sweep,
        text,
        phase="confirm",
        parent_run_id=parent_id,
        confirm_labels=lambda c: confirming.group_of(groups, c).label,
    )
    runs, ended = [], []
    spread = {("baseline", 2): 0.01, ("aaaa0001", 2): 0.05}  # seeds differ, not alike
    for n, point in enumerate(confirming.points(groups, [1, 2])):
        smoothing = point["loss.label_smoothing"] + spread.get((groups[n // 2].label, n % 2 + 1), 0)
        runs.append((Trial("smotune_test_trainable", config=point, trial_id=f"c{n}"), smoothing))
        ended.append((point, epoch_result(smoothing, EPOCHS)))
    log_trials(confirm, runs)
    assert live(path) is confirm._journal is search._journal  # one journal, one writer
    confirming.collect(groups, ended, sweep)
    verdict = confirming.judge(groups, confirming.Plan.of(sweep))
    assert verdict.verdict == "not_decided" and verdict.chosen is groups[0]
    tracking.log_verdict(sqlite_uri, parent_id, verdict, "zeroshot_top1")

    client, (parent,), children = runs_of(sqlite_uri, sweep.experiment)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["verdict"] == "not_decided" and tags["best_trial"] == "baseline"
    assert tags["mlflow.note.content"] == verdict.words("zeroshot_top1")
    assert tags["verdict_config"] == "aaaa0001" and "paired t" in tags["verdict_method"]
    (c,) = verdict.comparisons
    assert metrics["verdict_gain"] == pytest.approx(0.03) == pytest.approx(c.gain)
    assert metrics["verdict_gain_lower"] == pytest.approx(c.lower) and c.lower < 0
    assert metrics["verdict_p"] == pytest.approx(c.p) and metrics["verdict_df"] == 1
    assert metrics["verdict_seeds_to_decide"] == verdict.seeds_to_decide
    assert metrics["seeds.baseline"] == 2 and metrics["seeds.aaaa0001"] == 2
    base_runs = sorted(
        (k for k in children if k.data.tags.get("confirm_of") == "baseline"),
        key=lambda k: int(k.data.tags["seed"]),
    )
    assert tags["best_run_id"] == base_runs[0].info.run_id
    best = {k.info.run_id for k in children if k.data.tags.get("best") == "true"}
    assert best == {k.info.run_id for k in base_runs}  # not aaaa0001's search run any more
    for key in ("zeroshot_top1", "train_loss"):
        mean = sum(k.data.metrics[key] for k in base_runs) / 2
        assert metrics[f"best_{key}"] == pytest.approx(mean)
    assert metrics["best_top1_mean"] == pytest.approx(metrics["baseline_top1_mean"])
    best_yaml = Path(client.download_artifacts(parent.info.run_id, "best.yaml")).read_text()
    assert yaml.safe_load(best_yaml)["loss"]["label_smoothing"] == 0.1
    assert {r.info.status for r in [parent, *children]} == {"FINISHED"}


def test_error_line_is_the_workers_error_of_a_chained_traceback():
    """A trial's reason: the last error line of Tune's error text, without its module path."""
    import traceback

    from smotune.trial import WorkerError

    try:
        try:
            raise FloatingPointError("loss is nan at epoch 1, step 3")
        except FloatingPointError as err:
            raise WorkerError("rank 0: FloatingPointError: loss is nan at epoch 1, step 3") from err
    except WorkerError:
        text = "ray.exceptions.RayTaskError(WorkerError): ray::ImplicitFunc.train()\n"
        text += traceback.format_exc()
    assert error_line(text) == (
        "WorkerError: rank 0: FloatingPointError: loss is nan at epoch 1, step 3"
    )
    assert error_line("no error named here\nsecond") == "no error named here"


def test_sweep_time_reads_the_wall_and_the_training_loops_back(sqlite_uri):
    """What bench/demo_share.py reports: the parent's wall, each trial's epochs' train_s
    (an epoch logged twice counts once, its later value) and each trial run's wall."""
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri)
    exp = client.create_experiment("timed")
    t0 = 1_796_000_000_000  # ms
    parent = client.create_run(exp, start_time=t0, tags={tracking.TAG_KIND: "sweep"})
    with pytest.raises(UserError, match="has not ended"):
        tracking.sweep_time(sqlite_uri, "timed")

    def child(trial, phase, start_s, end_s, train_s):
        tags = {
            tracking.TAG_PARENT: parent.info.run_id,
            tracking.TAG_KIND: "trial",
            tracking.TAG_TRIAL_ID: trial,
            "phase": phase,
            tracking.TAG_STATUS: "completed",
        }
        run = client.create_run(exp, start_time=t0 + start_s * 1000, tags=tags)
        for i, (step, value) in enumerate(train_s):
            client.log_metric(run.info.run_id, "train_s", value, timestamp=t0 + i, step=step)
        client.set_terminated(run.info.run_id, end_time=t0 + end_s * 1000)

    child("a", "search", 5, 40, [(1, 10.0), (2, 12.0), (2, 13.0)])
    child("b", "confirm", 50, 80, [(1, 9.0), (2, 9.5)])
    client.set_terminated(parent.info.run_id, end_time=t0 + 100_000)

    timed = tracking.sweep_time(sqlite_uri, "timed")
    assert timed.run_id == parent.info.run_id and timed.wall_s == 100.0
    assert [(t.trial_id, t.phase, t.epochs, t.train_s, t.wall_s) for t in timed.trials] == [
        ("a", "search", 2, 23.0, 35.0),
        ("b", "confirm", 2, 18.5, 30.0),
    ]
    assert timed.train_s == 41.5 and timed.train_share == pytest.approx(0.415)


def test_the_sweep_ends_with_the_url_of_its_view_in_mlflow_ui(sqlite_uri, tmp_path, monkeypatch):
    """A local store: the `mlflow ui` command, then the URL of the sweep's saved view in the
    training runs table; a store that cannot be read: the command and the experiment's name."""
    monkeypatch.chdir(tmp_path)
    sweep, text = make_sweep(sqlite_uri)
    callback = tracking.MlflowSweepCallback(sweep, text)
    callback.setup()
    assert callback.flush(30)
    exp = mlflow.MlflowClient(sqlite_uri).get_experiment_by_name(sweep.experiment)
    assert f"mlflow.sharedViewState.smotune-{sweep.name}" in exp.tags
    line = tracking.where_to_look(sweep)
    assert line.startswith(
        f"compare the trials: mlflow ui --backend-store-uri {sqlite_uri}, then open "
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?"
        f"workflowType=machine_learning&viewStateShareKey=smotune-{sweep.name}\n"
    ), line
    close_journal(live(tracking.sweep_journal_path(sweep)))
    gone, _ = make_sweep(f"sqlite:///{tmp_path}/missing/mlflow.db")
    assert tracking.where_to_look(gone) == (
        f"compare the trials: mlflow ui --backend-store-uri sqlite:///{tmp_path}/missing/"
        f"mlflow.db, then open http://127.0.0.1:5000  (experiment {gone.experiment!r})"
    )
