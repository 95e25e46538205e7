"""The rung check on the sweep's parent run, and the lines the sweep prints about it.

At the sweep's end :func:`log_rungs` journals a ``rungs`` operation. The writer
applies it after every write journalled before it (every child's epochs), so it
reads the sweep back from MLflow (:func:`smotune.tracking.history.sweep_data`,
what ``smotune report`` reads) and logs :func:`smotune.rungs.sweep_checks` on the
parent: per ASHA rung ``rung_<epoch>/runs``, ``pairs``, ``concordant``,
``discordant``, ``ties``, ``concordance``, ``tau``, ``p``, ``best_place`` (metrics)
and ``rung_<epoch>/judgement`` (a tag), and the first rung's judgement as the tag
``rung_check``. A ``rungs`` op of its own, not a part of the ``plots`` op: plots
are redrawn after every trial (only the newest waiting one is drawn) and a plot
that fails is a warning, whereas the check is the sweep's result, written once
at its end and retried like the verdict while the store is down. A resumed sweep
logs it again at its end (step 0, a later time: MLflow shows the newest).

The sweep then reads the same data back to print the check's lines
(:func:`smotune.rungs.sweep_lines`), so the console, the parent and the report
say the same; while the store has not taken the sweep's writes, it says so.
"""

from __future__ import annotations

import logging
import math
import time

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from smotune.rungs import RungCheck, sweep_checks, sweep_lines
from smotune.tracking.check import short_reason
from smotune.tracking.journal import drain_timeout, live_journals
from smotune.tracking.names import RUNG_FIELDS, TAG_RUNG_CHECK, rung_metric, rung_tag

log = logging.getLogger(__name__)


def rung_record(checks: list[RungCheck]) -> tuple[dict[str, float], dict[str, str]]:
    """The parent's metrics and tags of ``checks`` (finite values only)."""
    metrics, tags = {}, {}
    for check in checks:
        for field in RUNG_FIELDS:
            value = check.runs if field == "runs" else getattr(check, field)
            if value is not None and math.isfinite(value):
                metrics[rung_metric(check.epoch, field)] = float(value)
        tags[rung_tag(check.epoch)] = check.judgement
    if checks:
        tags[TAG_RUNG_CHECK] = checks[0].judgement
    return metrics, tags


def write_rungs(client: mlflow.MlflowClient, parent_id: str, now: int) -> list[RungCheck] | None:
    """Compute the check from what MLflow holds and log it on the parent (the ``rungs`` op).

    A store that cannot be read or written raises (the journal retries it); anything
    else going wrong is a logged warning and None: it never holds up the writer.
    """
    from smotune.tracking.history import sweep_data  # matplotlib: only where it is needed

    try:
        checks = sweep_checks(sweep_data(client, client.get_run(parent_id)))
    except (MlflowException, OSError):
        raise
    except Exception as err:  # noqa: BLE001 - the check is never worth stopping the writer
        log.warning("rung check of run %s not logged: %s: %s", parent_id, type(err).__name__, err)
        return None
    metrics, tags = rung_record(checks)
    if metrics or tags:
        client.log_batch(
            parent_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
    return checks


def log_rungs(uri: str, parent_id: str) -> list[str]:
    """Log the rung check on the parent; the lines saying what it found (none without ASHA).

    In a sweep (``parent_id`` known to the journal this process writes: a run id or a
    journal key) the write goes through the journal and the lines are computed from
    MLflow once it is written; if it cannot be written now, the lines say so.
    Otherwise it is written at once.
    """
    from smotune.tracking.history import sweep_data

    now = int(time.time() * 1000)
    client = mlflow.MlflowClient(tracking_uri=uri)
    for journal in live_journals():
        key = journal.key_for(parent_id)
        if journal.uri == uri and key is not None:
            journal.append("rungs", parent=key, time=now)
            if not journal.drain(drain_timeout()):
                return [
                    "rung check: waits for the tracking store (it is computed from the runs "
                    "MLflow holds); `smotune report` shows it once they are written",
                    journal.status_line(),
                ]
            parent_id = journal.run_id(key) or parent_id
            break
    else:
        write_rungs(client, parent_id, now)
    try:
        return sweep_lines(sweep_data(client, client.get_run(parent_id)))
    except (MlflowException, OSError) as err:
        return [f"rung check: the sweep could not be read back from MLflow ({short_reason(err)})"]
