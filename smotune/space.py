"""The ``space:`` section as Optuna sees it, and the train config of one trial.

Keys of ``space:`` are dotted paths into the train config
(``loss.label_smoothing``); values are one of ``uniform: [low, high]``,
``loguniform: [low, high]``, ``int: [low, high]``, ``choice: [a, b, ...]`` or
``fixed: value`` (the kinds, and the Optuna class of each, are
``config.DIST_KINDS``; the entries are checked against the train config by
``config.check_space`` when a sweep file loads). Fixed entries are not
searched; they are written into every trial's config.
"""

from __future__ import annotations

from typing import Any

import optuna

from smotune.config import DIST_KINDS, Distribution, SweepConfig, TrainConfig, apply, flatten


def to_optuna(dist: Distribution) -> optuna.distributions.BaseDistribution | None:
    """The Optuna distribution of one entry (None for ``fixed``)."""
    kind = DIST_KINDS[dist.kind]
    if kind.optuna is None:
        return None
    cls = getattr(optuna.distributions, kind.optuna)
    return cls(*dist.value, log=kind.log) if kind.shape == "range" else cls(dist.value)


def optuna_space(sweep: SweepConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched part of the space, path -> Optuna distribution."""
    return {path: to_optuna(dist) for path, dist in sweep.space.items() if dist.searched}


def fixed_values(sweep: SweepConfig) -> dict[str, Any]:
    return {path: dist.value for path, dist in sweep.space.items() if not dist.searched}


def trial_config(sweep: SweepConfig, sample: dict[str, Any]) -> TrainConfig:
    """The train config of one trial, paths as written: ``train:``, the fixed values, the sample.

    The one composition: the trial runs it and MLflow logs it (both with the paths made
    absolute, ``config.absolute_paths``).
    """
    return apply(sweep.train, {**fixed_values(sweep), **sample}, where="trial config")


def default_point(sweep: SweepConfig) -> dict[str, Any]:
    """The train config's own values at the searched paths (the baseline trial)."""
    flat = flatten(sweep.train.model_dump(mode="json"))
    return {path: flat[path] for path in optuna_space(sweep)}
