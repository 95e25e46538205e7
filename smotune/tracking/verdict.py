"""The confirm phase's outcome on the sweep's parent run: verdict, seed statistics, best config."""

from __future__ import annotations

import math
import time

import mlflow
from mlflow.entities import Metric, RunTag

from smotune.tracking.journal import drain_timeout, live_journals
from smotune.tracking.names import (
    BEST_ARTIFACT,
    COMPLETED,
    CONFIRM_METRICS,
    PHASE_CONFIRM,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_CONFIRM_OF,
    TAG_PHASE,
    TAG_SEED,
    TAG_STATUS,
    TAG_VERDICT,
    TRAIN_ARTIFACT,
)
from smotune.tracking.read import artifact_text, children


def log_verdict(
    uri: str,
    parent_id: str,
    verdict: str | None,
    baseline: tuple[float, float],
    best: tuple[float, float],
    best_label: str,
) -> str | None:
    """Log the verdict and the (mean, std) pairs on the parent; point it at the winner's run.

    The winner's run is its confirm run with the lowest seed; its ``train.yaml``
    becomes the parent's ``best.yaml``. In a sweep (``parent_id`` known to the
    journal this process writes: a run id or a journal key) the write goes
    through the journal like every other, and a ``tracking:`` line is printed
    if it cannot be written now; returns None then. Otherwise it is written at
    once and returns the winner's run id (None if none finished). Either way the
    parent's plots are drawn again after it (the seed spread, the verdict).
    """
    values = dict(zip(CONFIRM_METRICS, [*baseline, *best], strict=True))
    metrics = {k: v for k, v in values.items() if math.isfinite(v)}
    now = int(time.time() * 1000)
    for journal in live_journals():
        key = journal.key_for(parent_id)
        if journal.uri == uri and key is not None:
            journal.append(
                "verdict",
                parent=key,
                verdict=verdict,
                metrics=metrics,
                best_label=best_label,
                time=now,
            )
            journal.append("plots", parent=key)  # the seed spread, the verdict in its title
            if not journal.drain(drain_timeout()):
                print(journal.status_line(), flush=True)
            return None
    client = mlflow.MlflowClient(tracking_uri=uri)
    best_id = write_verdict(client, parent_id, verdict, metrics, best_label, now)
    from smotune.tracking.history import upload_plots  # matplotlib: only where plots are drawn

    upload_plots(client, parent_id)
    return best_id


def write_verdict(
    client: mlflow.MlflowClient,
    parent_id: str,
    verdict: str | None,
    metrics: dict[str, float],
    best_label: str,
    now: int,
) -> str | None:
    """What :func:`log_verdict` writes (also the journal's ``verdict`` operation)."""
    parent = client.get_run(parent_id)
    query = (
        f"tags.{TAG_PHASE} = '{PHASE_CONFIRM}' and tags.{TAG_CONFIRM_OF} = '{best_label}' "
        f"and tags.{TAG_STATUS} = '{COMPLETED}'"
    )
    runs = children(client, parent.info.experiment_id, parent_id, query)
    runs.sort(key=lambda r: int(r.data.tags[TAG_SEED]))
    tags = [RunTag(TAG_VERDICT, verdict or "none")]
    if runs and verdict is not None:
        best_id = runs[0].info.run_id
        tags += [RunTag(TAG_BEST_RUN_ID, best_id), RunTag(TAG_BEST_TRIAL, best_label)]
        client.log_text(parent_id, artifact_text(client, best_id, TRAIN_ARTIFACT), BEST_ARTIFACT)
    client.log_batch(
        parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()], tags=tags
    )
    return runs[0].info.run_id if runs else None
