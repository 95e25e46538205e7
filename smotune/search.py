"""The search: a real Optuna study, a searcher that tells it the truth, an ASHA that resumes.

- The study lives in an Optuna RDB storage (by default ``optuna.db`` in the
  sweep's own directory next to Tune's state, study name = sweep name), so
  ``optuna.load_study`` and optuna-dashboard open it and a later sweep can
  warm-start from it (``search.warm_start``).
- :class:`TruthfulOptunaSearch` tells Optuna every epoch a trial reported
  (step = epoch) and how the trial ended: COMPLETE only when it ran every
  epoch, PRUNED when ASHA stopped it (its stopping epoch included: Tune hands
  that result only to ``on_trial_complete``), FAIL on an error or a NaN.
  It keeps a copy of its sampler in the study after every draw (a study
  system attribute), so a resumed sweep draws on from the last draw.
- :class:`ResumableASHA` rebuilds its rungs from the study after
  ``Tuner.restore`` (Tune does not save the scheduler, ray#30838), so a
  resumed sweep stops the trials an uninterrupted one would.

Both subclass Ray's classes and use their private attributes (``_ot_trials``,
``_ot_study``, ``_completed_trials``; ``_brackets``, ``_rungs``) and read Tune's
experiment state file (``tune_state.trial_ids``); Ray is pinned
to the minor version ``tests/test_search.py`` checks them on.
"""

from __future__ import annotations

import base64
import math
import pickle
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from smotune import tune_state
from smotune.config import SweepConfig
from smotune.errors import UserError, redact
from smotune.space import default_point, optuna_space

STUDY_FILE = "optuna.db"
ATTR_TUNE_TRIAL = "tune_trial_id"
ATTR_WARM_START = "warm_start_from"
ATTR_SAMPLER = "smotune:sampler"
TIME_ATTR = "epoch"


def local_dir(path: str) -> str | None:
    """The local directory of a storage path (plain or ``file://``), None if it is remote."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return parsed.path
    return None if "://" in path else path


def storage_url(sweep: SweepConfig, name: str | None = None, where: str = "sweep") -> str:
    """The Optuna storage URL of sweep ``name`` (default: this sweep).

    ``search.storage`` if set, else ``sqlite:///<storage.path>/<name>/optuna.db``.
    """
    if sweep.search.storage:
        return sweep.search.storage
    local = local_dir(sweep.storage.path)
    if local is None:
        raise UserError(
            where,
            "search.storage",
            f"storage.path {sweep.storage.path} is remote and the Optuna study needs a database "
            "the sweep's driver reaches",
            "set search.storage to sqlite:////absolute/path/optuna.db on the head node or a "
            "postgresql:// URL",
        )
    folder = Path(local).resolve() / (name or sweep.name)
    return f"sqlite:///{folder / STUDY_FILE}"


def open_storage(url: str, where: str = "sweep") -> optuna.storages.BaseStorage:
    """An Optuna RDB storage at ``url`` (a sqlite folder is created); one line if unusable."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # sqlalchemy raises many kinds; all mean the same to the user
        raise UserError(
            where,
            "search.storage",
            f"cannot open Optuna storage {redact(url)} ({type(err).__name__}: {err})",
            "give a sqlite:/// path in a writable folder or a reachable database URL",
        ) from None


def existing_trials(storage: optuna.storages.BaseStorage, study: str) -> list[Any]:
    """The trials of ``study`` in ``storage`` (an empty list if there is no such study)."""
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def ended_trials(
    storage: optuna.storages.BaseStorage, study: str, metric: str
) -> dict[str, dict[str, Any]]:
    """Tune trial id -> its last result as the study holds it (``epoch``, ``metric``), for
    every trial the study holds as ended (COMPLETE, PRUNED, FAIL): what a resume must not
    run again (``tune_state.end_trials``)."""
    out: dict[str, dict[str, Any]] = {}
    for t in existing_trials(storage, study):
        tune_id = t.user_attrs.get(ATTR_TUNE_TRIAL)
        if tune_id is None or not t.state.is_finished():
            continue
        last: dict[str, Any] = {}
        if t.intermediate_values:
            epoch = max(t.intermediate_values)
            last = {TIME_ATTR: int(epoch), metric: t.intermediate_values[epoch]}
        out[tune_id] = last
    return out


def _direction(mode: str) -> optuna.study.StudyDirection:
    return optuna.study.StudyDirection["MAXIMIZE" if mode == "max" else "MINIMIZE"]


def _holds(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except ValueError:  # a categorical's to_internal_repr refuses what it does not hold
        return False


def warm_start_trials(sweep: SweepConfig, where: str) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of the earlier sweep ``search.warm_start``, checked against this space.

    The earlier study is looked up as this sweep's would be: in ``search.storage``,
    or in ``<storage.path>/<warm_start>/optuna.db``.
    """
    name = sweep.search.warm_start
    field = "search.warm_start"
    url = storage_url(sweep, name=name, where=where)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(
            where,
            field,
            f"no earlier sweep {name!r}: {url} does not exist",
            "name an earlier sweep",
        )
    storage = open_storage(url, where)
    try:
        earlier = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(
            where, field, f"no Optuna study named {name!r} in its storage", "name an earlier sweep"
        ) from None
    if earlier.direction != _direction(sweep.search.mode):
        raise UserError(
            where,
            field,
            f"study {name!r} was {earlier.direction.name.lower()}d, this sweep is "
            f"search.mode {sweep.search.mode}",
            "warm-start only from a sweep with the same objective",
        )
    space = optuna_space(sweep)
    out = []
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    for old in earlier.get_trials(deepcopy=False, states=finished):
        if set(old.params) != set(space):
            raise UserError(
                where,
                field,
                f"study {name!r} searched {sorted(old.params)}, this sweep {sorted(space)}",
                "warm-start only from a sweep with the same space: paths",
            )
        for path, value in old.params.items():
            dist = space[path]
            if type(dist) is not type(old.distributions[path]) or not _holds(dist, value):
                raise UserError(
                    where,
                    field,
                    f"trial {old.number} of {name!r} has {path} = {value!r}, outside this "
                    f"sweep's {path} ({dist})",
                    f"widen space.{path} to hold the earlier sweep's values",
                )
        out.append(
            optuna.trial.create_trial(
                state=old.state,
                value=old.value if old.state == TrialState.COMPLETE else None,
                params=old.params,
                distributions=space,
                intermediate_values=old.intermediate_values,
                user_attrs={ATTR_WARM_START: f"{name}#{old.number}"},
            )
        )
    return out


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


def prepare_study(sweep: SweepConfig, resume: bool, where: str) -> tuple[str, Any]:
    """The study's storage URL and storage, checked before any cluster starts.

    A new sweep creates its study here, empty (a study with trials is another
    sweep's) but for a warm start's trials, added once.
    """
    url = storage_url(sweep, where=where)
    storage = open_storage(url, where)
    trials = existing_trials(storage, sweep.name)
    if not resume and trials:
        raise UserError(
            where,
            "name",
            f"the Optuna study {sweep.name!r} in {redact(url)} already has {len(trials)} trials",
            "add --resume to continue that sweep, rename the sweep, or delete the study",
        )
    if not resume:
        earlier = warm_start_trials(sweep, where) if sweep.search.warm_start else []
        study = optuna.create_study(
            study_name=sweep.name,
            storage=storage,
            direction=_direction(sweep.search.mode),
            load_if_exists=True,
        )
        study.add_trials(earlier)
    return url, storage
