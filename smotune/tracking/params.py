"""What a run logs: a trial's params, a sweep's params, a result's metrics."""

from __future__ import annotations

import numbers
from typing import Any

import yaml

from smotune.config import SweepConfig, TrainConfig, flatten
from smotune.tracking.names import METRICS, PARAM_GLOBAL_BATCH, TUNE_KEYS


def train_params(cfg: TrainConfig) -> dict[str, str]:
    """The params of a trial's child run: dotted train-config paths as text, plus global batch."""
    params = {k: str(v) for k, v in flatten(cfg.model_dump(mode="json")).items()}
    params[PARAM_GLOBAL_BATCH] = str(cfg.global_batch_size)
    return params


def sweep_params(sweep: SweepConfig) -> dict[str, str]:
    """The params of a sweep's parent run: ``space.<path>``, ``search.*``, ``schedule.*``."""
    params = {
        f"space.{path}": yaml.safe_dump(
            dist.model_dump(mode="json", exclude_unset=True), default_flow_style=True
        ).strip()
        for path, dist in sweep.space.items()
    }
    params.update(
        {k: str(v) for k, v in flatten(sweep.search.model_dump(mode="json"), "search.").items()}
    )
    asha = sweep.schedule.asha
    if asha is None:
        params["schedule.asha"] = "none"
    else:
        params.update(
            {k: str(v) for k, v in flatten(asha.model_dump(mode="json"), "schedule.asha.").items()}
        )
    return params


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The loggable metrics of one Tune result."""
    out = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if key in METRICS or ("/" not in key and not key.startswith("_") and key not in TUNE_KEYS):
            out[key] = float(value)
    return out
