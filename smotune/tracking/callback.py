"""The Tune callback that writes a sweep to MLflow from the driver, through the journal.

One parent run per sweep, one nested child run per trial, each child ending
with an honest ``status`` tag. The callback's hooks never call MLflow: each
turns its event into journal operations (:mod:`smotune.tracking.journal`) and
returns, so a tracking store that is down, slow or refusing never stalls
Tune's driver (FIELD-NOTES: a blocked callback leaves the trial driver stuck
in ``Queue.put`` for good). The writer thread applies the operations; at the
end of the experiment the callback waits for it a bounded time
(``SMOTUNE_TRACKING_DRAIN_S``, default 60 s) and prints one ``tracking:`` line.
Credentials come only from MLflow's own environment variables
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` / ``PASSWORD``).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray.tune import Callback

from smotune.config import SweepConfig, absolute_paths, dump_train
from smotune.confirm import BASELINE
from smotune.console import stop_reason
from smotune.space import default_point, trial_config
from smotune.tracking.check import error_line, redact
from smotune.tracking.journal import (
    Journal,
    drain_timeout,
    new_parent_key,
    sweep_journal_path,
    trial_key,
)
from smotune.tracking.names import (
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    KILLED,
    KILLED_REASON,
    KIND_SWEEP,
    KIND_TRIAL,
    METRIC_DAMAGED_SHARDS,
    NAN_REASON,
    PHASE_SEARCH,
    RESULT_CHECKPOINT,
    RUN_STATUS,
    RUNNING,
    TAG_BASELINE,
    TAG_CHECKPOINT,
    TAG_CONFIRM_OF,
    TAG_DATA_DAMAGE,
    TAG_DESCRIPTION,
    TAG_KIND,
    TAG_PHASE,
    TAG_REASON,
    TAG_SEED,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TRIAL_ID,
)
from smotune.tracking.params import result_metrics, sweep_params, train_params
from smotune.tracking.ui import ending, parent_name, trial_name, view_tag
from smotune.tracking.writer import open_journal

MAX_TAG = 8000  # MLflow's longest tag value


def _shards(damage: str) -> set[str]:
    """The shards a ``data_damage`` text names (each line ``<shard>: <what was met>``)."""
    return {line.split(": ", 1)[0] for line in damage.splitlines() if line}


def _trial_error(trial: Any) -> str:
    path = trial.error_file
    if path and os.path.exists(path):
        return error_line(Path(path).read_text())
    return error_line(trial.get_error() or "")


class MlflowSweepCallback(Callback):
    """Logs a sweep to MLflow from the Tune driver: one parent run, one nested child per trial.

    Its state (the parent's journal key and run id; per trial: run id, searched
    values, last epoch, final metrics, status) is saved by Tune with the
    experiment, and the journal keeps every key's run id, so ``Tuner.restore``
    re-attaches to the same runs. A trial missing from both is still found by
    its ``trial_id`` tag under the parent, so a restore never duplicates a run.

    ``phase`` tags every child: ``search`` trials, or ``confirm`` and ``transfer``
    re-runs (also tagged ``seed`` and ``confirm_of``, the label ``confirm_labels``
    gives a trial's config; a transfer run's train config is ``self.sweep.train``
    at the transfer fidelity), which attach to the search's ``parent_run_id`` (a run id,
    or the parent's journal key while the store has not created it yet).
    ``journal`` overrides where the journal lives (default: beside the sweep's
    Tune state, see :func:`~smotune.tracking.journal.sweep_journal_path`).
    ``scheduler`` (the search's, if it has ``stop_rung``) gives an early-stopped
    trial's ``reason`` tag the rung and cutoff that stopped it, worded as the
    console words it. ``resumed``: a resumed sweep's callback that Tune did not restore
    (its Tuner was made anew: the driver died before Tune's first save) takes up the
    journal and the parent run it holds, as a restored one does.
    """

    def __init__(
        self,
        sweep: SweepConfig,
        sweep_file_text: str,
        parent_tags: dict[str, str] | None = None,
        phase: str = PHASE_SEARCH,
        parent_run_id: str | None = None,
        confirm_labels: Callable[[dict[str, Any]], str] | None = None,
        journal: str | Path | None = None,
        scheduler: Any = None,
        resumed: bool = False,
    ):
        self.sweep = sweep
        self.scheduler = scheduler
        self.sweep_file_text = sweep_file_text
        self.parent_tags = parent_tags or {}
        self.phase = phase
        self.confirm_labels = confirm_labels
        self.journal_path = Path(journal) if journal else sweep_journal_path(sweep)
        self._parent_id: str | None = parent_run_id
        self._parent_key: str | None = None
        self._restored = parent_run_id is not None or resumed
        self._trials: dict[str, dict[str, Any]] = {}
        self._journal: Journal | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_journal"] = None
        return state

    def get_state(self) -> dict[str, Any]:
        trials = copy.deepcopy(self._trials)
        for trial_id, rec in trials.items():
            rec["run_id"] = self._run_id(self._trial_key(trial_id)) or rec.get("run_id")
        return {
            "parent_run_id": self.parent_run_id,
            "parent_key": self._parent_key,
            "trials": trials,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent_id = state["parent_run_id"]
        self._parent_key = state.get("parent_key")
        self._trials = copy.deepcopy(state["trials"])
        self._restored = True
        self._journal = None

    @property
    def parent_run_id(self) -> str | None:
        """The parent's MLflow run id, once the writer has created or found it."""
        return self._run_id(self._parent_key) or self._parent_id

    def _run_id(self, key: str | None) -> str | None:
        return self._journal.run_id(key) if self._journal is not None else None

    def _trial_key(self, trial_id: str) -> str:
        return trial_key(self._parent_key, self.phase, trial_id)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until all is written (at most ``timeout`` s; ``SMOTUNE_TRACKING_DRAIN_S``)."""
        return self._attach().drain(drain_timeout() if timeout is None else timeout)

    # -- parent run

    def _attach(self) -> Journal:
        """The journal, open, with the parent run's start in it (once per process)."""
        if self._journal is not None:
            return self._journal
        uri = self.sweep.tracking.uri
        journal = open_journal(self.journal_path, uri, fresh=not self._restored)
        if self._parent_key is None and self._parent_id is not None:
            self._parent_key = journal.key_for(self._parent_id)  # a key, or a known run id
        elif self._parent_key is None and self._restored:  # a resumed search's own parent
            self._parent_key = journal.snapshot().parent_key
        if self._parent_key is None:
            self._parent_key = new_parent_key()
        if self._parent_id is not None and self._parent_id != self._parent_key:
            journal.hint(self._parent_key, self._parent_id)
        self._journal = journal
        snap = journal.snapshot()
        for trial_id, rec in self._trials.items():
            if rec.get("run_id"):
                journal.hint(self._trial_key(trial_id), rec["run_id"])
            # Tune's saved state may predate what the journal holds (a killed driver): the
            # journal's epochs and ending win, so nothing is logged twice or ended again
            epoch, ended = snap.logged(self._trial_key(trial_id))
            rec["last_epoch"] = max(rec.get("last_epoch", 0), epoch)
            if ended is not None and rec.get("open"):
                status = ended.get(TAG_STATUS, COMPLETED)
                rec.update(status=status, reason=ended.get(TAG_REASON, ""), open=False)
        journal.append(
            "start_parent",
            run=self._parent_key,
            experiment=self.sweep.experiment,
            run_name=parent_name(self.sweep),
            tags={TAG_KIND: KIND_SWEEP, TAG_SWEEP: self.sweep.name, **self.parent_tags},
            params=sweep_params(self.sweep),
            sweep_text=self.sweep_file_text.replace(uri, redact(uri)),
            experiment_tags=dict([view_tag(self.sweep, int(time.time() * 1000))]),
        )
        return journal

    def setup(self, **info: Any) -> None:
        self._attach()

    # -- child runs

    def _start(self, trial: Any) -> dict[str, Any]:
        """Start the trial's child run (created, or its existing run set RUNNING again)."""
        journal = self._attach()
        old = self._trials.get(trial.trial_id, {})
        # what the trial trains (trial.trial_run_config): local data paths absolute from the
        # driver's directory, where the sweep's paths were checked and its trainable's
        # base_dir was taken, so train.yaml and best.yaml run the same from anywhere
        cfg = absolute_paths(trial_config(self.sweep, trial.config))
        tags = {
            TAG_KIND: KIND_TRIAL,
            TAG_TRIAL_ID: trial.trial_id,
            TAG_STATUS: RUNNING,
            TAG_PHASE: self.phase,
        }
        config, numbers = dict(trial.config), self._search_numbers(journal)
        if self.phase != PHASE_SEARCH:  # a config re-run at a seed (confirm, transfer)
            tags[TAG_SEED] = str(cfg.seed)
            tags[TAG_CONFIRM_OF] = label = self.confirm_labels(config)
            baseline, number = label == BASELINE, numbers.get(label)
        else:
            point = default_point(self.sweep)
            baseline = self.sweep.search.include_default and all(
                config.get(p) == v for p, v in point.items()
            )
            number = numbers.get(trial.trial_id, len(numbers))
            label = None
        if baseline:
            tags[TAG_BASELINE] = "true"
        journal.append(
            "start_trial",
            run=self._trial_key(trial.trial_id),
            parent=self._parent_key,
            experiment=self.sweep.experiment,
            trial_id=trial.trial_id,
            run_name=trial_name(self.sweep, self.phase, config, number, baseline, cfg.seed, label),
            tags=tags,
            params=train_params(cfg),
            train_yaml=dump_train(cfg),
        )
        logged, _ = journal.snapshot().logged(self._trial_key(trial.trial_id))
        rec = {
            "run_id": old.get("run_id"),
            "params": dict(trial.config),
            "epochs": cfg.epochs,
            "last_epoch": max(old.get("last_epoch", 0), logged),
            "metrics": old.get("metrics", {}),
            "checkpoint": old.get("checkpoint", ""),
            "status": RUNNING,
            "reason": "",
            "open": True,
        }
        self._trials[trial.trial_id] = rec
        return rec

    def _search_numbers(self, journal: Journal) -> dict[str, int]:
        """Search trial id -> its number (start order from 0, as the plots number them), from
        the journal's search trials under this parent (a resumed sweep's included)."""
        numbers: dict[str, int] = {}
        for op in journal.snapshot().ops:
            if (
                op["op"] == "start_trial"
                and op["parent"] == self._parent_key
                and op["tags"].get(TAG_PHASE, PHASE_SEARCH) == PHASE_SEARCH
            ):
                numbers.setdefault(op["trial_id"], len(numbers))
        return numbers

    def _rec(self, trial: Any) -> dict[str, Any]:
        return self._trials.get(trial.trial_id) or self._start(trial)

    def _end(self, trial_id: str, status: str, reason: str = "", tags: dict | None = None) -> None:
        rec = self._trials[trial_id]
        metric = self.sweep.search.metric
        value = rec["metrics"].get(metric)
        words = ending(status, reason, rec["last_epoch"], rec["epochs"], metric, value)
        tags = {**(tags or {}), TAG_STATUS: status, **({TAG_REASON: reason} if reason else {})}
        tags[TAG_DESCRIPTION] = words
        self._attach().append(
            "end_run", run=self._trial_key(trial_id), tags=tags, status=RUN_STATUS[status]
        )
        rec.update(status=status, reason=reason, open=False)

    def _refresh_plots(self) -> None:
        """Redraw the parent's plots once what is journalled so far is written (the writer's
        ``plots`` op: drawn off Tune's thread, only the newest of several waiting)."""
        self._attach().append("plots", parent=self._parent_key)

    def _checkpoint_tag(
        self, rec: dict[str, Any], trial: Any, result: dict | None = None
    ) -> dict[str, str]:
        """The trial's latest checkpoint (Ray Train's ``checkpoint_path`` or Tune's), if new."""
        path = (result or {}).get(RESULT_CHECKPOINT)
        if path is None and trial.checkpoint is not None:
            path = trial.checkpoint.path
        scheme = urlparse(self.sweep.storage.path).scheme
        if path and "://" not in path and scheme not in ("", "file"):
            path = f"{scheme}://{path}"  # Ray strips the scheme of remote storage paths
        if path and path != rec["checkpoint"]:
            rec["checkpoint"] = path
            return {TAG_CHECKPOINT: path}
        return {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        rec = self._rec(trial)
        metrics = result_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        tags = self._checkpoint_tag(rec, trial, result)
        loss = metrics.get("train_loss")
        if loss is not None and math.isnan(loss) and rec["status"] != FAILED:
            tags.update({TAG_STATUS: FAILED, TAG_REASON: NAN_REASON})
            rec.update(status=FAILED, reason=NAN_REASON)
        tags.update(self._damage(rec, result))
        new = "epoch" not in result or step > rec["last_epoch"]  # a resumed run may re-report
        if new or tags:
            self._attach().append(
                "log",
                run=self._trial_key(trial.trial_id),
                step=step,
                time=int(time.time() * 1000),
                metrics=metrics if new else {},
                tags=tags,
            )
        if "epoch" in result:
            rec["last_epoch"] = max(rec["last_epoch"], step)
        rec["metrics"].update(metrics)

    def _damage(self, rec: dict[str, Any], result: dict) -> dict[str, str]:
        """The trial's ``data_damage`` tag when its damaged shards changed; the parent's count
        of the sweep's damaged shards journalled when it grew."""
        text = result.get(TAG_DATA_DAMAGE)
        if not isinstance(text, str) or text == rec.get("damage"):
            return {}
        rec["damage"] = text
        journal = self._attach()
        before = self._sweep_damage(journal)
        after = before | _shards(text)
        if len(after) > len(before):
            journal.append(
                "log",
                run=self._parent_key,
                step=0,
                time=int(time.time() * 1000),
                metrics={METRIC_DAMAGED_SHARDS: float(len(after))},
                tags={},
            )
        return {TAG_DATA_DAMAGE: text[:MAX_TAG]}

    def _sweep_damage(self, journal: Journal) -> set[str]:
        """The shards the sweep's trials (every phase, a resumed sweep's too) found damaged,
        as journalled on their runs."""
        ops = journal.snapshot().ops
        parent = self._parent_key
        mine = {o["run"] for o in ops if o["op"] == "start_trial" and o["parent"] == parent}
        found: set[str] = set()
        for o in ops:
            if o["op"] == "log" and o["run"] in mine and TAG_DATA_DAMAGE in o["tags"]:
                found |= _shards(o["tags"][TAG_DATA_DAMAGE])
        return found

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._rec(trial)
        tags = self._checkpoint_tag(rec, trial)
        if rec["status"] == FAILED:
            self._end(trial.trial_id, FAILED, rec["reason"], tags)
        elif rec["last_epoch"] >= rec["epochs"]:
            self._end(trial.trial_id, COMPLETED, tags=tags)
        else:
            self._end(trial.trial_id, EARLY_STOPPED, self._stop_reason(trial.trial_id), tags)
        self._refresh_plots()

    def _stop_reason(self, trial_id: str) -> str:
        """Why ASHA stopped the trial: its last epoch and value, and the rung's cutoff when the
        scheduler (``stop_rung``) knows it."""
        rec, search = self._trials[trial_id], self.sweep.search
        value = rec["metrics"].get(search.metric, math.nan)
        stop_rung = getattr(self.scheduler, "stop_rung", None)
        rung = stop_rung(trial_id) if stop_rung else None
        return stop_reason(
            rec["last_epoch"], rec["epochs"], search.metric, value, rung, search.mode
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._rec(trial)
        reason = rec["reason"] if rec["status"] == FAILED else _trial_error(trial)
        self._end(trial.trial_id, FAILED, reason)
        self._refresh_plots()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        journal = self._attach()
        tune_trials = {t.trial_id: t for t in trials}
        for trial_id, rec in self._trials.items():
            if not rec["open"]:
                continue
            trial = tune_trials.get(trial_id)
            if rec["status"] == FAILED:
                self._end(trial_id, FAILED, rec["reason"])
            elif trial is not None and trial.status == "ERROR":
                self._end(trial_id, FAILED, _trial_error(trial))
            else:
                self._end(trial_id, KILLED, KILLED_REASON)
        search = self.sweep.search
        journal.append(
            "end_sweep",
            parent=self._parent_key,
            experiment=self.sweep.experiment,
            phase=self.phase,
            metric=search.metric,
            mode=search.mode,
            time=int(time.time() * 1000),
        )
        self._refresh_plots()
        journal.drain(drain_timeout())
        print(journal.status_line(), flush=True)
