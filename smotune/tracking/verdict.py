"""The confirm phase's outcome on the sweep's parent run: one story with the console and best.yaml.

The parent gets the verdict (tag ``verdict``, its method, the rival its numbers are
about), the verdict's sentence as the run's description (what MLflow's UI shows
first), the compared rival's gain, bounds, p-value and degrees of freedom, the
seeds each config ran, and the chosen config (the winner when a rival beats the
baseline, otherwise the baseline): ``best_trial``, ``best_run_id``, ``best.yaml``,
its confirmed means as ``best_top1_mean``/``std`` and every ``best_<metric>``, and
the ``best`` tag on its confirm runs only.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag

from smotune.confirm import Verdict
from smotune.tracking.journal import drain_timeout, live_journals
from smotune.tracking.names import (
    BEST_ARTIFACT,
    BEST_PREFIX,
    COMPLETED,
    CONFIRM_METRICS,
    PHASE_CONFIRM,
    SEEDS_PREFIX,
    SEEDS_TO_DECIDE,
    TAG_BEST,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_CONFIRM_OF,
    TAG_DESCRIPTION,
    TAG_PHASE,
    TAG_SEED,
    TAG_STATUS,
    TAG_VERDICT,
    TAG_VERDICT_CONFIG,
    TAG_VERDICT_METHOD,
    TRAIN_ARTIFACT,
    VERDICT_METRICS,
)
from smotune.tracking.read import artifact_text, children


def verdict_record(verdict: Verdict, metric: str) -> dict[str, Any]:
    """What the parent gets, as plain data (the journal's ``verdict`` operation)."""
    chosen, shown = verdict.chosen, verdict.shown
    values = dict(
        zip(
            CONFIRM_METRICS,
            [verdict.baseline.mean, verdict.baseline.std, chosen.mean, chosen.std],
            strict=True,
        )
    )
    if shown is not None:
        values.update({name: float(getattr(shown, f)) for f, name in VERDICT_METRICS.items()})
    values[SEEDS_PREFIX + verdict.baseline.label] = verdict.base_runs
    values.update({SEEDS_PREFIX + c.group.label: c.runs for c in verdict.comparisons})
    if verdict.seeds_to_decide is not None:
        values[SEEDS_TO_DECIDE] = verdict.seeds_to_decide
    return {
        "verdict": verdict.verdict,
        "words": verdict.words(metric),
        "method": verdict.design.method if verdict.design is not None else "",
        "chosen": chosen.label,
        "compared": shown.group.label if shown is not None else "",
        "metrics": {k: float(v) for k, v in values.items() if math.isfinite(v)},
    }


def log_verdict(uri: str, parent_id: str, verdict: Verdict, metric: str) -> str | None:
    """Log the verdict on the parent; point it at the chosen config's runs.

    In a sweep (``parent_id`` known to the journal this process writes: a run id or a
    journal key) the write goes through the journal like every other, and a
    ``tracking:`` line is printed if it cannot be written now; returns None then.
    Otherwise it is written at once and returns the chosen config's run id (None if
    none finished). Either way the parent's plots are drawn again after it.
    """
    return log_on_parent(uri, parent_id, "verdict", verdict_record(verdict, metric), write_verdict)


def log_on_parent(
    uri: str,
    parent_id: str,
    op: str,
    record: dict[str, Any],
    write: Callable[[mlflow.MlflowClient, str, dict[str, Any], int], str | None],
) -> str | None:
    """A phase's record on the parent, then its plots drawn again: through the journal this
    process writes when it knows ``parent_id`` (as journal op ``op``; None returned, a
    ``tracking:`` line printed if it cannot be written now), else at once by ``write``
    (what it returns)."""
    now = int(time.time() * 1000)
    for journal in live_journals():
        key = journal.key_for(parent_id)
        if journal.uri == uri and key is not None:
            journal.append(op, parent=key, time=now, **record)
            journal.append("plots", parent=key)  # the phase's plot, its words in the title
            if not journal.drain(drain_timeout()):
                print(journal.status_line(), flush=True)
            return None
    client = mlflow.MlflowClient(tracking_uri=uri)
    written = write(client, parent_id, record, now)
    from smotune.tracking.history import upload_plots  # matplotlib: only where plots are drawn

    upload_plots(client, parent_id)
    return written


def write_verdict(
    client: mlflow.MlflowClient, parent_id: str, record: dict[str, Any], now: int
) -> str | None:
    """What :func:`log_verdict` writes (also the journal's ``verdict`` operation)."""
    chosen = record.get("chosen", record.get("best_label"))  # a journal of an older smotune
    verdict = record["verdict"]
    tags = [RunTag(TAG_VERDICT, verdict or "none")]
    if record.get("words"):
        tags.append(RunTag(TAG_DESCRIPTION, record["words"]))
    if record.get("method"):
        tags.append(RunTag(TAG_VERDICT_METHOD, record["method"]))
    if record.get("compared"):
        tags.append(RunTag(TAG_VERDICT_CONFIG, record["compared"]))
    metrics = dict(record["metrics"])
    best_id = None
    if verdict is not None:
        best_id = point_best(client, parent_id, PHASE_CONFIRM, chosen, tags, metrics)
    client.log_batch(
        parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()], tags=tags
    )
    return best_id


def point_best(
    client: mlflow.MlflowClient,
    parent_id: str,
    phase: str,
    chosen: str,
    tags: list[RunTag],
    metrics: dict[str, float],
) -> str | None:
    """Point the parent's best at config ``chosen``'s completed runs of ``phase``: its
    ``best.yaml`` (the first seed's ``train.yaml``), the ``best`` tag on those runs only; adds
    ``best_trial``/``best_run_id`` to ``tags`` and its ``best_<metric>`` means to ``metrics``.
    Returns the first seed's run id (None, and nothing moved, when no run completed)."""
    exp_id = client.get_run(parent_id).info.experiment_id
    query = (
        f"tags.{TAG_PHASE} = '{phase}' and tags.{TAG_CONFIRM_OF} = '{chosen}' "
        f"and tags.{TAG_STATUS} = '{COMPLETED}'"
    )
    runs = sorted(
        children(client, exp_id, parent_id, query), key=lambda r: int(r.data.tags[TAG_SEED])
    )
    if not runs:
        return None
    best_id = runs[0].info.run_id
    tags += [RunTag(TAG_BEST_RUN_ID, best_id), RunTag(TAG_BEST_TRIAL, chosen)]
    client.log_text(parent_id, artifact_text(client, best_id, TRAIN_ARTIFACT), BEST_ARTIFACT)
    metrics.update(_confirmed_means(runs))
    chosen_ids = {r.info.run_id for r in runs}
    for run in children(client, exp_id, parent_id, f"tags.{TAG_BEST} = 'true'"):
        if run.info.run_id not in chosen_ids:
            client.delete_tag(run.info.run_id, TAG_BEST)
    for run_id in chosen_ids:
        client.set_tag(run_id, TAG_BEST, "true")
    return best_id


def _confirmed_means(runs: list[Any]) -> dict[str, float]:
    """``best_<metric>``: the mean over the chosen config's runs of each final metric."""
    keys = set.intersection(*(set(r.data.metrics) for r in runs))
    return {
        BEST_PREFIX + k: statistics.fmean(r.data.metrics[k] for r in runs)
        for k in sorted(keys)
        if all(math.isfinite(r.data.metrics[k]) for r in runs)
    }
