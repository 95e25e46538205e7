"""The search: a searcher that tells the Optuna study the truth, an ASHA that resumes.

- :class:`TruthfulOptunaSearch` tells Optuna every epoch a trial reported
  (step = epoch) and how the trial ended: COMPLETE only when it ran every
  epoch, PRUNED when ASHA stopped it (its stopping epoch included: Tune hands
  that result only to ``on_trial_complete``), FAIL on an error or a NaN.
  It keeps a copy of its sampler in the study after every draw (a study
  system attribute), so a resumed sweep draws on from the last draw.
- :class:`ResumableASHA` rebuilds its rungs from the study after
  ``Tuner.restore`` (Tune does not save the scheduler, ray#30838), so a
  resumed sweep stops the trials an uninterrupted one would.

The study itself (its storage, its trials, a warm start) is :mod:`smotune.optuna_study`.
Both classes subclass Ray's and use their private attributes (``_ot_trials``,
``_ot_study``, ``_completed_trials``; ``_brackets``, ``_rungs``) and read Tune's
experiment state file (``tune_state.trial_ids``); Ray is pinned
to the minor version ``tests/test_search.py`` checks them on.
"""

from __future__ import annotations

import base64
import math
import pickle
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from smotune import tune_state
from smotune.config import SweepConfig
from smotune.optuna_study import (
    ATTR_SAMPLER,
    ATTR_TUNE_TRIAL,
    TIME_ATTR,
    existing_trials,
    open_storage,
)
from smotune.space import default_point, optuna_space


class TruthfulOptunaSearch(tune_state.KeepsTuneState, OptunaSearch):
    """Tune's Optuna searcher, telling Optuna how each trial really ended.

    Ray's ``OptunaSearch`` reports intermediate values by Tune's iteration, loses
    the value on which ASHA stopped a trial (Tune passes it only to
    ``on_trial_complete``) and tells every stopped trial COMPLETE. Here each
    epoch is reported at step = epoch, the last one too, and a trial that
    stopped before ``epochs`` is PRUNED, a failed or NaN one FAIL.
    """

    def __init__(self, *args: Any, epochs: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epochs = epochs
        self.max_concurrent = 0  # no limit until Tune sets one
        self._last_step: dict[str, int] = {}

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's ``ConcurrencyLimiter`` leaves the limit to this searcher (``True``): its live
        trials are the suggested ones not yet told, which a resume settles from the study. The
        limiter's own count, restored from Tune's last save, would hold a trial that ended
        after that save live for ever, and nothing more would be suggested."""
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | None:
        live = [t for t in self._ot_trials if t not in self._completed_trials]
        if self.max_concurrent and trial_id not in self._ot_trials:
            if len(live) >= self.max_concurrent:
                return None  # Tune asks again once a trial has ended
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(ATTR_TUNE_TRIAL, trial_id)
        self._keep_sampler()
        return config

    def _study_id(self) -> int:
        return self._storage.get_study_id_from_name(self._study_name)

    def _keep_sampler(self) -> None:
        """Keep the sampler (its random state after this draw) in the study, written at once:
        Tune saves this searcher only every few seconds."""
        kept = base64.b64encode(pickle.dumps(self._ot_study.sampler)).decode("ascii")
        self._storage.set_study_system_attr(self._study_id(), ATTR_SAMPLER, kept)

    def _report(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self.metric), result.get(TIME_ATTR)
        if value is None or epoch is None or not math.isfinite(value):
            return
        if int(epoch) > self._last_step.get(trial_id, 0):
            self._ot_trials[trial_id].report(float(value), int(epoch))
            self._last_step[trial_id] = int(epoch)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or {}
        self._report(trial_id, result)
        value = result.get(self.metric)
        state = TrialState.COMPLETE
        if error or value is None or not math.isfinite(value):
            state, value = TrialState.FAIL, None
        elif int(result.get(TIME_ATTR, 0)) < self.epochs:
            state, value = TrialState.PRUNED, None
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Restore, then settle what happened after the save this state comes from.

        Tune saves its trials and this searcher every few seconds, and uploads the
        files one by one, while the study is written at once; so a killed driver
        can leave the study, Tune's trials and this state each at another moment.
        Tune's trials (the experiment state in ``checkpoint_dir``, which Tune has
        just restored) decide:

        - a trial the study holds as ended: Tune may run it again; the study keeps
          how it ended (nothing more is told);
        - a trial RUNNING in the study that Tune restored: it is this searcher's
          (even if its saved state predates the suggestion), told as it runs;
        - a trial RUNNING in the study that Tune does not know: suggested after
          Tune's save, never to be finished; it is told FAIL and its params are
          enqueued, so the resumed sweep's next suggestion is that config;
        - the sampler comes back from the study as it was after the last draw, so
          the draws after that config are the ones an uninterrupted sweep makes.
        """
        super().restore_from_dir(checkpoint_dir)
        kept = self._storage.get_study_system_attrs(self._study_id()).get(ATTR_SAMPLER)
        if kept is not None:
            self._sampler = self._ot_study.sampler = pickle.loads(base64.b64decode(kept))
        in_tune = tune_state.trial_ids(checkpoint_dir)
        for t in self._ot_study.get_trials(deepcopy=False):
            tune_id = t.user_attrs.get(ATTR_TUNE_TRIAL)
            if t.state.is_finished():
                if tune_id in self._ot_trials:
                    self._completed_trials.add(tune_id)
            elif t.state == TrialState.RUNNING and tune_id in in_tune:
                self._ot_trials[tune_id] = optuna.Trial(self._ot_study, t._trial_id)
            elif t.state == TrialState.RUNNING:
                self._ot_trials.pop(tune_id, None)
                self._ot_study.tell(t.number, state=TrialState.FAIL)
                self._ot_study.enqueue_trial(t.params)


class ResumableASHA(ASHAScheduler):
    """Ray's ASHA (one bracket, on epochs) whose rungs come back after ``Tuner.restore``.

    Tune restores the searcher but not the scheduler (ray#30838), and an empty
    rung stops nothing. Before its first decision this scheduler fills its rungs
    from the study: each trial Tune knows records, at each rung, its value at
    the first epoch that reached the rung (what ASHA itself records), and a
    trial the study holds as PRUNED is stopped again if Tune runs it on.
    """

    def __init__(self, *args: Any, study_storage: str, study_name: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.study_storage = study_storage
        self.study_name = study_name
        self._known: set[str] = set()
        self._pruned: set[str] = set()
        self._stops: dict[str, tuple[Any, float]] = {}
        self._synced = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_synced": False}

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self._known.add(trial.trial_id)

    def _sync(self) -> None:
        self._synced = True
        storage = open_storage(self.study_storage)
        rungs = [(m, rec) for bracket in self._brackets for m, rec in bracket._rungs]
        for t in existing_trials(storage, self.study_name):
            tune_id = t.user_attrs.get(ATTR_TUNE_TRIAL)
            if tune_id not in self._known:
                continue
            if t.state == TrialState.PRUNED:
                self._pruned.add(tune_id)
            for milestone, recorded in rungs:
                reached = [e for e in sorted(t.intermediate_values) if e >= milestone]
                if reached and tune_id not in recorded:
                    recorded[tune_id] = self._metric_op * t.intermediate_values[reached[0]]

    def _judging_rung(self, trial_id: str, epoch: Any) -> tuple[Any, float | None] | None:
        """The rung this result is judged at (the first of ASHA's rungs, highest first, that
        the epoch reached and that holds no value of the trial), and that rung's cutoff
        before the trial's value joins it (ASHA's own ``cutoff``). One bracket only."""
        if epoch is None or len(self._brackets) != 1:
            return None
        bracket = self._brackets[0]
        for milestone, recorded in bracket._rungs:
            if epoch >= milestone and trial_id not in recorded:
                cutoff = bracket.cutoff(recorded)
                return milestone, None if cutoff is None else float(self._metric_op * cutoff)
        return None

    def stop_rung(self, trial_id: str) -> tuple[Any, float] | None:
        """The rung (epoch milestone) and cutoff at which this scheduler stopped the trial."""
        return self._stops.get(trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not self._synced:
            self._sync()
        if trial.trial_id in self._pruned:
            return TrialScheduler.STOP
        rung = self._judging_rung(trial.trial_id, result.get(TIME_ATTR))
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and rung is not None and rung[1] is not None:
            self._stops[trial.trial_id] = rung
        return decision


def make_searcher(sweep: SweepConfig, storage: optuna.storages.BaseStorage) -> TruthfulOptunaSearch:
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
    return TruthfulOptunaSearch(
        space=optuna_space(sweep),
        points_to_evaluate=[default_point(sweep)] if s.include_default else None,
        metric=s.metric,
        mode=s.mode,
        sampler=sampler,
        study_name=sweep.name,
        storage=storage,
        epochs=sweep.train.epochs,
    )


def make_scheduler(sweep: SweepConfig, storage_url: str) -> TrialScheduler:
    asha = sweep.schedule.asha
    if asha is None:
        return FIFOScheduler()
    return ResumableASHA(
        time_attr=TIME_ATTR,
        metric=sweep.search.metric,
        mode=sweep.search.mode,
        max_t=sweep.train.epochs,
        grace_period=min(asha.grace, sweep.train.epochs),
        reduction_factor=asha.reduction,
        study_storage=storage_url,
        study_name=sweep.name,
    )
