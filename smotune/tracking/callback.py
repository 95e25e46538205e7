"""The Tune callback that writes a sweep to MLflow from the driver.

One parent run per sweep, one nested child run per trial, each child ending
with an honest ``status`` tag. Everything is written with ``MlflowClient`` and
explicit run ids; credentials come only from MLflow's own environment variables
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` / ``PASSWORD``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from ray.tune import Callback

from smotune.config import SweepConfig, dump_train
from smotune.tracking.check import deleted, error_line, redact
from smotune.tracking.names import (
    BEST_ARTIFACT,
    BEST_PREFIX,
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    KILLED,
    KILLED_REASON,
    KIND_SWEEP,
    KIND_TRIAL,
    NAN_REASON,
    PHASE_CONFIRM,
    PHASE_SEARCH,
    RESULT_CHECKPOINT,
    RUN_STATUS,
    RUNNING,
    SWEEP_ARTIFACT,
    TAG_BEST,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_CHECKPOINT,
    TAG_CONFIRM_OF,
    TAG_KIND,
    TAG_PARENT,
    TAG_PHASE,
    TAG_REASON,
    TAG_SEED,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    TRAIN_ARTIFACT,
)
from smotune.tracking.params import result_metrics, sweep_params, train_params, trial_train_config
from smotune.tracking.read import artifact_text, best_run, children

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's limit of params or tags per log_batch call


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


def _trial_error(trial: Any) -> str:
    path = trial.error_file
    if path and os.path.exists(path):
        return error_line(Path(path).read_text())
    return error_line(trial.get_error() or "")


def _experiment_id(client: mlflow.MlflowClient, name: str, uri: str) -> str:
    """The id of the active experiment ``name``, created if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name)
    if exp.lifecycle_stage == "deleted":
        raise deleted(redact(uri), exp, "tracking.uri")
    return exp.experiment_id


class MlflowSweepCallback(Callback):
    """Logs a sweep to MLflow from the Tune driver: one parent run, one nested child per trial.

    Its state (parent run id; per trial: run id, searched values, last epoch,
    final metrics, status) is saved by Tune with the experiment, so
    ``Tuner.restore`` re-attaches to the same runs. A trial missing from that
    state is still found by its ``trial_id`` tag under the parent, so a restore
    never duplicates a run.

    ``phase`` tags every child: ``search`` trials, or ``confirm`` re-runs (also
    tagged ``seed`` and ``confirm_of``, the label ``confirm_labels`` gives a
    trial's config), which attach to the search's ``parent_run_id``.
    """

    def __init__(
        self,
        sweep: SweepConfig,
        sweep_file_text: str,
        parent_tags: dict[str, str] | None = None,
        phase: str = PHASE_SEARCH,
        parent_run_id: str | None = None,
        confirm_labels: Callable[[dict[str, Any]], str] | None = None,
    ):
        self.sweep = sweep
        self.sweep_file_text = sweep_file_text
        self.parent_tags = parent_tags or {}
        self.phase = phase
        self.confirm_labels = confirm_labels
        self._parent_id: str | None = parent_run_id
        self._trials: dict[str, dict[str, Any]] = {}
        self._client: mlflow.MlflowClient | None = None
        self._experiment_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def get_state(self) -> dict[str, Any]:
        return {"parent_run_id": self._parent_id, "trials": copy.deepcopy(self._trials)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent_id = state["parent_run_id"]
        self._trials = copy.deepcopy(state["trials"])
        self._client = None

    @property
    def parent_run_id(self) -> str | None:
        return self._parent_id

    # -- parent run

    def _attach(self) -> mlflow.MlflowClient:
        """The client, with the experiment set and the parent run created or re-attached."""
        if self._client is not None:
            return self._client
        uri = self.sweep.tracking.uri
        client = mlflow.MlflowClient(tracking_uri=uri)
        self._experiment_id = _experiment_id(client, self.sweep.experiment, uri)
        if self._parent_id is not None:
            try:
                parent = client.get_run(self._parent_id)
            except MlflowException:
                parent = None
            if parent is not None and parent.info.experiment_id == self._experiment_id:
                client.update_run(self._parent_id, status="RUNNING")
                self._client = client
                return client
            log.warning(
                "parent run %s is not in %s; starting a new one", self._parent_id, redact(uri)
            )
            self._trials = {}
        run = client.create_run(
            self._experiment_id,
            run_name=f"{self.sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={TAG_KIND: KIND_SWEEP, TAG_SWEEP: self.sweep.name, **self.parent_tags},
        )
        self._parent_id = run.info.run_id
        for chunk in _chunks([Param(k, v) for k, v in sweep_params(self.sweep).items()]):
            client.log_batch(self._parent_id, params=chunk)
        sweep_text = self.sweep_file_text.replace(uri, redact(uri))
        client.log_text(self._parent_id, sweep_text, SWEEP_ARTIFACT)
        self._client = client
        return client

    def setup(self, **info: Any) -> None:
        self._attach()

    # -- child runs

    def _start(self, trial: Any) -> dict[str, Any]:
        """Create the trial's child run, or set its existing one RUNNING again."""
        client = self._attach()
        old = self._trials.get(trial.trial_id, {})
        cfg = trial_train_config(self.sweep, trial.config)
        run_id = old.get("run_id")
        if run_id is None:
            query = f"tags.{TAG_TRIAL_ID} = '{trial.trial_id}'"
            found = children(client, self._experiment_id, self._parent_id, query)
            run_id = found[0].info.run_id if found else None
        logged_epoch = 0
        if run_id is not None:
            history = client.get_metric_history(run_id, "epoch")
            logged_epoch = max((m.step for m in history), default=0)
            client.update_run(run_id, status="RUNNING")
            if TAG_REASON in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, TAG_REASON)
            client.set_tag(run_id, TAG_STATUS, RUNNING)
        else:
            tags = {
                TAG_PARENT: self._parent_id,
                TAG_KIND: KIND_TRIAL,
                TAG_TRIAL_ID: trial.trial_id,
                TAG_STATUS: RUNNING,
                TAG_PHASE: self.phase,
            }
            if self.phase == PHASE_CONFIRM:
                tags[TAG_SEED] = str(cfg.seed)
                tags[TAG_CONFIRM_OF] = self.confirm_labels(dict(trial.config))
            run_id = client.create_run(
                self._experiment_id, run_name=trial.trial_id, tags=tags
            ).info.run_id
            for chunk in _chunks([Param(k, v) for k, v in train_params(cfg).items()]):
                client.log_batch(run_id, params=chunk)
            client.log_text(run_id, dump_train(cfg), TRAIN_ARTIFACT)
        rec = {
            "run_id": run_id,
            "params": dict(trial.config),
            "epochs": cfg.epochs,
            "last_epoch": max(old.get("last_epoch", 0), logged_epoch),
            "metrics": old.get("metrics", {}),
            "checkpoint": old.get("checkpoint", ""),
            "status": RUNNING,
            "reason": "",
            "open": True,
        }
        self._trials[trial.trial_id] = rec
        return rec

    def _rec(self, trial: Any) -> dict[str, Any]:
        return self._trials.get(trial.trial_id) or self._start(trial)

    def _end(self, rec: dict[str, Any], status: str, reason: str = "") -> None:
        tags = [RunTag(TAG_STATUS, status)] + ([RunTag(TAG_REASON, reason)] if reason else [])
        client = self._attach()
        client.log_batch(rec["run_id"], tags=tags)
        client.set_terminated(rec["run_id"], status=RUN_STATUS[status])
        rec.update(status=status, reason=reason, open=False)

    def _checkpoint_tag(self, rec: dict[str, Any], trial: Any, result: dict | None = None) -> None:
        """The trial's latest checkpoint: Ray Train's (``checkpoint_path`` in results) or Tune's."""
        path = (result or {}).get(RESULT_CHECKPOINT)
        if path is None and trial.checkpoint is not None:
            path = trial.checkpoint.path
        scheme = urlparse(self.sweep.storage.path).scheme
        if path and "://" not in path and scheme not in ("", "file"):
            path = f"{scheme}://{path}"  # Ray strips the scheme of remote storage paths
        if path and path != rec["checkpoint"]:
            self._attach().set_tag(rec["run_id"], TAG_CHECKPOINT, path)
            rec["checkpoint"] = path

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        rec = self._rec(trial)
        client = self._attach()
        metrics = result_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        if "epoch" not in result or step > rec["last_epoch"]:  # a resumed run may re-report
            client.log_batch(
                rec["run_id"], metrics=[Metric(k, v, now, step) for k, v in metrics.items()]
            )
        if "epoch" in result:
            rec["last_epoch"] = max(rec["last_epoch"], step)
        rec["metrics"].update(metrics)
        self._checkpoint_tag(rec, trial, result)
        loss = metrics.get("train_loss")
        if loss is not None and math.isnan(loss) and rec["status"] != FAILED:
            client.log_batch(
                rec["run_id"], tags=[RunTag(TAG_STATUS, FAILED), RunTag(TAG_REASON, NAN_REASON)]
            )
            rec.update(status=FAILED, reason=NAN_REASON)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._rec(trial)
        self._checkpoint_tag(rec, trial)
        if rec["status"] == FAILED:
            self._end(rec, FAILED, rec["reason"])
        else:
            self._end(rec, COMPLETED if rec["last_epoch"] >= rec["epochs"] else EARLY_STOPPED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._rec(trial)
        self._end(rec, FAILED, rec["reason"] if rec["status"] == FAILED else _trial_error(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        client = self._attach()
        tune_trials = {t.trial_id: t for t in trials}
        for trial_id, rec in self._trials.items():
            if not rec["open"]:
                continue
            trial = tune_trials.get(trial_id)
            if rec["status"] == FAILED:
                self._end(rec, FAILED, rec["reason"])
            elif trial is not None and trial.status == "ERROR":
                self._end(rec, FAILED, _trial_error(trial))
            else:
                self._end(rec, KILLED, KILLED_REASON)
        for run in children(
            client, self._experiment_id, self._parent_id, "attributes.status = 'RUNNING'"
        ):
            tags = [RunTag(TAG_STATUS, KILLED), RunTag(TAG_REASON, KILLED_REASON)]
            client.log_batch(run.info.run_id, tags=tags)
            client.set_terminated(run.info.run_id, status="KILLED")
        if self.phase == PHASE_SEARCH:
            self._mark_best(client)
        client.set_terminated(self._parent_id, status="FINISHED")

    def _mark_best(self, client: mlflow.MlflowClient) -> None:
        """Tag the best completed child and copy its final metrics and config to the parent."""
        search = self.sweep.search
        best = best_run(client, self._experiment_id, self._parent_id, search.metric, search.mode)
        best_id = best.info.run_id if best is not None else None
        query = f"tags.{TAG_BEST} = 'true'"
        for run in children(client, self._experiment_id, self._parent_id, query):
            if run.info.run_id != best_id:
                client.delete_tag(run.info.run_id, TAG_BEST)
        if best is None:
            client.set_tag(self._parent_id, TAG_BEST_TRIAL, "none")
            return
        now = int(time.time() * 1000)
        client.log_batch(
            self._parent_id,
            metrics=[Metric(BEST_PREFIX + k, v, now, 0) for k, v in best.data.metrics.items()],
            tags=[
                RunTag(TAG_BEST_TRIAL, best.data.tags[TAG_TRIAL_ID]),
                RunTag(TAG_BEST_RUN_ID, best_id),
            ],
        )
        train_yaml = artifact_text(client, best_id, TRAIN_ARTIFACT)
        client.log_text(self._parent_id, train_yaml, BEST_ARTIFACT)
        client.set_tag(best_id, TAG_BEST, "true")
