"""The Tuner of a sweep: Optuna searcher, ASHA scheduler, storage, resume, summary.

Where smotune is stricter than Ray's defaults (DESIGN.md, "Sweep semantics"):
- Optuna learns the truth: a trial ASHA stopped before its last epoch is told
  as PRUNED (its per-epoch ``zeroshot_top1`` already reported as intermediate
  values), a failed or NaN trial as FAIL, and only a trial that ran all its
  epochs as COMPLETE. Ray's ``OptunaSearch`` would tell every stopped trial
  COMPLETE with its low early score.
- Trial drivers ask for no CPU, only a ``trial_driver`` slot; the local Ray
  declares ``search.concurrent`` of them, so trials never starve their own
  Train workers on a small machine.
- ``--resume`` restores the Tuner (searcher state included) and the MLflow
  callback re-attaches to the same parent and child runs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from smotune import tracking, trial
from smotune.config import SweepConfig, absolute_paths
from smotune.errors import UserError
from smotune.space import apply, default_point, fixed_values, optuna_space


class TruthfulOptunaSearch(OptunaSearch):
    """Tune's Optuna searcher, telling Optuna how each trial really ended.

    Per-epoch values are reported as intermediate values (step = epoch); a
    trial that stopped before ``epochs`` is PRUNED, a failed or NaN one FAIL,
    and only a trial that ran every epoch COMPLETE with its final value.
    """

    def __init__(self, *args: Any, epochs: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epochs = epochs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if trial_id in self._completed_trials or value is None or math.isnan(value):
            return
        self._ot_trials[trial_id].report(value, int(result["epoch"]))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = (result or {}).get(self.metric)
        state = optuna.trial.TrialState.COMPLETE
        if error or value is None or math.isnan(value):
            state, value = optuna.trial.TrialState.FAIL, None
        elif int(result.get("epoch", 0)) < self.epochs:
            state, value = optuna.trial.TrialState.PRUNED, None
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)


def make_searcher(sweep: SweepConfig) -> TruthfulOptunaSearch:
    """Optuna (TPE, seeded; constant liar when trials run in parallel) behind Tune's interface."""
    s = sweep.search
    if s.algo == "tpe":
        sampler = optuna.samplers.TPESampler(
            seed=s.seed,
            n_startup_trials=max(2, min(10, s.samples // 3)),
            constant_liar=s.concurrent > 1,
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    metric = sweep.schedule.asha.metric if sweep.schedule.asha else "zeroshot_top1"
    return TruthfulOptunaSearch(
        space=optuna_space(sweep),
        points_to_evaluate=[default_point(sweep)] if s.include_default else None,
        metric=metric,
        mode="max",
        sampler=sampler,
        epochs=sweep.train.epochs,
    )


def make_scheduler(sweep: SweepConfig):
    asha = sweep.schedule.asha
    if asha is None:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        metric=asha.metric,
        mode="max",
        max_t=sweep.train.epochs,
        grace_period=min(asha.grace, sweep.train.epochs),
        reduction_factor=asha.reduction,
    )


def experiment_path(sweep: SweepConfig) -> str:
    base = trial.storage_uri(sweep.storage.path)
    return f"{base.rstrip('/')}/{sweep.name}"


def _trainable(sweep: SweepConfig):
    base = apply(absolute_paths(sweep.train), fixed_values(sweep), where="space")
    fn = tune.with_parameters(
        trial.trial_fn,
        base=base.model_dump(mode="json"),
        storage=f"{experiment_path(sweep)}/train",
    )
    return tune.with_resources(fn, trial.TRIAL_RESOURCES)


def run_sweep(sweep: SweepConfig, sweep_file: str | Path, resume: bool = False) -> list[dict]:
    """Run (or resume) a sweep; print the summary table; return its rows."""
    storage = sweep.storage.path
    if os.environ.get("RAY_ADDRESS") and "://" not in storage and not os.path.isabs(storage):
        raise UserError(
            str(sweep_file),
            "storage.path",
            f"relative path {storage!r} with RAY_ADDRESS set: on a cluster it lands in the "
            "job's temporary working dir",
            "use a URI (s3://, gs://, file:///shared/...) or an absolute path every node reaches",
        )
    tracking.check_tracking(sweep.tracking.uri, experiment=sweep.experiment)
    if not optuna_space(sweep):
        raise UserError(str(sweep_file), "space", "has nothing to search", "add a distribution")
    path = experiment_path(sweep)
    restorable = tune.Tuner.can_restore(path)
    if resume and not restorable:
        raise UserError(
            str(sweep_file),
            "storage.path",
            f"no interrupted sweep to resume at {path}",
            "run without --resume to start it",
        )
    if not resume and restorable:
        raise UserError(
            str(sweep_file),
            "name",
            f"a sweep named {sweep.name!r} already exists at {path}",
            "add --resume to continue it, or change name or storage.path",
        )
    resources = trial.connect(trial_drivers=sweep.search.concurrent)
    trial.check_fits(sweep.train, resources)

    if resume:
        # the MLflow callback comes back from the experiment state, re-attached to its runs
        tuner = tune.Tuner.restore(path, trainable=_trainable(sweep), resume_errored=False)
    else:
        callback = tracking.MlflowSweepCallback(sweep, Path(sweep_file).read_text())
        tuner = tune.Tuner(
            _trainable(sweep),
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(sweep),
                scheduler=make_scheduler(sweep),
                num_samples=sweep.search.samples,
                max_concurrent_trials=sweep.search.concurrent,
                time_budget_s=sweep.search.time_budget,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=sweep.name,
                storage_path=trial.storage_uri(sweep.storage.path),
                callbacks=[callback, trial.ReleaseOrphanedWorkers()],
                verbose=1,
            ),
        )
    tuner.fit()
    rows = tracking.sweep_summary(sweep)
    print(format_summary(rows, sweep))
    print(_where_to_look(sweep))
    return rows


def _where_to_look(sweep: SweepConfig) -> str:
    from smotune.export import export_best

    uri = sweep.tracking.uri
    try:
        best = export_best(sweep.experiment, tracking_uri=uri, out="best.yaml")
    except UserError as err:
        best = f"no best.yaml: {err}"
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
    return f"{best}\ncompare the trials: {ui}  (experiment {sweep.experiment!r})"


def format_summary(rows: list[dict[str, Any]], sweep: SweepConfig) -> str:
    """The summary table: trial, searched values, epochs run, zero-shot top-1, status."""
    names = list(optuna_space(sweep))
    short = [n.rsplit(".", 1)[-1] for n in names]
    head = ["trial", *short, "epochs", "zeroshot_top1", "status"]
    table = [head]
    for r in rows:
        values = [f"{r['params'].get(n, float('nan')):.4g}" for n in names]
        top1 = r.get("zeroshot_top1")
        table.append(
            [
                r["trial_id"],
                *values,
                f"{r.get('epochs_run', 0)}/{sweep.train.epochs}",
                "-" if top1 is None else f"{top1:.4f}",
                r["status"],
            ]
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)
