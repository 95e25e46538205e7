"""Applying one journal operation to MLflow: the only place the sweep's runs are written.

Each operation is safe to apply again after a failure or a killed process:
runs are found before they are created (a parent by its ``journal_key`` tag,
a child by its ``trial_id`` tag under the parent), params, tags, artifacts and
statuses are set to the same values again, and an epoch's metrics are skipped
when the run's ``epoch`` history already holds that step (MLflow would record
them twice).

Operations (JSON fields besides ``t``, ``n``, ``op``):

- ``start_parent``: ``run`` (key), ``experiment``, ``run_name``, ``tags``,
  ``params``, ``sweep_text``, ``experiment_tags`` (the saved view of
  :mod:`smotune.tracking.ui`); creates the parent or sets it RUNNING again;
- ``start_trial``: ``run``, ``parent``, ``experiment``, ``trial_id``, ``run_name``,
  ``tags``, ``params``, ``train_yaml``; creates the child or sets it RUNNING again;
- ``log``: ``run``, ``step``, ``time`` (ms), ``metrics``, ``tags``;
- ``end_run``: ``run``, ``tags``, ``status`` (an MLflow run status);
- ``end_sweep``: ``parent``, ``experiment``, ``phase``, ``metric``, ``mode``, ``time``;
  ends children still RUNNING as KILLED, marks the best (search phase: with its
  description on the parent until a verdict replaces it), ends the parent FINISHED;
- ``verdict``: ``parent``, ``verdict``, ``metrics``, ``best_label``, ``time`` (see
  :mod:`smotune.tracking.verdict`);
- ``transfer``: ``parent``, ``time``, ``verdict``, ``words``, ``method``, ``chosen``,
  ``compared``, ``fidelity``, ``winners``, ``discordant``, ``metrics`` (see
  :mod:`smotune.tracking.transfer`);
- ``rungs``: ``parent``, ``time``; the rung check computed from what MLflow holds,
  logged on the parent (see :mod:`smotune.tracking.rungs`);
- ``plots``: ``parent``; not applied here: the writer hands it to the drawer
  (:mod:`smotune.tracking.drawer`), which draws the sweep's plots from what MLflow
  holds and logs the changed ones under the parent's ``plots/`` (only the newest of
  several waiting; see :mod:`smotune.tracking.history`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from smotune.errors import UserError
from smotune.tracking.check import deleted, redact
from smotune.tracking.journal import Journal
from smotune.tracking.names import (
    BEST_ARTIFACT,
    BEST_PREFIX,
    COMPLETED,
    KILLED,
    KILLED_REASON,
    PHASE_SEARCH,
    SWEEP_ARTIFACT,
    TAG_BEST,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_DESCRIPTION,
    TAG_JOURNAL_KEY,
    TAG_PARENT,
    TAG_PHASE,
    TAG_REASON,
    TAG_STATUS,
    TAG_TRIAL_ID,
    TAG_VERDICT,
    TRAIN_ARTIFACT,
)
from smotune.tracking.read import artifact_text, best_run, children
from smotune.tracking.ui import best_words, ending

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's limit of params or tags per log_batch call
_PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "BAD_REQUEST",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
}


class Unresolved(Exception):
    """An op names a run whose creating op never got applied (it was refused)."""


def permanent(err: BaseException) -> bool:
    """Whether the store rejected a write for good (a retry gets the same answer)."""
    if isinstance(err, Unresolved | UserError):
        return True  # UserError: the experiment was deleted
    return isinstance(err, MlflowException) and err.error_code in _PERMANENT


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


def _missing(err: MlflowException) -> bool:
    return err.error_code == "RESOURCE_DOES_NOT_EXIST"


class Store:
    """The MLflow side of one journal: a client, the experiment ids, the epochs logged per run."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.uri = journal.uri
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        self._experiments: dict[str, str] = {}
        self._epochs: dict[str, int] = {}  # run id -> highest `epoch` step in MLflow

    def forget(self) -> None:
        """After a failed write nothing cached may be trusted (it may have half-happened)."""
        self._epochs.clear()

    def apply(self, op: dict[str, Any]) -> None:
        getattr(self, f"_{op['op']}")(op)

    # -- helpers

    def run_id(self, key: str) -> str:
        run_id = self.journal.run_id(key)
        if run_id is None:
            raise Unresolved(f"run {key} was never created (its first write was refused)")
        return run_id

    def experiment(self, name: str) -> str:
        """The id of the active experiment ``name``, created if missing."""
        if name not in self._experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                self._experiments[name] = self.client.create_experiment(name)
            elif exp.lifecycle_stage == "deleted":
                raise deleted(redact(self.uri), exp, "tracking.uri")
            else:
                self._experiments[name] = exp.experiment_id
        return self._experiments[name]

    def _get(self, run_id: str | None) -> Any | None:
        if run_id is None:
            return None
        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            if _missing(err):
                return None
            raise

    def _logged_epoch(self, run_id: str) -> int:
        if run_id not in self._epochs:
            history = self.client.get_metric_history(run_id, "epoch")
            self._epochs[run_id] = int(max((m.step for m in history), default=0))
        return self._epochs[run_id]

    def _fill(self, run_id: str, tags: dict[str, str], params: dict[str, str], art: tuple) -> None:
        """Tags, params and one text artifact: the same values again on a retry or a resume."""
        for chunk in _chunks([RunTag(k, v) for k, v in tags.items()]):
            self.client.log_batch(run_id, tags=chunk)
        for chunk in _chunks([Param(k, v) for k, v in params.items()]):
            self.client.log_batch(run_id, params=chunk)
        self.client.log_text(run_id, *art)

    # -- the operations

    def _start_parent(self, op: dict[str, Any]) -> None:
        key = op["run"]
        exp_id = self.experiment(op["experiment"])
        run = self._get(self.journal.run_id(key))
        if run is not None and run.info.experiment_id != exp_id:
            run = None
        if run is None and self.journal.run_id(key) is not None:
            log.warning("parent run %s is not in %s; starting a new one", key, redact(self.uri))
        if run is None:
            found = self.client.search_runs(
                [exp_id], f"tags.{TAG_JOURNAL_KEY} = '{key}'", max_results=1
            )
            run = found[0] if found else None
        tags = {**op["tags"], TAG_JOURNAL_KEY: key}
        if run is None:
            run = self.client.create_run(exp_id, run_name=op["run_name"], tags=tags)
        elif run.info.status != "RUNNING":
            self.client.update_run(run.info.run_id, status="RUNNING")
        run_id = run.info.run_id
        if self.journal.run_id(key) != run_id:
            self.journal.resolve(key, run_id)
        self._fill(run_id, tags, op["params"], (op["sweep_text"], SWEEP_ARTIFACT))
        for name, value in op.get("experiment_tags", {}).items():
            self.client.set_experiment_tag(exp_id, name, value)

    def _start_trial(self, op: dict[str, Any]) -> None:
        key = op["run"]
        parent_id = self.run_id(op["parent"])
        exp_id = self.experiment(op["experiment"])
        run = self._get(self.journal.run_id(key))
        if run is not None and run.data.tags.get(TAG_PARENT) != parent_id:
            run = None  # the parent was started anew: so is the child
        if run is None:
            query = f"tags.{TAG_TRIAL_ID} = '{op['trial_id']}'"
            found = children(self.client, exp_id, parent_id, query)
            run = found[0] if found else None
        tags = {**op["tags"], TAG_PARENT: parent_id}
        if run is None:
            name = op.get("run_name", op["trial_id"])  # a journal of an older smotune: the id
            run = self.client.create_run(exp_id, run_name=name, tags=tags)
            self._epochs[run.info.run_id] = 0
        else:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            if TAG_REASON in run.data.tags:
                self.client.delete_tag(run.info.run_id, TAG_REASON)
        run_id = run.info.run_id
        if self.journal.run_id(key) != run_id:
            self.journal.resolve(key, run_id)
        self._fill(run_id, tags, op["params"], (op["train_yaml"], TRAIN_ARTIFACT))

    def _log(self, op: dict[str, Any]) -> None:
        run_id = self.run_id(op["run"])
        step, metrics = op["step"], op["metrics"]
        if "epoch" in metrics and step <= self._logged_epoch(run_id):
            metrics = {}  # already in MLflow: a replay, or a resumed trial re-reporting an epoch
        if metrics or op["tags"]:
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, v, op["time"], step) for k, v in metrics.items()],
                tags=[RunTag(k, v) for k, v in op["tags"].items()],
            )
        if "epoch" in metrics:
            self._epochs[run_id] = step

    def _end_run(self, op: dict[str, Any]) -> None:
        run_id = self.run_id(op["run"])
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
        self.client.set_terminated(run_id, status=op["status"])

    def _end_sweep(self, op: dict[str, Any]) -> None:
        parent_id = self.run_id(op["parent"])
        exp_id = self.experiment(op["experiment"])
        for run in children(self.client, exp_id, parent_id, "attributes.status = 'RUNNING'"):
            epochs_run = int(run.data.metrics.get("epoch", 0))
            epochs = int(run.data.params.get("epochs", 0))
            words = ending(KILLED, KILLED_REASON, epochs_run, epochs, op["metric"], None)
            tags = [RunTag(TAG_STATUS, KILLED), RunTag(TAG_REASON, KILLED_REASON)]
            tags.append(RunTag(TAG_DESCRIPTION, words))
            self.client.log_batch(run.info.run_id, tags=tags)
            self.client.set_terminated(run.info.run_id, status="KILLED")
        if op["phase"] == PHASE_SEARCH:
            self._mark_best(exp_id, parent_id, op["metric"], op["mode"], op["time"])
        self.client.set_terminated(parent_id, status="FINISHED")

    def _mark_best(self, exp_id: str, parent_id: str, metric: str, mode: str, now: int) -> None:
        """Tag the best completed child and copy its final metrics and config to the parent."""
        client = self.client
        best = best_run(client, exp_id, parent_id, metric, mode)
        best_id = best.info.run_id if best is not None else None
        if TAG_VERDICT not in client.get_run(parent_id).data.tags:  # the verdict says more
            searched = children(client, exp_id, parent_id, f"tags.{TAG_PHASE} = '{PHASE_SEARCH}'")
            done = [r for r in searched if r.data.tags.get(TAG_STATUS) == COMPLETED]
            client.set_tag(parent_id, TAG_DESCRIPTION, best_words(best, metric, done, searched))
        for run in children(client, exp_id, parent_id, f"tags.{TAG_BEST} = 'true'"):
            if run.info.run_id != best_id:
                client.delete_tag(run.info.run_id, TAG_BEST)
        if best is None:
            client.set_tag(parent_id, TAG_BEST_TRIAL, "none")
            return
        client.log_batch(
            parent_id,
            metrics=[Metric(BEST_PREFIX + k, v, now, 0) for k, v in best.data.metrics.items()],
            tags=[
                RunTag(TAG_BEST_TRIAL, best.data.tags[TAG_TRIAL_ID]),
                RunTag(TAG_BEST_RUN_ID, best_id),
            ],
        )
        client.log_text(parent_id, artifact_text(client, best_id, TRAIN_ARTIFACT), BEST_ARTIFACT)
        client.set_tag(best_id, TAG_BEST, "true")

    def _verdict(self, op: dict[str, Any]) -> None:
        from smotune.tracking.verdict import write_verdict

        write_verdict(self.client, self.run_id(op["parent"]), op, op["time"])

    def _transfer(self, op: dict[str, Any]) -> None:
        from smotune.tracking.transfer import write_transfer

        write_transfer(self.client, self.run_id(op["parent"]), op, op["time"])

    def _rungs(self, op: dict[str, Any]) -> None:
        from smotune.tracking.rungs import write_rungs  # matplotlib: only where it is needed

        write_rungs(self.client, self.run_id(op["parent"]), op["time"])
