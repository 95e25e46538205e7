"""A top-K ensemble's zero-shot accuracy on the sweep's parent run."""

from __future__ import annotations

import time

import mlflow
from mlflow.entities import Metric, RunTag

from smotune.tracking.names import (
    ENSEMBLE_K,
    ENSEMBLE_TOP1,
    ENSEMBLE_TOP5,
    TAG_ENSEMBLE_MEMBERS,
)


def log_ensemble(uri: str, parent_id: str, top1: float, top5: float, members: list[str]) -> None:
    """Log ``ensemble_top1``, ``ensemble_top5``, ``ensemble_k`` and the members' trial ids
    (tag ``ensemble_members``, best first) on the parent run ``parent_id``.

    Step 0 every time, so the parent's latest values are those of the latest ensemble
    (another ``--top`` replaces them; MLflow keeps the earlier ones in the history).
    """
    now = int(time.time() * 1000)
    values = {ENSEMBLE_TOP1: top1, ENSEMBLE_TOP5: top5, ENSEMBLE_K: float(len(members))}
    mlflow.MlflowClient(tracking_uri=uri).log_batch(
        parent_id,
        metrics=[Metric(k, v, now, 0) for k, v in values.items()],
        tags=[RunTag(TAG_ENSEMBLE_MEMBERS, ",".join(members))],
    )
