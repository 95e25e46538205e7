"""Config files read: a train config or a sweep file from YAML, checked whole before any
cluster starts; a train config written back as YAML."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from smotune.config.dotted import check_space, check_transfer, transfer_train, validate_train
from smotune.config.messages import _read_yaml, _user_error
from smotune.config.models import SweepConfig, TrainConfig
from smotune.config.paths import _check_paths


def load_train(path: str | Path, check_paths: bool = True) -> TrainConfig:
    """Load a train config file (also accepts a sweep file, taking its ``train:``)."""
    path = Path(path)
    data = _read_yaml(path)
    prefix = ""
    if "train" in data and isinstance(data["train"], dict) and "space" in data:
        data, prefix = data["train"], "train."
    cfg = validate_train(data, str(path), prefix)
    if check_paths:
        _check_paths(str(path), cfg, prefix, Path.cwd())
    return cfg


def load_sweep(path: str | Path, check_paths: bool = True) -> SweepConfig:
    """Load a sweep file and check every space path and range against the train config."""
    path = Path(path)
    data = _read_yaml(path)
    where = str(path)
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise _user_error(where, err, SweepConfig, "") from None
    check_space(sweep, where)
    check_transfer(sweep, where)
    if check_paths:
        _check_paths(where, sweep.train, "train.", Path.cwd())
        if sweep.search.transfer is not None:
            # only an overridden data path can fail here: train:'s own passed above
            high = transfer_train(sweep, where)
            _check_paths(where, high, "search.transfer.overrides.", Path.cwd())
    return sweep


def dump_train(cfg: TrainConfig) -> str:
    """A train config as YAML text, every field written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
