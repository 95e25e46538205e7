"""What Optuna and ASHA are told, read back from the Optuna study on real Tune runs.

A trivial trainable reports a known curve per epoch (and writes what it reported
to a file); the study is then opened with ``optuna.load_study`` as a user would.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from smotune import console, optuna_study, search, tune_state
from smotune.config import SweepConfig
from smotune.errors import UserError

EPOCHS = 3
# label smoothing -> behaviour of the trivial trainable; the order is the order of the trials
GOOD, BAD, MIDDLING, CRASH, NAN = 0.0, 0.5, 0.1, 0.05, 0.07


def curve(ls: float, epoch: int) -> float:
    """The zero-shot top-1 the trivial trainable reports: higher for lower smoothing."""
    return (1.0 - ls) * epoch / EPOCHS


def _sweep(
    tmp_path: Path, name: str, values: list[float], space: dict | None = None, **search_kw
) -> SweepConfig:
    return SweepConfig.model_validate(
        {
            "name": name,
            "train": {
                "data": {"train": "x-{0..1}.tar", "zeroshot": "zs"},
                "epochs": EPOCHS,
            },
            "space": space or {"loss.label_smoothing": {"choice": values}},
            "search": {"algo": "random", "samples": len(values), "seed": 0, **search_kw},
            "schedule": {"asha": {"grace": 1, "reduction": 2}},
            "storage": {"path": str(tmp_path / "runs")},
        }
    )


TRAINABLE = """
import json, math, os, time
from ray import tune

LOG = os.environ["SMOTUNE_TEST_LOG"]
EPOCHS = 3
SLEEP = float(os.environ.get("SMOTUNE_TEST_SLEEP", "0"))


def trainable(config):
    ls = config["loss.label_smoothing"]
    for epoch in range(1, EPOCHS + 1):
        time.sleep(SLEEP)
        if ls == 0.05 and epoch == 2:
            raise RuntimeError("crash at epoch 2")
        value = float("nan") if ls == 0.07 else (1.0 - ls) * epoch / EPOCHS
        with open(LOG, "a") as f:
            f.write(json.dumps({"trial": tune.get_context().get_trial_id(), "epoch": epoch,
                                "value": value}) + "\\n")
        tune.report({"epoch": epoch, "zeroshot_top1": value})
        if math.isnan(value):
            return
"""


def _write_trainable(tmp_path: Path) -> Path:
    module = tmp_path / "trivial_trainable.py"
    module.write_text(TRAINABLE)
    return module


def _reported(log: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["trial"], {})[rec["epoch"]] = rec["value"]
    return out


def _enqueue(sweep: SweepConfig, url: str, values: list[float]) -> None:
    """Fix the order of the trials (the study's own enqueue, which Tune's ask() takes first)."""
    study = optuna.load_study(study_name=sweep.name, storage=url)
    for v in values:
        study.enqueue_trial({"loss.label_smoothing": v})


def _tuner(sweep: SweepConfig, trainable, url: str, storage):
    """The sweep's searcher and ASHA, and the console a sweep shows (``console.SweepConsole``)."""
    from ray import tune

    scheduler = search.make_scheduler(sweep, url)
    shown = console.SweepConsole(sweep, sweep.search.samples, scheduler=scheduler)
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=search.make_searcher(sweep, storage),
            scheduler=scheduler,
            num_samples=sweep.search.samples,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=sweep.storage.path, verbose=0, callbacks=[shown]
        ),
    )


SEQUENCE = [GOOD, BAD, MIDDLING, CRASH, NAN]


@pytest.mark.ray
def test_optuna_is_told_every_epoch_and_how_each_trial_ended(
    ray_cluster, tmp_path, monkeypatch, capsys
):
    log = tmp_path / "reported.jsonl"
    monkeypatch.setenv("SMOTUNE_TEST_LOG", str(log))
    sys.path.insert(0, str(_write_trainable(tmp_path).parent))
    try:
        import trivial_trainable
    finally:
        sys.path.pop(0)
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(trivial_trainable)  # Ray's workers cannot import it
    trainable = trivial_trainable.trainable
    sweep = _sweep(tmp_path, "told", SEQUENCE)
    url, storage = optuna_study.prepare_study(sweep, resume=False, where="test")
    assert url == f"sqlite:///{tmp_path}/runs/told/optuna.db"
    _enqueue(sweep, url, SEQUENCE)
    grid = _tuner(sweep, trainable, url, storage).fit()
    epochs_run = {r.metrics["trial_id"]: r.metrics.get("epoch", 0) for r in grid}

    reported = _reported(log)
    study = optuna.load_study(study_name="told", storage=url)  # as optuna-dashboard opens it
    trials = study.get_trials()
    assert len(trials) == len(SEQUENCE)
    by_ls = {}
    for t in trials:
        tune_id = t.user_attrs[optuna_study.ATTR_TUNE_TRIAL]
        sent = reported[tune_id]
        finite = {e: v for e, v in sent.items() if math.isfinite(v)}
        # every epoch the trainable reported, the stopping epoch included, and nothing else
        assert t.intermediate_values == finite, (t.params, sent)
        assert max(sent) == epochs_run[tune_id]
        by_ls[t.params["loss.label_smoothing"]] = t

    good = by_ls[GOOD]
    assert good.state == TrialState.COMPLETE
    assert good.value == pytest.approx(curve(GOOD, EPOCHS))
    assert sorted(good.intermediate_values) == [1, 2, 3]
    # ASHA stopped these two (below the rung's cutoff): PRUNED, with the epochs they ran
    assert by_ls[BAD].state == TrialState.PRUNED and sorted(by_ls[BAD].intermediate_values) == [1]
    assert by_ls[MIDDLING].state == TrialState.PRUNED
    assert sorted(by_ls[MIDDLING].intermediate_values) == [1, 2]
    # Optuna's own convention: a pruned trial's value is its last intermediate value
    assert by_ls[BAD].value == pytest.approx(curve(BAD, 1))
    assert by_ls[MIDDLING].value == pytest.approx(curve(MIDDLING, 2))
    # an error and a NaN are failures
    assert by_ls[CRASH].state == TrialState.FAIL and sorted(by_ls[CRASH].intermediate_values) == [1]
    assert by_ls[NAN].state == TrialState.FAIL and by_ls[NAN].intermediate_values == {}
    _the_console_said_it(capsys.readouterr().out, by_ls)
    _a_cut_off_tune_state_is_put_back(tmp_path / "runs" / "told", set(epochs_run))


def _the_console_said_it(out: str, by_ls: dict[float, Any]) -> None:
    """One line per event as the sweep's console prints them, ASHA's cutoffs as ASHA computed
    them: at BAD's first epoch the epoch-1 rung held GOOD's 1/3; at MIDDLING's second epoch
    the epoch-2 rung held GOOD's 2/3 (MIDDLING's 0.3 passed rung 1's median 0.25)."""
    lines = out.splitlines()
    trial_id = optuna_study.ATTR_TUNE_TRIAL
    who = {ls: f"[search] trial {t.user_attrs[trial_id]}" for ls, t in by_ls.items()}
    for ls in SEQUENCE:
        assert f"{who[ls]} started  loss.label_smoothing={ls:.4g}" in lines, out
    good = [f"{who[GOOD]} epoch {e}/3  zeroshot_top1 {curve(GOOD, e):.4f}" for e in (1, 2, 3)]
    assert [ln for ln in lines if ln.startswith(f"{who[GOOD]} epoch")] == good
    assert f"{who[GOOD]} completed 3/3 epochs: zeroshot_top1 1.0000" in lines
    assert (
        f"{who[BAD]} stopped by ASHA at epoch 1/3: zeroshot_top1 0.1667 below the epoch-1 "
        "rung's cutoff 0.3333"
    ) in lines
    assert (
        f"{who[MIDDLING]} stopped by ASHA at epoch 2/3: zeroshot_top1 0.6000 below the "
        "epoch-2 rung's cutoff 0.6667"
    ) in lines
    assert f"{who[CRASH]} failed after 1/3 epochs: RuntimeError: crash at epoch 2" in lines
    assert f"{who[NAN]} failed at epoch 1/3: zeroshot_top1 is nan" in lines
    progress = [ln for ln in lines if ln.startswith("progress: ")]
    assert len(progress) == 2 * len(SEQUENCE)  # at each start and each end
    assert progress[0].startswith("progress: 0/5 trials done, 1 running, elapsed ")
    assert progress[0].endswith("ETA -")
    assert progress[-1].startswith("progress: 5/5 trials done, 0 running, ")
    assert progress[-1].endswith("ETA 0s")


def _a_cut_off_tune_state_is_put_back(experiment: Path, trial_ids: set[str]) -> None:
    """Ray writes its experiment state in place while it may be uploading it (CI saw a cut-off
    one on S3 after a killed driver): the searcher keeps a whole copy, and repair puts it back."""
    from ray.tune import ExperimentAnalysis

    where = "told.yaml"
    assert tune_state.repair(str(experiment), where) is None  # whole: nothing to do
    [state] = experiment.glob("experiment_state-*.json")
    [copy] = experiment.glob(tune_state.COPY.format("*"))
    assert copy.name == tune_state.COPY.format(state.name[len("experiment_state-") : -5])
    assert copy.read_bytes() == state.read_bytes()  # Tune's last save, copied whole
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])  # as CI's bucket held it
    with pytest.raises(ValueError):
        ExperimentAnalysis(str(experiment))  # what Tuner.restore would meet
    said = tune_state.repair(str(experiment), where)
    assert said is not None and copy.name in said and state.name in said
    assert state.read_bytes() == whole
    assert {t.trial_id for t in ExperimentAnalysis(str(experiment)).trials} == trial_ids
    # no whole copy: one line naming the file, the field and the fix
    state.write_bytes(whole[:100])
    copy.write_bytes(whole[:50])
    with pytest.raises(UserError) as err:
        tune_state.repair(str(experiment), where)
    assert str(err.value).startswith(f"{where}: storage.path: Tune's state ")
    assert "\n" not in str(err.value) and "fix: start the sweep again" in str(err.value)


RESUMABLE = """
import os, sys
from ray import tune
from smotune import optuna_study, search
from smotune.config import SweepConfig
from ray import cloudpickle
sys.path.insert(0, os.path.dirname(__file__))
import trivial_trainable
cloudpickle.register_pickle_by_value(trivial_trainable)  # Ray's workers cannot import it
trainable = trivial_trainable.trainable

sweep = SweepConfig.model_validate_json(open(sys.argv[1]).read())
path = os.path.join(sweep.storage.path, sweep.name)
fn = tune.with_resources(trainable, {"cpu": 1})
if sys.argv[2] == "resume":
    tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=False)
else:
    url = optuna_study.storage_url(sweep)
    storage = optuna_study.open_storage(url)
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=search.make_searcher(sweep, storage),
            scheduler=search.make_scheduler(sweep, url),
            num_samples=sweep.search.samples,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(name=sweep.name, storage_path=sweep.storage.path, verbose=0),
    )
tuner.fit()
"""

# strong first, then weaker ones: after a resume, ASHA stops them only if it remembers the rungs
RESUME_SEQUENCE = [GOOD, 0.02, BAD, 0.6, 0.7, 0.8]


def _states(url: str, name: str) -> dict[float, tuple[str, list[int]]]:
    study = optuna.load_study(study_name=name, storage=url)
    return {
        t.params["loss.label_smoothing"]: (t.state.name, sorted(t.intermediate_values))
        for t in study.get_trials()
        if t.state != TrialState.FAIL
    }


def _run_script(tmp_path: Path, sweep: SweepConfig, mode: str, env: dict, wait: bool = True):
    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE)
    cfg = tmp_path / f"{sweep.name}.json"
    cfg.write_text(sweep.model_dump_json(exclude_none=True))
    cmd = [sys.executable, str(script), str(cfg), mode]
    out = (tmp_path / f"{sweep.name}-{mode}.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if wait:
        assert proc.wait(timeout=300) == 0, (tmp_path / f"{sweep.name}-{mode}.log").read_text()
    return proc


@pytest.mark.ray
def test_asha_stops_the_same_trials_after_a_killed_sweep_is_resumed(ray_cluster, tmp_path):
    _write_trainable(tmp_path)
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "SMOTUNE_TEST_LOG": str(tmp_path / "log.jsonl"),
        "SMOTUNE_TEST_SLEEP": "1.0",
        "TUNE_GLOBAL_CHECKPOINT_S": "1",  # Tune saves its experiment state every second
    }
    # the same sweep twice: uninterrupted, and killed after its third trial then resumed
    whole = _sweep(tmp_path, "whole", RESUME_SEQUENCE)
    url = optuna_study.prepare_study(whole, resume=False, where="test")[0]
    _enqueue(whole, url, RESUME_SEQUENCE)
    _run_script(tmp_path, whole, "start", env)
    expected = _states(url, "whole")
    stopped = {ls for ls, (state, _) in expected.items() if state == "PRUNED"}
    assert stopped == set(RESUME_SEQUENCE) - {GOOD}, expected

    cut = _sweep(tmp_path, "cut", RESUME_SEQUENCE)
    cut_url = optuna_study.prepare_study(cut, resume=False, where="test")[0]
    _enqueue(cut, cut_url, RESUME_SEQUENCE)
    first = _run_script(tmp_path, cut, "start", env, wait=False)
    study = optuna.load_study(study_name="cut", storage=cut_url)
    deadline = time.time() + 200
    while len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) < 3:
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.5)
    time.sleep(2.5)  # one more experiment-state save
    first.send_signal(signal.SIGKILL)
    first.wait()
    _run_script(tmp_path, cut, "resume", env)
    assert _states(cut_url, "cut") == expected


UNIFORM = {"loss.label_smoothing": {"uniform": [0.0, 0.3]}}
LS = "loss.label_smoothing"


def _tune_saved(folder: Path, *trial_ids: str) -> None:
    """Tune's experiment state holding these trials (each as Ray's Trial writes itself)."""
    from ray.tune.experiment import Trial

    data = [list(Trial("fn", stub=True, trial_id=t).get_json_state()) for t in trial_ids]
    (folder / "experiment_state-s.json").write_text(json.dumps({"trial_data": data}))


def _straight_draws(tmp_path: Path, algo: str, result: dict, n: int) -> list[float]:
    """What an uninterrupted sweep suggests: n trials, each ending with ``result``."""
    sweep = _sweep(tmp_path, f"straight-{algo}", [0.0] * 4, space=UNIFORM, algo=algo)
    searcher = search.make_searcher(sweep, optuna_study.prepare_study(sweep, False, "x")[1])
    drawn = []
    for i in range(n):
        drawn.append(searcher.suggest(str(i))[LS])
        searcher.on_trial_complete(str(i), result)
    return drawn


@pytest.mark.parametrize("algo", ["random", "tpe"])
def test_what_the_study_learnt_after_the_last_save_stands_on_resume(tmp_path, algo):
    """A driver killed after Tune's last save (it knew trial a): a then ended (PRUNED) and b
    was suggested. Tune runs a again: its repeated result changes nothing in the study (was:
    an error that ended the sweep). b is told FAIL and its config is suggested next (was: a
    new draw), and the draw after it is the one an uninterrupted sweep makes next (was: b's
    config again, from the sampler's random state as the searcher's save had it)."""
    stopped = {"zeroshot_top1": 0.3, optuna_study.TIME_ATTR: 1}
    drawn = _straight_draws(tmp_path, algo, stopped, 3)
    sweep = _sweep(tmp_path, "orphan", [0.0] * 4, space=UNIFORM, algo=algo)
    url, storage = optuna_study.prepare_study(sweep, resume=False, where="orphan.yaml")
    killed = search.make_searcher(sweep, storage)
    assert killed.suggest("a") == {LS: drawn[0]}
    saved = tmp_path / "saved"
    saved.mkdir()
    _tune_saved(saved, "a")
    killed.save_to_dir(str(saved), "s")  # Tune's last save before the kill
    killed.on_trial_complete("a", stopped)
    assert killed.suggest("b") == {LS: drawn[1]}

    resumed = search.make_searcher(sweep, optuna_study.open_storage(url))
    resumed.restore_from_dir(str(saved))
    resumed.on_trial_result("a", {**stopped, "zeroshot_top1": 0.9})
    resumed.on_trial_complete("a", {**stopped, "zeroshot_top1": 0.9})
    assert resumed.suggest("c") == {LS: drawn[1]}
    resumed.on_trial_complete("c", stopped)
    assert resumed.suggest("d") == {LS: drawn[2]}
    study = optuna.load_study(study_name="orphan", storage=url)
    assert [
        (t.state, t.params[LS], t.user_attrs[optuna_study.ATTR_TUNE_TRIAL], t.intermediate_values)
        for t in study.get_trials()
    ] == [
        (TrialState.PRUNED, drawn[0], "a", {1: 0.3}),
        (TrialState.FAIL, drawn[1], "b", {}),
        (TrialState.PRUNED, drawn[1], "c", {1: 0.3}),
        (TrialState.RUNNING, drawn[2], "d", {}),
    ]


def test_a_trial_tune_restored_is_the_searchers_though_its_saved_state_is_older(tmp_path):
    """Tune uploads its saved files one by one, so a killed driver can leave Tune's trials
    newer than the searcher's state: trial b, suggested after the searcher's save, is in
    Tune's. Tune runs b on, and b's results reach b's study trial; the next suggestion is a
    new draw (was: b told FAIL, its results dropped, its config run a second time)."""
    done = {"zeroshot_top1": 0.4, optuna_study.TIME_ATTR: EPOCHS}
    drawn = _straight_draws(tmp_path, "random", done, 3)
    sweep = _sweep(tmp_path, "older", [0.0] * 4, space=UNIFORM)
    url, storage = optuna_study.prepare_study(sweep, resume=False, where="older.yaml")
    killed = search.make_searcher(sweep, storage)
    killed.suggest("a")
    saved = tmp_path / "saved"
    saved.mkdir()
    killed.save_to_dir(str(saved), "s")
    assert killed.suggest("b") == {LS: drawn[1]}
    _tune_saved(saved, "a", "b")  # Tune's state, uploaded after the searcher's

    resumed = search.make_searcher(sweep, optuna_study.open_storage(url))
    resumed.restore_from_dir(str(saved))
    for trial in "ab":
        resumed.on_trial_result(trial, {**done, optuna_study.TIME_ATTR: 1})
        resumed.on_trial_complete(trial, done)
    assert resumed.suggest("c") == {LS: drawn[2]}
    study = optuna.load_study(study_name="older", storage=url)
    assert [
        (t.state, t.value, t.params[LS], t.intermediate_values) for t in study.get_trials()
    ] == [
        (TrialState.COMPLETE, 0.4, drawn[0], {1: 0.4, EPOCHS: 0.4}),
        (TrialState.COMPLETE, 0.4, drawn[1], {1: 0.4, EPOCHS: 0.4}),
        (TrialState.RUNNING, None, drawn[2], {}),
    ]


def test_remote_storage_needs_a_study_storage(tmp_path):
    sweep = _sweep(tmp_path, "remote", [0.0, 0.1])
    sweep.storage.path = "s3://bucket/sweeps"
    with pytest.raises(UserError, match="search.storage"):
        optuna_study.storage_url(sweep)
    sweep.search.storage = f"sqlite:///{tmp_path}/study.db"
    assert optuna_study.storage_url(sweep) == sweep.search.storage
    file_uri = _sweep(tmp_path, "f", [0.0, 0.1])
    file_uri.storage.path = f"file://{tmp_path}/runs"
    assert optuna_study.storage_url(file_uri) == f"sqlite:///{tmp_path}/runs/f/optuna.db"


def _finished_study(tmp_path: Path, name: str) -> None:
    """An earlier sweep's study: one COMPLETE and one PRUNED trial."""
    sweep = _sweep(tmp_path, name, [0.0, 0.1, 0.2])
    url = optuna_study.prepare_study(sweep, resume=False, where="test")[0]
    study = optuna.load_study(study_name=name, storage=url)
    dist = {"loss.label_smoothing": optuna.distributions.CategoricalDistribution([0.0, 0.1, 0.2])}
    study.add_trial(
        optuna.trial.create_trial(
            params={"loss.label_smoothing": 0.1},
            distributions=dist,
            value=0.9,
            intermediate_values={1: 0.5, 2: 0.9},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"loss.label_smoothing": 0.2},
            distributions=dist,
            state=TrialState.PRUNED,
            intermediate_values={1: 0.1},
        )
    )


def test_warm_start_seeds_a_new_study_with_the_earlier_finished_trials(tmp_path):
    _finished_study(tmp_path, "first")
    sweep = _sweep(tmp_path, "second", [0.0, 0.1, 0.2], warm_start="first")
    url, _ = optuna_study.prepare_study(sweep, resume=False, where="second.yaml")
    trials = optuna.load_study(study_name="second", storage=url).get_trials()
    assert [(t.state, t.params, t.value) for t in trials] == [
        (TrialState.COMPLETE, {"loss.label_smoothing": 0.1}, 0.9),
        (TrialState.PRUNED, {"loss.label_smoothing": 0.2}, None),
    ]
    assert trials[0].intermediate_values == {1: 0.5, 2: 0.9}
    assert trials[1].user_attrs[optuna_study.ATTR_WARM_START] == "first#1"
    # a new sweep on a study that already has trials is refused (it is another sweep's)
    with pytest.raises(UserError, match="already has 2 trials"):
        optuna_study.prepare_study(sweep, resume=False, where="second.yaml")


@pytest.mark.parametrize(
    ("values", "kw", "message"),
    [
        ([0.0, 0.1], {"warm_start": "first"}, "outside this sweep's"),
        ([0.0, 0.1, 0.2], {"warm_start": "first", "mode": "min"}, "same objective"),
        ([0.0, 0.1, 0.2], {"warm_start": "nosuch"}, "no earlier sweep 'nosuch'"),
    ],
)
def test_warm_start_from_an_incompatible_study_is_one_line(tmp_path, values, kw, message):
    _finished_study(tmp_path, "first")
    sweep = _sweep(tmp_path, "second", values, **kw)
    with pytest.raises(UserError, match=message) as err:
        optuna_study.prepare_study(sweep, resume=False, where="second.yaml")
    assert "search.warm_start" in str(err.value) and "\n" not in str(err.value)


def _private_names_used(module: Path) -> set[str]:
    """``_names`` that ``module`` reads off objects (``x._name``), but for its own attributes
    (assigned as ``self._name`` or defined as ``def _name`` in it)."""
    tree = ast.parse(module.read_text())
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
    }
    own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    own |= {
        t.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign | ast.AnnAssign)
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) == "self"
    }
    return used - own


def test_ray_internals_the_searcher_and_asha_rely_on():
    """A Ray (or Optuna) upgrade that renames what search.py's subclasses (or optuna_study.py)
    read fails here, naming the attribute and the Ray version pyproject.toml pins; so does a new
    private name used in either file that this test does not check."""
    import ray
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    pin = re.search(r'"(ray\[[^"]*)"', pyproject.read_text())[1]
    checked_on = f"search.py is checked on the Ray that pyproject.toml pins ({pin})"

    dist = optuna.distributions.FloatDistribution(0, 1)
    searcher = OptunaSearch(space={"x": dist}, metric="m", mode="max")
    asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=9, reduction_factor=3)
    owners = {  # each private name the two files read -> the object it reads it from
        "_ot_trials": ("ray.tune.search.optuna.OptunaSearch", searcher),
        "_ot_study": ("ray.tune.search.optuna.OptunaSearch", searcher),
        "_completed_trials": ("ray.tune.search.optuna.OptunaSearch", searcher),
        "_brackets": ("ray.tune.schedulers.ASHAScheduler", asha),
        "_metric_op": ("ray.tune.schedulers.ASHAScheduler", asha),
        "_rungs": ("ray.tune.schedulers.ASHAScheduler._brackets[0]", asha._brackets[0]),
        "_storage": ("ray.tune.search.optuna.OptunaSearch", searcher),
        "_study_name": ("ray.tune.search.optuna.OptunaSearch", searcher),
        "_sampler": ("ray.tune.search.optuna.OptunaSearch", searcher),
        "_contains": ("optuna.distributions.FloatDistribution", dist),
        "_trial_id": ("optuna.trial.FrozenTrial", optuna.trial.create_trial(value=0.0)),
    }
    used = _private_names_used(Path(search.__file__)) | _private_names_used(
        Path(optuna_study.__file__)
    )
    assert used <= set(owners), (
        f"search.py or optuna_study.py reads {sorted(used - set(owners))} off Ray's or Optuna's "
        "objects: add them to this test, which checks every private name the two rely on"
    )
    missing = [
        f"{where} has no {name}" for name, (where, obj) in owners.items() if not hasattr(obj, name)
    ]
    assert not missing, (
        f"Ray {ray.__version__}, Optuna {optuna.__version__}: {'; '.join(missing)}, which "
        f"smotune/search.py or optuna_study.py uses; {checked_on}"
    )
    assert isinstance(searcher._ot_trials, dict) and isinstance(searcher._completed_trials, set)
    assert isinstance(searcher._ot_study, optuna.Study)
    rungs = asha._brackets[0]._rungs
    assert [m for m, _ in rungs] == [9, 3, 1] and all(rec == {} for _, rec in rungs), checked_on
    assert asha._metric_op == 1.0, checked_on
    # the cutoff a rung applies, as ResumableASHA.stop_rung reports it (ASHA's own method)
    assert asha._brackets[0].cutoff({"a": 0.1, "b": 0.4, "c": 0.7}) == pytest.approx(0.5), (
        checked_on
    )
    assert ray.__version__.startswith("2.60."), f"Ray {ray.__version__}: {checked_on}"
