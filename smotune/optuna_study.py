"""The Optuna study of a sweep: where it lives, what it holds, a warm start from an earlier one.

The study lives in an Optuna RDB storage (by default ``optuna.db`` in the sweep's
own directory next to Tune's state, study name = sweep name), so
``optuna.load_study`` and optuna-dashboard open it and a later sweep can
warm-start from it (``search.warm_start``: the earlier study's finished trials,
checked against this sweep's space). Each trial carries the Tune trial id it ran
as (``ATTR_TUNE_TRIAL``) and its values at step = epoch (``TIME_ATTR``), which is
how a resumed sweep's searcher and ASHA (:mod:`smotune.search`) and
``tune_state.end_trials`` find their trials in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from optuna.trial import TrialState

from smotune.config import SweepConfig
from smotune.errors import UserError, redact
from smotune.space import optuna_space

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
