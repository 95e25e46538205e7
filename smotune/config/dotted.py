"""Dotted paths into a train config (``loss.label_smoothing``): flattening, setting, a
sample applied; the ``space:`` and ``search.transfer`` checked against the train config."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from smotune.config.messages import _user_error
from smotune.config.models import NOT_SEARCHABLE, SweepConfig, TrainConfig
from smotune.errors import UserError


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"label_smoothing": 0.1}}`` -> ``{"loss.label_smoothing": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def is_train_field(path: str) -> bool:
    """Whether ``path`` (e.g. ``loss.label_smoothing``) names a leaf field of TrainConfig."""
    current: Any = TrainConfig
    for part in path.split("."):
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return False
        current = fields[part].annotation
    return getattr(current, "model_fields", None) is None


def set_dotted(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``path`` set to ``value``."""
    out = copy.deepcopy(data)
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def validate_train(data: dict[str, Any], where: str, prefix: str = "") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise _user_error(where, err, TrainConfig, prefix) from None


def apply(train: TrainConfig, sample: dict[str, Any], where: str = "sample") -> TrainConfig:
    """A new train config with each dotted path of ``sample`` set; validated."""
    data = train.model_dump(mode="json")
    for path, value in sample.items():
        if not is_train_field(path):
            raise UserError(where, path, "is not a field of the train config", "use a dotted path")
        data = set_dotted(data, path, value)
    return validate_train(data, where)


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
        if path in NOT_SEARCHABLE and (dist.searched or path == "epochs"):
            raise UserError(
                where,
                field,
                f"cannot be searched: {NOT_SEARCHABLE[path]}",
                f"remove it from space: and set train.{path} once",
            )
        for value in dist.extremes():
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
        flat = flatten(sweep.train.model_dump(mode="json"))
        for path, dist in sweep.space.items():
            if dist.searched and not dist.contains(flat[path]):
                raise UserError(
                    where,
                    f"space.{path}",
                    f"search.include_default is on but train.{path} = {flat[path]!r} is outside it",
                    f"widen the space or change train.{path}",
                )


def transfer_train(sweep: SweepConfig, where: str = "sweep") -> TrainConfig:
    """``train:`` at the transfer fidelity (``search.transfer.overrides`` applied)."""
    assert sweep.search.transfer is not None
    return apply(sweep.train, sweep.search.transfer.overrides, where)


def check_transfer(sweep: SweepConfig, where: str) -> None:
    """``search.transfer`` follows a confirm phase, re-runs no more configs than it confirmed,
    and overrides valid train-config fields that the space does not set, to new values."""
    t, c = sweep.search.transfer, sweep.search.confirm
    if t is None:
        return
    if c is None:
        raise UserError(
            where,
            "search.transfer",
            "needs a confirm phase (it re-runs the best confirmed configs)",
            "add search.confirm: {top: K, seeds: N}",
        )
    if t.top > c.top:
        raise UserError(
            where,
            "search.transfer.top",
            f"is {t.top} but the confirm phase confirms only {c.top} searched configs",
            f"set it to at most search.confirm.top ({c.top}), or raise that",
        )
    flat = flatten(sweep.train.model_dump(mode="json"))
    for path in t.overrides:
        field = f"search.transfer.overrides.{path}"
        if not is_train_field(path):
            raise UserError(
                where,
                field,
                "is not a field of the train config",
                "use a dotted path such as data.samples_per_epoch, epochs, model.arch",
            )
        if path == "seed":
            raise UserError(
                where,
                field,
                "cannot be overridden: the transfer phase runs its own new seeds",
                "remove it (train.seed + confirm's seeds + 1, ... are its seeds)",
            )
        if path in sweep.space:
            kind = "searched" if sweep.space[path].searched else "fixed by space:"
            raise UserError(
                where,
                field,
                f"is {kind}: the transfer phase re-runs the confirmed configs' own values there",
                "remove it from search.transfer.overrides (or from space:)",
            )
    try:
        high = transfer_train(sweep, where)
    except UserError as err:
        raise UserError(
            where,
            f"search.transfer.overrides.{err.field}",
            err.problem,
            err.fix,
        ) from None
    if all(flatten(high.model_dump(mode="json")).get(p) == flat[p] for p in t.overrides):
        raise UserError(
            where,
            "search.transfer.overrides",
            "changes nothing: every value equals train:'s",
            "set at least one path to the larger fidelity's value (e.g. epochs, "
            "data.samples_per_epoch)",
        )
