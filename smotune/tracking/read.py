"""Reading a sweep back from MLflow: its best trial, one summary row per trial.

Also the queries the callback shares: a parent's child runs, the best completed
child, a run's artifact as text, a summary row.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from smotune.config import SweepConfig
from smotune.errors import UserError
from smotune.tracking.check import check_exists, env, redact
from smotune.tracking.names import (
    COMPLETED,
    KIND_SWEEP,
    TAG_KIND,
    TAG_PARENT,
    TAG_REASON,
    TAG_STATUS,
    TAG_TRIAL_ID,
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


def best_run(client: mlflow.MlflowClient, experiment_id: str, parent_id: str) -> Any | None:
    """The completed child of ``parent_id`` with the highest final zeroshot_top1."""
    done = children(client, experiment_id, parent_id, f"tags.{TAG_STATUS} = '{COMPLETED}'")
    scored = [r for r in done if not math.isnan(r.data.metrics.get("zeroshot_top1", math.nan))]
    if not scored:
        return None
    return max(scored, key=lambda r: (r.data.metrics["zeroshot_top1"], -r.info.start_time))


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


def best_trial_run(uri: str, experiment: str) -> TrialRecord:
    """The best completed trial of the latest sweep (parent run by start time) in ``experiment``.

    Best = status ``completed`` and the highest final ``zeroshot_top1``. Only the
    latest sweep is searched: an earlier sweep of the same name may have run a
    different space or train config, so its trials are not comparable.
    """
    client, experiment_id, parent = _latest_sweep(uri, experiment)
    best = best_run(client, experiment_id, parent.info.run_id)
    if best is None:
        raise UserError(
            f"MLflow {redact(uri)}",
            "experiment",
            f"the latest sweep of {experiment!r} (run {parent.info.run_id}) has no completed trial",
            "resume or rerun the sweep until a trial runs all its epochs",
        )
    return _record(client, best)


def _param_value(text: str) -> Any:
    """A param's text back as the int, float or bool it was logged from (else the text)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def sweep_summary(sweep: SweepConfig) -> list[dict[str, Any]]:
    """One row per trial of the sweep's latest parent run, read from MLflow.

    Row keys: ``trial_id``, ``run_id``, ``params`` (searched path -> value),
    ``epochs_run``, ``zeroshot_top1`` (final; None if never reported),
    ``status`` and ``reason``.
    """
    client, experiment_id, parent = _latest_sweep(sweep.tracking.uri, sweep.experiment)
    searched_paths = [p for p, dist in sweep.space.items() if dist.kind != "fixed"]
    rows = []
    for run in children(client, experiment_id, parent.info.run_id):
        tags, params = run.data.tags, run.data.params
        searched = {p: _param_value(params[p]) for p in searched_paths if p in params}
        rows.append(
            {
                "trial_id": tags.get(TAG_TRIAL_ID, run.info.run_name),
                "run_id": run.info.run_id,
                "params": searched,
                "epochs_run": int(run.data.metrics.get("epoch", 0)),
                "zeroshot_top1": run.data.metrics.get("zeroshot_top1"),
                "status": tags.get(TAG_STATUS, ""),
                "reason": tags.get(TAG_REASON, ""),
            }
        )
    return rows
