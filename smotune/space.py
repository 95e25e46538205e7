"""The ``space:`` section: Optuna distributions, and one sample applied to a train config.

Keys of ``space:`` are dotted paths into the train config
(``loss.label_smoothing``); values are one of ``uniform: [low, high]``,
``loguniform: [low, high]``, ``int: [low, high]``, ``choice: [a, b, ...]`` or
``fixed: value``. Fixed entries are not searched; they are written into every
trial's config.
"""

from __future__ import annotations

from typing import Any

import optuna

from smotune.config import (
    NOT_SEARCHABLE,
    Distribution,
    SweepConfig,
    TrainConfig,
    flatten,
    is_train_field,
    set_dotted,
    validate_train,
)
from smotune.errors import UserError


def to_optuna(dist: Distribution) -> optuna.distributions.BaseDistribution | None:
    """The Optuna distribution of one entry (None for ``fixed``)."""
    kind = dist.kind
    if kind == "uniform":
        return optuna.distributions.FloatDistribution(*dist.uniform)
    if kind == "loguniform":
        return optuna.distributions.FloatDistribution(*dist.loguniform, log=True)
    if kind == "int":
        return optuna.distributions.IntDistribution(*dist.int)
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(dist.choice)
    return None


def optuna_space(sweep: SweepConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched part of the space, path -> Optuna distribution."""
    out = {}
    for path, dist in sweep.space.items():
        od = to_optuna(dist)
        if od is not None:
            out[path] = od
    return out


def fixed_values(sweep: SweepConfig) -> dict[str, Any]:
    return {path: dist.fixed for path, dist in sweep.space.items() if dist.kind == "fixed"}


def apply(train: TrainConfig, sample: dict[str, Any], where: str = "sample") -> TrainConfig:
    """A new train config with each dotted path of ``sample`` set; validated."""
    data = train.model_dump(mode="json")
    for path, value in sample.items():
        if not is_train_field(path):
            raise UserError(where, path, "is not a field of the train config", "use a dotted path")
        data = set_dotted(data, path, value)
    return validate_train(data, where)


def _extremes(dist: Distribution) -> list[Any]:
    kind = dist.kind
    if kind in ("uniform", "loguniform", "int"):
        return list(getattr(dist, kind))
    if kind == "choice":
        return list(dist.choice)
    return [dist.fixed]


def _contains(dist: Distribution, value: Any) -> bool:
    if dist.kind == "choice":
        return value in dist.choice
    low, high = getattr(dist, dist.kind)
    return low <= value <= high


def default_point(sweep: SweepConfig) -> dict[str, Any]:
    """The train config's own values at the searched paths (the baseline trial)."""
    flat = flatten(sweep.train.model_dump(mode="json"))
    return {path: flat[path] for path in optuna_space(sweep)}


def check_space(sweep: SweepConfig, where: str) -> None:
    """Every path names a train-config field and every value the space can take is valid there."""
    for path, dist in sweep.space.items():
        field = f"space.{path}"
        if not is_train_field(path):
            raise UserError(
                where,
                field,
                "is not a field of the train config",
                "use a dotted path such as loss.label_smoothing, optim.weight_decay, "
                "model.text_dropout",
            )
        # a fixed seed is harmless; fixed epochs would differ from the epochs ASHA counts
        if path in NOT_SEARCHABLE and (dist.kind != "fixed" or path == "epochs"):
            raise UserError(
                where,
                field,
                f"cannot be searched: {NOT_SEARCHABLE[path]}",
                f"remove it from space: and set train.{path} once",
            )
        for value in _extremes(dist):
            try:
                apply(sweep.train, {path: value}, where)
            except UserError as err:
                raise UserError(
                    where,
                    field,
                    f"value {value!r} is not valid for train.{path} ({err.problem})",
                    f"keep the {dist.kind} range inside what train.{path} accepts",
                ) from None
    if sweep.search.include_default:
        for path, value in default_point(sweep).items():
            if not _contains(sweep.space[path], value):
                raise UserError(
                    where,
                    f"space.{path}",
                    f"search.include_default is on but train.{path} = {value!r} is outside it",
                    f"widen the space or change train.{path}",
                )
