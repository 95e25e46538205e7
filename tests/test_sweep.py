"""The sweep end to end: Tune + Optuna + ASHA on real Ray Train trials, MLflow, export, resume."""

from __future__ import annotations

import html
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from scipy.stats import kendalltau
from scipy.stats import t as tdist

from smotune import cli, config, stats, sweep, tracking
from smotune.data import synth

pytestmark = pytest.mark.ray

GOOD_LR, BAD_LR = 1e-3, 1e-9


def _sweep_file(
    tmp_path: Path, synth_data: Path, name: str, samples: int, seed: int, epochs=2, **search_kw
) -> Path:
    """A tiny sweep whose space has a clearly bad region (lr 1e-9 learns nothing).

    One worker a trial: DDP is test_train's (two workers, a killed one) and the demo's.
    """
    data = {
        "name": name,
        "train": {
            "model": {"arch": "tiny-vit", "text_dropout": 0.0},
            "data": {
                "train": str(synth_data / "train-{0000..0003}.tar"),
                "zeroshot": str(synth_data / "zeroshot"),
                "samples_per_epoch": 640,
                "loader_workers": 0,
            },
            "optim": {"lr": GOOD_LR, "warmup_steps": 3, "batch_size": 64},
            "epochs": epochs,
            "workers": {"num": 1, "cpus": 1},
        },
        "space": {
            "loss.label_smoothing": {"uniform": [0.0, 0.3]},
            "optim.lr": {"choice": [GOOD_LR, BAD_LR]},
        },
        "search": {
            "algo": "random",
            "samples": samples,
            "concurrent": 1,
            "seed": seed,
            **search_kw,
        },
        "schedule": {"asha": {"grace": 1, "reduction": 2}},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": name},
        "storage": {"path": str(tmp_path / "runs")},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _drawn(seed: int, samples: int) -> list[dict]:
    """The configs the sweep's random searcher draws with this seed, in trial order."""
    space = {
        "loss.label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.3),
        "optim.lr": optuna.distributions.CategoricalDistribution([GOOD_LR, BAD_LR]),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.ask(space).params for _ in range(samples)]


def _drawn_lrs(seed: int, samples: int) -> list[float]:
    return [params["optim.lr"] for params in _drawn(seed, samples)]


def _first_good_then_bad(samples: int) -> int:
    """A seed whose random draws put a good lr first and a bad lr later (ASHA must stop it)."""
    for seed in range(100):
        lrs = _drawn_lrs(seed, samples)
        if lrs[0] == GOOD_LR and BAD_LR in lrs and lrs.count(GOOD_LR) >= 2:
            return seed
    raise AssertionError("no seed found")


def test_sweep_end_to_end(ray_cluster, synth_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    samples = 3
    seed = _first_good_then_bad(samples)
    confirm = {"top": 1, "seeds": 2}
    path = _sweep_file(tmp_path, synth_data, "e2e", samples, seed, confirm=confirm)
    cfg = config.load_sweep(path)
    outcome = sweep.run_sweep(cfg, path)
    assert outcome.finished and not outcome.interrupted and not outcome.all_failed
    rows = outcome.rows
    out = capsys.readouterr().out
    search_rows = [r for r in rows if r["phase"] == "search"]

    # trials ran with different sampled values; the bad-lr ones were stopped early by ASHA
    assert len(search_rows) == samples
    assert len({r["params"]["loss.label_smoothing"] for r in search_rows}) == samples
    statuses = {r["status"] for r in search_rows}
    assert "early_stopped" in statuses and "completed" in statuses
    for r in search_rows:
        if float(r["params"]["optim.lr"]) == BAD_LR and r is not search_rows[0]:
            assert r["status"] == "early_stopped" and r["epochs_run"] == 1
    assert "zeroshot_top1" in out and "early_stopped" in out and "best.yaml" in out
    _the_console_said_each_event(out, search_rows, tmp_path / "runs" / "e2e")

    # MLflow: one parent, one nested child per trial, dotted params, per-epoch metrics
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    searched = [c for c in children if c.data.tags["phase"] == "search"]
    confirmed = [c for c in children if c.data.tags["phase"] == "confirm"]
    assert len(parents) == 1 and len(searched) == samples
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs)
    parent = parents[0]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "loss.label_smoothing" in child.data.params
        assert child.data.params["global_batch_size"] == "64"
        history = client.get_metric_history(child.info.run_id, "zeroshot_top1")
        epochs = 2 if child.data.tags["status"] == "completed" else 1
        assert [m.step for m in history] == list(range(1, epochs + 1))
        # each epoch's training loop as the engine timed it: train_s x samples_per_s = the
        # epoch's 640 samples (10 steps of 64 on one worker)
        loop = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "train_s")}
        rate = client.get_metric_history(child.info.run_id, "samples_per_s")
        assert sorted(loop) == list(range(1, epochs + 1))
        assert all(loop[m.step] * m.value == pytest.approx(640) for m in rate)

    # the Optuna study, opened from the parent's tag as optuna-dashboard would
    study = optuna.load_study(study_name="e2e", storage=parent.data.tags["optuna_storage"])
    states = sorted(t.state.name for t in study.get_trials())
    expected = sorted(
        {"completed": "COMPLETE", "early_stopped": "PRUNED"}[r["status"]] for r in search_rows
    )
    assert states == expected

    # confirm: the baseline and the best completed config, each at 2 new seeds, all epochs
    best_search = max(
        (r for r in search_rows if r["status"] == "completed"), key=lambda r: r["value"]
    )
    groups = {}
    for c in confirmed:
        assert c.data.tags["status"] == "completed"
        groups.setdefault(c.data.tags["confirm_of"], []).append(c)
    assert set(groups) == {"baseline", best_search["trial_id"]}
    for label, runs_of in groups.items():
        assert sorted(int(c.data.tags["seed"]) for c in runs_of) == [1, 2], label
        assert sorted(int(c.data.params["seed"]) for c in runs_of) == [1, 2], label
    values = {
        label: {int(c.data.tags["seed"]): c.data.metrics["zeroshot_top1"] for c in runs_of}
        for label, runs_of in groups.items()
    }
    rival = best_search["trial_id"]
    parent = client.get_run(parent.info.run_id)
    tags, metrics = parent.data.tags, parent.data.metrics
    # the verdict's numbers are scipy's paired t-test on the per-seed differences (one rival)
    diffs = [values[rival][s] - values["baseline"][s] for s in (1, 2)]
    assert metrics["verdict_gain"] == pytest.approx(statistics.fmean(diffs))
    assert metrics["verdict_df"] == 1 and metrics["seeds.baseline"] == 2
    # top-1 on the 384 eval images moves in steps of whole images: the variance holds h^2/6,
    # h the step the four values share (the documented correction), then scipy's t
    images = len(synth.CLASSES) * 8
    counts = [round(v * images) for g in values.values() for v in g.values()]
    assert [c / images for c in counts] == pytest.approx(
        [v for g in values.values() for v in g.values()]
    )
    h = math.gcd(*(c - counts[0] for c in counts)) / images
    se = math.sqrt((statistics.variance(diffs) + h**2 / 6) / 2)
    t = statistics.fmean(diffs) / se
    assert metrics["verdict_p"] == pytest.approx(tdist.sf(t, 1), rel=1e-6)
    verdict = tags["verdict"]
    assert verdict in ("beats_baseline", "no_gain", "not_decided")
    assert (verdict == "beats_baseline") == (metrics["verdict_gain_lower"] > 0)
    chosen = rival if verdict == "beats_baseline" else "baseline"
    assert tags["best_trial"] == chosen and tags["verdict_config"] == rival
    assert metrics["baseline_top1_mean"] == pytest.approx(
        statistics.fmean(values["baseline"].values())
    )
    assert metrics["best_top1_mean"] == pytest.approx(statistics.fmean(values[chosen].values()))
    assert metrics["best_zeroshot_top1"] == pytest.approx(metrics["best_top1_mean"])
    assert tags["mlflow.note.content"].startswith(f"verdict: {verdict}")
    assert tags["mlflow.note.content"] in out  # the console's last lines tell the same story
    best_tagged = {c.info.run_id for c in children if c.data.tags.get("best") == "true"}
    assert best_tagged == {c.info.run_id for c in groups[chosen]}
    # where the sweep's time went (bench/demo_share.py): each trial's loops within its run
    timed = tracking.sweep_time(cfg.tracking.uri, "e2e")
    assert len(timed.trials) == len(children) and timed.run_id == parent.info.run_id
    assert all(0 < t.train_s < t.wall_s for t in timed.trials)
    assert sum(t.wall_s for t in timed.trials) < timed.wall_s

    # the parent's plots, drawn by the sweep's writer as trials ended and after the verdict
    drawn = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {
        "learning_curves.png",
        "optimization_history.png",
        "parallel_coordinates.png",
        "slice.png",
        "seed_paired.png",
        "optuna.html",
    } <= drawn, drawn
    spread = client.download_artifacts(parent.info.run_id, "plots/seed_paired.png", str(tmp_path))
    assert Path(spread).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and `smotune report` rebuilds them with the summary and the verdict, from MLflow alone
    report = ["report", "--experiment", "e2e", "--tracking-uri", cfg.tracking.uri, "--out", "rep"]
    assert cli.main(report) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert tags["mlflow.note.content"] in html.unescape(page)
    assert all(r["trial_id"] in page for r in search_rows)

    # smotune ensemble, run as a user would: the completed search trials' mean probabilities;
    # each member scores what its trial logged at its last epoch; the result is on the parent
    completed = [c for c in searched if c.data.tags["status"] == "completed"]
    ens = subprocess.run(
        [sys.executable, "-m", "smotune", "ensemble", "--experiment", "e2e"]
        + ["--top", str(len(completed)), "--tracking-uri", cfg.tracking.uri],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ens.returncode == 0, ens.stderr
    table = {ln.split()[1]: ln.split() for ln in ens.stdout.splitlines() if ln[:1].isdigit()}
    assert len(table) == len(completed)
    for c in completed:
        last = max(client.get_metric_history(c.info.run_id, "zeroshot_top1"), key=lambda m: m.step)
        assert last.step == 2
        assert float(table[c.data.tags["trial_id"]][-2]) == pytest.approx(last.value, abs=5e-5)
    lines = [ln.split() for ln in ens.stdout.splitlines()]
    (ens_row,) = [ln for ln in lines if ln[:2] == ["-", "ensemble"]]
    ensembled = client.get_run(parent.info.run_id).data
    assert ensembled.metrics["ensemble_k"] == len(completed)
    assert ensembled.metrics["ensemble_top1"] == pytest.approx(float(ens_row[-2]), abs=5e-5)
    assert ensembled.metrics["ensemble_top5"] == pytest.approx(float(ens_row[-1]), abs=5e-5)

    # smotune best writes the confirmed winner; smotune train runs it unchanged
    assert (
        cli.main(
            [
                "best",
                "--experiment",
                "e2e",
                "--tracking-uri",
                cfg.tracking.uri,
                "--out",
                "exported.yaml",
            ]
        )
        == 0
    )
    best = config.load_train(tmp_path / "exported.yaml")
    best_child = client.get_run(parent.data.tags["best_run_id"])
    assert best_child.data.tags["confirm_of"] == chosen
    header = (tmp_path / "exported.yaml").read_text().split("\n")
    assert header[0].startswith(f"# sweep 'e2e', verdict: {verdict}")
    flat = config.flatten(best.model_dump(mode="json"))
    for name, value in best_child.data.params.items():
        if name in flat:
            assert str(flat[name]) == value, name
    said = capsys.readouterr().out  # what report and best printed: best leads with the mean
    mean = statistics.fmean(values[chosen].values())
    assert f"wrote exported.yaml: {chosen}, verdict {verdict}; confirmed over 2 new seeds: " in said
    assert f"zeroshot_top1 {mean:.4f} ± " in said
    assert (
        cli.main(["train", "exported.yaml", "--epochs", "1", "--storage", str(tmp_path / "full")])
        == 0
    )
    # a line per epoch and nothing else: where the logs went, the run, its epoch, the end
    trained = capsys.readouterr().out.splitlines()
    assert len(trained) == 4, trained
    assert trained[0].startswith(f"ray's logs: {tmp_path / 'full'}/exported-")
    assert Path(trained[0].split()[2].rstrip(";")).read_text()  # Ray's logs of the run
    assert trained[2].startswith("epoch 1/1  zeroshot_top1 0.")
    assert "train_loss" in trained[2] and "samples_per_s" in trained[2]
    assert trained[3].startswith("final: epoch=1")


def _the_console_said_each_event(out: str, search_rows: list[dict], experiment: Path) -> None:
    """A line per trial event (start, epoch, ASHA's stop with its cutoff, end) and progress
    lines, Ray's own logs in the file the first line names, and nothing of Tune's tables."""
    lines = out.splitlines()
    assert lines[0].startswith(f"ray's logs: {experiment / 'smotune-ray.log'}; its workers' ")
    assert "ray.tune" in (experiment / "smotune-ray.log").read_text()
    for r in search_rows:
        who = f"[search] trial {r['trial_id']}"
        assert any(ln.startswith(f"{who} started  loss.label_smoothing=") for ln in lines)
        assert any(ln.startswith(f"{who} epoch 1/2  zeroshot_top1 0.") for ln in lines)
        end = {
            "completed": f"{who} completed 2/2 epochs: zeroshot_top1 0.",
            "early_stopped": f"{who} stopped by ASHA at epoch 1/2: zeroshot_top1 0.",
        }[r["status"]]
        (said,) = [ln for ln in lines if ln.startswith(end)]
        assert ("below the epoch-1 rung's cutoff 0." in said) == (r["status"] == "early_stopped")
    started = [ln for ln in lines if ln.startswith("[confirm] trial ") and " started  seed " in ln]
    assert sorted(ln.split("  ")[1] for ln in started) == sorted(
        f"seed {s} of {g}" for g in ("baseline", _best(search_rows)) for s in (1, 2)
    )
    assert "progress: 3/3 trials done, 0 running, " in out
    assert "progress: 4/4 trials done, 0 running, " in out
    assert "Trial status" not in out and "Trial name" not in out and "PreemptionWatcher" not in out
    assert "Configuration for experiment" not in out and "View detailed results" not in out
    assert len(lines) < 60, out


def _best(search_rows: list[dict]) -> str:
    done = [r for r in search_rows if r["status"] == "completed"]
    return max(done, key=lambda r: r["value"])["trial_id"]


def _children(uri: str, name: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return [
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"
    ]


def _training_on(log: Path) -> bool:
    """The driver's console said: a trial ended, then a good-lr trial started and reported
    its first epoch (of two)."""
    lines = log.read_text().splitlines()
    ends = [i for i, ln in enumerate(lines) if re.search(r" (completed|stopped by ASHA) ", ln)]
    for ln in lines[ends[0] + 1 :] if ends else []:
        if " started  " in ln and f"optim.lr={GOOD_LR:g}" in ln:
            who = ln.split(" started  ")[0]
            return any(x.startswith(f"{who} epoch 1/2 ") for x in lines)
    return False


def _started_after_end(log: Path) -> bool:
    """The driver's console said: a trial ended, then a good-lr trial started (its worker
    group is starting: no epoch yet)."""
    lines = log.read_text().splitlines()
    ends = [i for i, ln in enumerate(lines) if re.search(r" (completed|stopped by ASHA) ", ln)]
    return any(
        " started  " in ln and f"optim.lr={GOOD_LR:g}" in ln
        for ln in (lines[ends[0] + 1 :] if ends else [])
    )


def _wait(proc, log: Path, until, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not until():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"{what}: not within {timeout} s\n{log.read_text()[-3000:]}"
        time.sleep(1)


def _tune_trials(experiment: Path) -> dict[str, tuple[str, dict]]:
    """Tune's saved view of an experiment's trials: id -> (status, last result), from the
    newest experiment state (what ``Tuner.restore`` reads)."""
    newest = max(experiment.glob("experiment_state-*.json"))
    state = json.loads(newest.read_text())
    return {
        json.loads(t)["trial_id"]: (json.loads(t)["status"], json.loads(m)["last_result"])
        for t, m in state["trial_data"]
    }


def test_killed_then_interrupted_sweep_resumes_to_the_end(ray_cluster, synth_data, tmp_path):
    """One sweep, four drivers: SIGKILLed twice in the gap between what the study and MLflow
    hold and Tune's last save (a trial's epoch logged after it; a trial ended after it),
    resumed and Ctrl-C'd as a trial's worker group starts (exit 130, best.yaml marked
    partial, nothing left RUNNING, no placement group left on the cluster), resumed again to
    the end: no epoch logged twice, no ended trial run again, nothing trained twice."""
    samples = 4
    order = [GOOD_LR, GOOD_LR, BAD_LR, GOOD_LR]  # the third is stopped at its first epoch
    seed = next(s for s in range(200) if _drawn_lrs(s, samples) == order)
    path = _sweep_file(tmp_path, synth_data, "resume", samples, seed)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tmp_path / "runs" / "resume"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        # Tune saves its experiment state when a driver starts and when it stops gracefully,
        # not in between: each SIGKILL below lands in the gap after Tune's last save
        "TUNE_GLOBAL_CHECKPOINT_S": "3600",
    }
    smotune = [sys.executable, "-m", "smotune", "sweep", str(path)]
    study_url = f"sqlite:///{experiment}/optuna.db"

    def start(log: Path, *extra: str) -> subprocess.Popen:
        out = log.open("w")
        return subprocess.Popen(
            [*smotune, *extra], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def first_trial() -> optuna.trial.FrozenTrial:
        return optuna.load_study(study_name="resume", storage=study_url).get_trials()[0]

    # Each driver is stopped on its own console lines (at once; MLflow's may lag).
    first_log = tmp_path / "first.log"
    first = start(first_log)
    _wait(first, first_log, lambda: " epoch 1/2 " in first_log.read_text(), "the first epoch")
    first.send_signal(signal.SIGKILL)
    first.wait()
    one = first_trial().user_attrs["tune_trial_id"]
    client = mlflow.MlflowClient(tracking_uri=uri)

    def history(trial_id: str) -> list[int]:
        (kid,) = [k for k in _children(uri, "resume") if k.data.tags["trial_id"] == trial_id]
        return [m.step for m in client.get_metric_history(kid.info.run_id, "zeroshot_top1")]

    # the gap: MLflow (via the journal, synced here) holds epoch 1, Tune's state does not
    assert cli.main(["sync", str(experiment)]) == 0
    assert history(one) == [1]
    assert _tune_trials(experiment)[one][1].get("epoch") is None

    second_log = tmp_path / "second.log"
    second = start(second_log, "--resume")  # the first trial resumes from its epoch-1 checkpoint
    _wait(second, second_log, lambda: _training_on(second_log), "the second trial")
    second.send_signal(signal.SIGKILL)
    second.wait()
    # the gap: the study holds the first trial COMPLETE, Tune's state still PENDING
    assert first_trial().state == optuna.trial.TrialState.COMPLETE
    assert _tune_trials(experiment)[one][0] in ("PENDING", "RUNNING")

    # Ctrl-C at the worst moment: as a trial's worker group starts (its start line, no epoch)
    third_log = tmp_path / "third.log"
    third = start(third_log, "--resume")
    _wait(third, third_log, lambda: _started_after_end(third_log), "the resumed sweep's last trial")
    third.send_signal(signal.SIGINT)
    assert third.wait(timeout=300) == 130, third_log.read_text()[-3000:]
    left: list = []
    for _ in range(20):  # the sweep removed what its job held; Ray's own removal is async
        table = ray_cluster.util.placement_group_table().values()
        left = [g for g in table if g["state"] != "REMOVED"]
        if not left:
            break
        time.sleep(0.5)
    assert not left, left
    said = third_log.read_text()
    assert f"resume: 1 trial ended after Tune's last save ({one}): " in said, said[-3000:]
    assert not [ln for ln in said.splitlines() if one in ln and " started " in ln], said[-3000:]
    best = (tmp_path / "best.yaml").read_text()
    assert best.startswith("# from a partial sweep (interrupted)"), best[:300]
    assert "--resume" in best.splitlines()[0]
    assert not [k for k in _children(uri, "resume") if k.info.status == "RUNNING"]

    again = subprocess.run(
        [*smotune, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # the configs an uninterrupted sweep draws, each run once: the second trial, suggested
    # after Tune's last save before the second kill, is told FAIL (its run ends killed, at
    # the epoch it reached) and its config run again as the next trial
    study = optuna.load_study(study_name="resume", storage=study_url)
    ran = [t for t in study.get_trials() if t.state != optuna.trial.TrialState.FAIL]
    lost = {t.user_attrs["tune_trial_id"] for t in study.get_trials()} - {
        t.user_attrs["tune_trial_id"] for t in ran
    }
    assert [t.params for t in ran] == _drawn(seed, samples)
    kids = _children(uri, "resume")
    assert len({k.data.tags["trial_id"] for k in kids}) == len(kids) == samples + len(lost)
    assert {t.user_attrs["tune_trial_id"] for t in ran} | lost == {
        k.data.tags["trial_id"] for k in kids
    }
    for k in kids:  # no epoch logged twice, none missing: one value per epoch
        killed = k.data.tags["trial_id"] in lost
        assert (k.data.tags["status"], k.info.status) == (
            ("killed", "KILLED") if killed else (k.data.tags["status"], "FINISHED")
        )
        assert killed or k.data.tags["status"] in ("completed", "early_stopped")
        epochs = 2 if k.data.tags["status"] == "completed" else 1
        for key in ("zeroshot_top1", "epoch", "train_loss"):
            steps = [m.step for m in client.get_metric_history(k.info.run_id, key)]
            assert steps == list(range(1, epochs + 1)), (k.data.tags["trial_id"], key, steps)
    assert history(one) == [1, 2]
    parents = {k.data.tags["mlflow.parentRunId"] for k in kids}
    assert len(parents) == 1
    assert not (tmp_path / "best.yaml").read_text().startswith("# from a partial sweep")

    # a fresh run of a finished sweep is refused, and so is a --resume of an edited sweep file
    assert subprocess.run([*smotune], cwd=tmp_path, env=env, capture_output=True).returncode == 2
    edited = yaml.safe_load(path.read_text())
    edited["search"]["samples"] = samples + 2
    path.write_text(yaml.safe_dump(edited))
    refused = subprocess.run(
        [*smotune, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    changed = f"search.samples ({samples} -> {samples + 2})"
    assert len(lines) == 1 and changed in lines[0], refused.stderr


def test_a_race_runs_in_rounds_and_resumes_where_it_was(ray_cluster, synth_data, tmp_path):
    """The baseline learns nothing (lr 1e-9); the searched config learns. The race runs seeds 1
    and 2 of both, then one seed a round while the rival is ahead and not yet claimed; then the
    transfer phase re-runs both at 3 epochs. One sweep, three drivers: Ctrl-C'd in round one
    (exit 130), SIGKILLed in round two, resumed to its end; every (config, seed) ran once, the
    verdict is the race replayed from the values MLflow holds, and the transfer phase's numbers
    are scipy's on its runs' values; best.yaml is the config chosen at 3 epochs."""
    from smotune import confirm

    seed = next(s for s in range(100) if _drawn(s, 1)[0]["optim.lr"] == GOOD_LR)
    race = {"top": 1, "seeds": 2, "max_seeds": 3}
    transfer = {"overrides": {"epochs": 3}, "top": 1, "seeds": 2}
    path = _sweep_file(
        tmp_path, synth_data, "race", 2, seed, include_default=True, confirm=race, transfer=transfer
    )
    data = yaml.safe_load(path.read_text())
    data["train"]["optim"]["lr"] = BAD_LR  # the baseline
    path.write_text(yaml.safe_dump(data))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
    }
    smotune = [sys.executable, "-m", "smotune", "sweep", str(path)]

    def start(log: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*smotune, *extra],
            cwd=tmp_path,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def said(log: Path, pattern: str) -> bool:
        return any(re.search(pattern, ln) for ln in log.read_text().splitlines())

    first_log = tmp_path / "first.log"
    first = start(first_log)
    # round one: a confirm run ended, the next one is training its first epoch
    _wait(first, first_log, lambda: said(first_log, r"^\[confirm\] trial \S+ completed "), "a run")
    _wait(
        first,
        first_log,
        lambda: len(re.findall(r"\[confirm\] .* epoch 1/2 ", first_log.read_text())) >= 2,
        "the next run",
    )
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=300) == 130, first_log.read_text()[-3000:]

    def round_two_training() -> bool:  # round one's own lines (its runs may train in this
        # driver too) come before its race line, so only the lines after it count
        _, race_line, after = second_log.read_text().partition("[confirm] after 2 seeds, ")
        return bool(race_line and re.search(r"^\[confirm\] trial \S+ epoch 1/2 ", after, re.M))

    second_log = tmp_path / "second.log"
    second = start(second_log, "--resume")
    _wait(second, second_log, round_two_training, "round two training")
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert said(second_log, r"^\[confirm\] after 2 seeds, .*; next: seed 3 of the baseline and "), (
        second_log.read_text()[-3000:]
    )

    third = subprocess.run(
        [*smotune, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    kids = _children(uri, "race")
    confirmed = [k for k in kids if k.data.tags["phase"] == "confirm"]
    ran = sorted((k.data.tags["confirm_of"], int(k.data.tags["seed"])) for k in confirmed)
    assert len(ran) == len(set(ran)), ran  # each (config, seed) once
    assert {k.data.tags["status"] for k in confirmed} == {"completed"}
    assert all(k.info.status == "FINISHED" for k in kids)
    for k in confirmed:  # nothing was trained twice: one value per epoch
        steps = [m.step for m in client.get_metric_history(k.info.run_id, "zeroshot_top1")]
        assert steps == [1, 2], (k.data.tags, steps)
    (parent,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("race").experiment_id])
        if r.data.tags.get("kind") == "sweep"
    ]
    n = int(parent.data.metrics["seeds.baseline"])
    assert n >= 3  # round two ran before the kill, so the race went past two seeds
    rival = parent.data.tags["verdict_config"]
    assert ran == sorted((g, s) for g in ("baseline", rival) for s in range(1, n + 1))
    # the verdict is the race replayed from what MLflow holds, and what the console said
    groups = [confirm.Group("baseline", {}), confirm.Group(rival, {})]
    for k in confirmed:
        group = groups[0] if k.data.tags["confirm_of"] == "baseline" else groups[1]
        group.values[int(k.data.tags["seed"])] = k.data.metrics["zeroshot_top1"]
    sweep_cfg = config.load_sweep(path)
    found = confirm.judge(groups, confirm.Plan.of(sweep_cfg))
    assert found.verdict == parent.data.tags["verdict"] and found.base_runs == n
    assert found.decided and found.comparisons[0].gain > 0  # the learning config is ahead
    assert parent.data.metrics["verdict_gain"] == pytest.approx(found.comparisons[0].gain)
    assert found.words("zeroshot_top1") in third.stdout
    assert "[confirm] after 2 seeds, " in third.stdout  # the race replayed, round by round

    # then the transfer phase: the baseline and the rival at 3 epochs, at seeds after the race's
    moved = [k for k in kids if k.data.tags["phase"] == "transfer"]
    high: dict[str, dict[int, float]] = {}
    for k in moved:
        assert k.data.params["epochs"] == "3" and k.data.tags["status"] == "completed"
        steps = [m.step for m in client.get_metric_history(k.info.run_id, "zeroshot_top1")]
        assert steps == [1, 2, 3]
        high.setdefault(k.data.tags["confirm_of"], {})[int(k.data.tags["seed"])] = k.data.metrics[
            "zeroshot_top1"
        ]
    assert {g: sorted(v) for g, v in high.items()} == {"baseline": [4, 5], rival: [4, 5]}
    m, tags = parent.data.metrics, parent.data.tags
    lo = [statistics.fmean(g.values.values()) for g in groups]
    hi = [statistics.fmean(high[g.label].values()) for g in groups]
    for g, a, b in zip(groups, lo, hi, strict=True):
        assert m[f"transfer/search/mean/{g.label}"] == pytest.approx(a)
        assert m[f"transfer/transfer/mean/{g.label}"] == pytest.approx(b)
    assert m["transfer/pairs"] == 1 and m["transfer/concordant"] == (
        (lo[1] - lo[0]) * (hi[1] - hi[0]) > 0
    )
    if hi[0] != hi[1]:
        assert m["transfer/tau"] == pytest.approx(kendalltau(lo, hi).statistic)
    # the verdict there: scipy's t on the per-seed differences, the variance with h^2/6
    d = [high[rival][s] - high["baseline"][s] for s in (4, 5)]
    every = np.array([[[high[g][s] for s in (4, 5)] for g in ("baseline", rival)]])
    h = stats.resolution(every)[0]
    se = math.sqrt((statistics.variance(d) + h**2 / 6) / 2)
    gain = statistics.fmean(d)
    assert m["transfer/gain"] == pytest.approx(gain)
    assert m["transfer/p"] == pytest.approx(tdist.sf(gain / se, 1), rel=1e-6)
    verdict = tags["transfer_verdict"]
    assert (verdict == "beats_baseline") == (gain - tdist.isf(0.05, 1) * se > 0)
    chosen = rival if verdict == "beats_baseline" else "baseline"
    best_run = client.get_run(tags["best_run_id"])
    assert tags["best_trial"] == chosen and best_run.data.tags["phase"] == "transfer"
    assert tags["mlflow.note.content"].startswith(
        "at the transfer fidelity (epochs 3 (search 2)): "
    )
    assert tags["mlflow.note.content"] in third.stdout and "transfer: Kendall tau " in third.stdout
    written = (tmp_path / "best.yaml").read_text()
    assert not written.startswith("# from a partial sweep")
    assert "# confirmed at the transfer fidelity: epochs 3 (search 2)" in written
    assert config.load_train(tmp_path / "best.yaml").epochs == 3


def test_a_round_killed_before_tunes_first_save_is_run_anew(ray_cluster, synth_data, tmp_path):
    """A driver killed between making a round's Tuner and Tune's first save (CI met it: the
    race test's kill 0.06 s after) leaves the Tuner's state and no experiment state. The resumed
    round runs its preset points as a new Tuner; restored, Ray started it over without its
    param_space and the points failed (KeyError 'loss.label_smoothing')."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from smotune import tune_state, tuners

    path = _sweep_file(tmp_path, synth_data, "window", 1, 0, epochs=1)
    cfg = config.load_sweep(path)
    runs = [{"loss.label_smoothing": 0.1, "optim.lr": GOOD_LR, "seed": 7}]

    def round_tuner(resume: bool):  # as confirm_run.run_round makes it
        search = tune_state.KeptVariantGenerator(points_to_evaluate=runs, max_concurrent=1)
        return tuners.make(
            cfg, "window-confirm", search, FIFOScheduler(), 1, [], resume, False,
            param_space=dict.fromkeys(runs[0]),
        )  # fmt: skip

    round_tuner(resume=False)  # what the killed driver left: tuner.pkl, no Tune save
    experiment = tuners.experiment_path(cfg, "window-confirm")
    assert tune.Tuner.can_restore(experiment) and not tune_state.saved(experiment)
    grid = round_tuner(resume=True).fit()
    assert tuners.ended(grid, len(runs), cfg.train.epochs)
    (result,) = grid
    assert result.error is None and result.config == runs[0]
    assert result.metrics["epoch"] == 1 and math.isfinite(result.metrics["zeroshot_top1"])
    assert tune_state.saved(experiment)  # a second resume restores it, ended: the same trial
    (again,) = round_tuner(resume=True).fit()
    assert again.metrics["trial_id"] == result.metrics["trial_id"] and again.metrics["done"]


# What a sweep's driver does up to its search Tuner's first step, then it dies: its Tuner
# made (tuner.pkl), the MLflow callback set up (the parent run created), no Tune save yet.
_DIES_BEFORE_TUNES_FIRST_SAVE = """
import os, sys
from pathlib import Path
from smotune import config, optuna_study, search, sweep, tracking, tuners
path = sys.argv[1]
cfg = config.load_sweep(path)
sweep._check_start(cfg, path, resume=False)
url, storage = optuna_study.prepare_study(cfg, False, path)
callback = tracking.MlflowSweepCallback(cfg, Path(path).read_text())
scheduler = search.make_scheduler(cfg, url)
searcher = search.make_searcher(cfg, storage)
tuners.make(cfg, cfg.name, searcher, scheduler, 1, [callback], False, False)
callback.setup()
assert callback.flush()
os._exit(9)
"""


def test_a_search_killed_before_tunes_first_save_resumes_under_its_parent_run(
    ray_cluster, synth_data, tmp_path
):
    """The search's Tuner made anew on --resume (nothing ran in it) logs under the parent run
    the killed driver created, not a second one (that one would stay RUNNING, empty)."""
    from ray import tune

    from smotune import tune_state

    path = _sweep_file(tmp_path, synth_data, "early", 1, 0, epochs=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    died = subprocess.run(
        [sys.executable, "-c", _DIES_BEFORE_TUNES_FIRST_SAVE, str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert died.returncode == 9, died.stderr[-3000:]
    experiment = str(tmp_path / "runs" / "early")
    assert tune.Tuner.can_restore(experiment) and not tune_state.saved(experiment)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("early")
    (before,) = client.search_runs([exp.experiment_id])  # the parent, RUNNING
    assert before.data.tags["kind"] == "sweep" and before.info.status == "RUNNING"

    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    resumed = subprocess.run(
        [sys.executable, "-m", "smotune", "sweep", str(path), "--resume"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    (child,) = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert parent.info.run_id == before.info.run_id and parent.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["status"] == "completed" and child.info.status == "FINISHED"
