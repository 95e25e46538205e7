"""Reading a sweep back from MLflow: its best trial, one summary row per trial.

Also the queries the writer shares: a parent's child runs, the best completed
child, a run's artifact as text. While the sweep's journal holds writes the
store has not taken yet (or the store cannot be reached), the sweep's parent
and summary are read from the journal instead.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from smotune.config import SweepConfig
from smotune.errors import UserError
from smotune.tracking.check import check_exists, env, redact
from smotune.tracking.journal import Snapshot, journal_path, snapshot, sweep_journal_path
from smotune.tracking.names import (
    COMPLETED,
    KIND_SWEEP,
    PHASE_SEARCH,
    TAG_BEST_RUN_ID,
    TAG_CHECKPOINT,
    TAG_CONFIRM_OF,
    TAG_KIND,
    TAG_PARENT,
    TAG_PHASE,
    TAG_REASON,
    TAG_SEED,
    TAG_STATUS,
    TAG_SWEEP_PATH,
    TAG_TRIAL_ID,
    TAG_VERDICT,
    TRAIN_ARTIFACT,
)

_QUIET_DOWNLOAD = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@dataclass(frozen=True)
class TrialRecord:
    """One trial's child run as read back from MLflow."""

    run_id: str
    trial_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    train_yaml: str


def _search(client: mlflow.MlflowClient, experiment_id: str, query: str, order: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], query, order_by=[order], max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def children(
    client: mlflow.MlflowClient, experiment_id: str, parent_id: str, extra: str = ""
) -> list[Any]:
    """The child runs of ``parent_id`` (and the ``extra`` filter), oldest first."""
    query = f"tags.`{TAG_PARENT}` = '{parent_id}'" + (f" and {extra}" if extra else "")
    return _search(client, experiment_id, query, "attributes.start_time ASC")


def artifact_text(client: mlflow.MlflowClient, run_id: str, path: str) -> str:
    """The text of the artifact ``path`` of run ``run_id``."""
    with tempfile.TemporaryDirectory() as tmp, env(_QUIET_DOWNLOAD):
        local = client.download_artifacts(run_id, path, tmp)
        return Path(local).read_text()


def ranked_runs(
    client: mlflow.MlflowClient, experiment_id: str, parent_id: str, metric: str, mode: str
) -> list[Any]:
    """The completed search children of ``parent_id``, best final ``metric`` first.

    Ties go to the earlier trial. Confirm runs are left out: they re-run the baseline
    and the top configs at new seeds, so counting them would rank one config several
    times and the unsearched baseline among the searched ones.
    """
    query = f"tags.{TAG_STATUS} = '{COMPLETED}' and tags.{TAG_PHASE} = '{PHASE_SEARCH}'"
    done = children(client, experiment_id, parent_id, query)
    scored = [r for r in done if not math.isnan(r.data.metrics.get(metric, math.nan))]
    sign = 1.0 if mode == "max" else -1.0
    return sorted(scored, key=lambda r: (-sign * r.data.metrics[metric], r.info.start_time))


def best_run(
    client: mlflow.MlflowClient, experiment_id: str, parent_id: str, metric: str, mode: str
) -> Any | None:
    """The completed search child of ``parent_id`` with the best final ``metric``."""
    ranked = ranked_runs(client, experiment_id, parent_id, metric, mode)
    return ranked[0] if ranked else None


@dataclass(frozen=True)
class RankedTrial:
    """A completed search trial of a sweep, as ranked by the sweep's objective."""

    run_id: str
    trial_id: str
    value: float  # its final ``search.metric``
    checkpoint: str  # its latest checkpoint (the ``checkpoint`` tag; "" if none was tagged)


@dataclass(frozen=True)
class Ranking:
    """The latest sweep of an experiment: its parent run, objective and ranked trials."""

    parent_id: str
    metric: str
    mode: str
    trials: list[RankedTrial]


def ranked_trials(uri: str, experiment: str) -> Ranking:
    """The completed search trials of the latest sweep of ``experiment``, best first
    (:func:`ranked_runs` by the parent's ``search.metric`` and ``search.mode``)."""
    client, experiment_id, parent = _latest_sweep(uri, experiment)
    metric, mode = _objective(parent)
    runs = ranked_runs(client, experiment_id, parent.info.run_id, metric, mode)
    trials = [
        RankedTrial(
            run_id=r.info.run_id,
            trial_id=r.data.tags.get(TAG_TRIAL_ID, r.info.run_name),
            value=r.data.metrics[metric],
            checkpoint=r.data.tags.get(TAG_CHECKPOINT, ""),
        )
        for r in runs
    ]
    return Ranking(parent.info.run_id, metric, mode, trials)


def _record(client: mlflow.MlflowClient, run: Any) -> TrialRecord:
    return TrialRecord(
        run_id=run.info.run_id,
        trial_id=run.data.tags.get(TAG_TRIAL_ID, run.info.run_name),
        status=run.data.tags.get(TAG_STATUS, ""),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        train_yaml=artifact_text(client, run.info.run_id, TRAIN_ARTIFACT),
    )


def _latest_sweep(uri: str, experiment: str) -> tuple[mlflow.MlflowClient, str, Any]:
    """Client, experiment id and latest parent run (by start time) of ``experiment``."""
    where = f"MLflow {redact(uri)}"
    check_exists(uri, where)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise UserError(
            where,
            "experiment",
            f"no experiment named {experiment!r}",
            "pass the sweep's name (or its tracking.experiment) as --experiment",
        )
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.{TAG_KIND} = '{KIND_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise UserError(
            where, "experiment", f"{experiment!r} holds no sweep run", "run the sweep first"
        )
    return client, exp.experiment_id, parents[0]


OBJECTIVE = "search.metric"  # best_trial_run's info: the sweep's objective


def best_trial_run(uri: str, experiment: str) -> tuple[TrialRecord, dict[str, Any]]:
    """The best trial of the latest sweep (parent run by start time) in ``experiment``.

    If the sweep confirmed its winners over seeds, best is the run the confirm
    phase chose (a run of the config with the best mean; the parent's tag
    ``best_run_id``); otherwise the completed search trial with the best final
    ``search.metric``. Only the latest sweep is searched: an earlier sweep of the
    same name may have run a different space or train config. Returns the record
    and the parent's tags and metrics (``verdict``, ``best_top1_mean``, ...), with the
    sweep's ``search.metric`` under ``OBJECTIVE``.
    """
    client, experiment_id, parent = _latest_sweep(uri, experiment)
    info = {**parent.data.tags, **parent.data.metrics, OBJECTIVE: _objective(parent)[0]}
    if TAG_VERDICT in parent.data.tags and TAG_BEST_RUN_ID in parent.data.tags:
        return _record(client, client.get_run(parent.data.tags[TAG_BEST_RUN_ID])), info
    metric, mode = _objective(parent)
    best = best_run(client, experiment_id, parent.info.run_id, metric, mode)
    if best is None:
        raise UserError(
            f"MLflow {redact(uri)}",
            "experiment",
            f"the latest sweep of {experiment!r} (run {parent.info.run_id}) has no completed trial",
            "resume or rerun the sweep until a trial runs all its epochs",
        )
    return _record(client, best), info


@dataclass(frozen=True)
class TrialTime:
    """One trial's share of a sweep's time: its run's wall and its epochs' training loops."""

    trial_id: str
    phase: str
    status: str
    epochs: int
    train_s: float
    wall_s: float


@dataclass(frozen=True)
class SweepTime:
    """Where a finished sweep's wall time went, read from its MLflow runs.

    ``wall_s`` is the parent run's start to end (the whole ``smotune sweep``
    after its checks: Ray's start, both phases, the verdict); ``train_s`` sums
    every trial's per-epoch ``train_s`` (the training loop: the loader's start and
    the steps, nothing of eval, checkpoints or Ray). A resumed sweep's wall includes the
    time it was down.
    """

    run_id: str
    wall_s: float
    trials: tuple[TrialTime, ...]

    @property
    def train_s(self) -> float:
        return sum(t.train_s for t in self.trials)

    @property
    def train_share(self) -> float:
        return self.train_s / self.wall_s


def sweep_time(uri: str, experiment: str) -> SweepTime:
    """The time of the latest finished sweep of ``experiment``, phase by phase and trial by trial.

    An epoch logged twice (a resumed trial re-reporting it) counts once, as its last value.
    """
    client, experiment_id, parent = _latest_sweep(uri, experiment)
    if parent.info.end_time is None:
        raise UserError(
            f"MLflow {redact(uri)}",
            "experiment",
            f"the latest sweep of {experiment!r} (run {parent.info.run_id}) has not ended",
            "wait for the sweep to end (or resume it) and read it again",
        )
    trials = []
    for run in children(client, experiment_id, parent.info.run_id):
        history = client.get_metric_history(run.info.run_id, "train_s")
        epochs = {m.step: m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
        end = run.info.end_time or parent.info.end_time
        trials.append(
            TrialTime(
                trial_id=run.data.tags.get(TAG_TRIAL_ID, run.info.run_name),
                phase=run.data.tags.get(TAG_PHASE, PHASE_SEARCH),
                status=run.data.tags.get(TAG_STATUS, ""),
                epochs=len(epochs),
                train_s=sum(epochs.values()),
                wall_s=(end - run.info.start_time) / 1000,
            )
        )
    wall = (parent.info.end_time - parent.info.start_time) / 1000
    return SweepTime(parent.info.run_id, wall, tuple(trials))


def _objective(parent: Any) -> tuple[str, str]:
    """The sweep's ``search.metric`` and ``search.mode``, from its parent run's params."""
    params = parent.data.params
    return params.get("search.metric", "zeroshot_top1"), params.get("search.mode", "max")


def sweep_parent_id(uri: str, experiment: str, sweep_path: str) -> str:
    """The parent run of the sweep whose Tune state is at ``sweep_path`` (the latest such run).

    Read from the sweep's journal when it has one: the run id, or the parent's
    journal key while the store has not created the run yet (the callback and
    :func:`~smotune.tracking.verdict.log_verdict` take either).
    """
    snap = snapshot(journal_path(sweep_path))
    if snap is not None and snap.parent_key is not None:
        return snap.runs.get(snap.parent_key) or snap.parent_key
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.{TAG_KIND} = '{KIND_SWEEP}' and tags.{TAG_SWEEP_PATH} = '{sweep_path}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    return _latest_sweep(uri, experiment)[2].info.run_id  # a sweep started before the tag


def _param_value(text: str) -> Any:
    """A param's text back as the int, float or bool it was logged from (else the text)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def sweep_summary(sweep: SweepConfig, parent_id: str | None = None) -> list[dict[str, Any]]:
    """One row per trial of the sweep's parent run (default: the latest).

    Read from MLflow; from the sweep's journal instead while it holds unwritten
    writes or the store cannot be reached (then ``run_id`` is "" for a run not
    created yet). Row keys: ``trial_id``, ``run_id``, ``params`` (searched path
    -> value), ``epochs_run``, ``value`` (final ``search.metric``; None if never
    reported), ``status``, ``reason``, ``phase``, ``seed`` and ``confirm_of``
    (confirm runs).
    """
    snap = snapshot(sweep_journal_path(sweep))
    if snap is not None and snap.unwritten:
        return journal_summary(sweep, snap, parent_id)
    try:
        key = snap.key_for(parent_id) if snap is not None else None
        return _mlflow_summary(sweep, snap.runs.get(key, parent_id) if key else parent_id)
    except (MlflowException, OSError):
        if snap is None:
            raise
        return journal_summary(sweep, snap, parent_id)


def _searched(sweep: SweepConfig, params: dict[str, str]) -> dict[str, Any]:
    paths = [p for p, dist in sweep.space.items() if dist.searched]
    return {p: _param_value(params[p]) for p in paths if p in params}


def _mlflow_summary(sweep: SweepConfig, parent_id: str | None) -> list[dict[str, Any]]:
    client, experiment_id, parent = _latest_sweep(sweep.tracking.uri, sweep.experiment)
    parent_id = parent_id or parent.info.run_id
    rows = []
    for run in children(client, experiment_id, parent_id):
        tags = run.data.tags
        rows.append(
            {
                "trial_id": tags.get(TAG_TRIAL_ID, run.info.run_name),
                "run_id": run.info.run_id,
                "params": _searched(sweep, run.data.params),
                "epochs_run": int(run.data.metrics.get("epoch", 0)),
                "value": run.data.metrics.get(sweep.search.metric),
                "status": tags.get(TAG_STATUS, ""),
                "reason": tags.get(TAG_REASON, ""),
                "phase": tags.get(TAG_PHASE, PHASE_SEARCH),
                "seed": tags.get(TAG_SEED),
                "confirm_of": tags.get(TAG_CONFIRM_OF),
            }
        )
    return rows


def journal_summary(
    sweep: SweepConfig, snap: Snapshot, parent_id: str | None = None
) -> list[dict[str, Any]]:
    """The rows of :func:`sweep_summary` as the journal knows them (written to MLflow or not)."""
    parent_key = snap.key_for(parent_id) or snap.parent_key
    rows: dict[str, dict[str, Any]] = {}
    last_step: dict[str, int] = {}
    for op in snap.ops:
        row = rows.get(op.get("run", ""))
        if op["op"] == "start_trial" and op["parent"] == parent_key:
            tags = op["tags"]
            rows[op["run"]] = row = row or {"epochs_run": 0, "value": None}
            row.update(
                trial_id=op["trial_id"],
                run_id=snap.runs.get(op["run"], ""),
                params=_searched(sweep, op["params"]),
                status=tags[TAG_STATUS],
                reason="",
                phase=tags.get(TAG_PHASE, PHASE_SEARCH),
                seed=tags.get(TAG_SEED),
                confirm_of=tags.get(TAG_CONFIRM_OF),
            )
        elif row is not None and op["op"] in ("log", "end_run"):
            metrics = op.get("metrics", {})
            if "epoch" in metrics:
                row["epochs_run"] = max(row["epochs_run"], int(metrics["epoch"]))
            metric = sweep.search.metric
            if metric in metrics and op["step"] >= last_step.get(op["run"], -1):
                row["value"], last_step[op["run"]] = metrics[metric], op["step"]
            row["status"] = op["tags"].get(TAG_STATUS, row["status"])
            row["reason"] = op["tags"].get(TAG_REASON, row["reason"])
    return list(rows.values())
