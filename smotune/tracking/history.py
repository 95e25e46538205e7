"""A sweep read back from MLflow as plain data for the plots and the report; its plots uploaded.

:func:`sweep_data` turns a parent run and its children into a
:class:`smotune.plots.SweepData`: the objective and ASHA's settings from the
parent's params, the searched space from its ``space.<path>`` params, each
search trial's and confirm run's ``search.metric`` history (step = epoch), the
confirm runs' seeds and final values, the verdict; the transfer runs (``phase=transfer``,
at another fidelity: kept apart, their epochs not the sweep's) and the transfer
phase's settings. :func:`upload_plots` draws them into the
parent's ``plots/`` artifacts (the journal's ``plots`` operation, as trials
end); :func:`read_sweep` finds the latest sweep of an experiment for
``smotune report``.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from smotune import plots
from smotune.config import Distribution
from smotune.tracking.check import check_tracking
from smotune.tracking.names import (
    PHASE_CONFIRM,
    PHASE_SEARCH,
    PHASE_TRANSFER,
    PLOTS_DIR,
    TAG_BEST_TRIAL,
    TAG_CONFIRM_OF,
    TAG_PHASE,
    TAG_REASON,
    TAG_SEED,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TRANSFER_FIDELITY,
    TAG_TRIAL_ID,
    TAG_VERDICT,
)
from smotune.tracking.read import _latest_sweep, _objective, _param_value, children

log = logging.getLogger(__name__)

SPACE_PREFIX = "space."


def _space(params: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The searched entries of the parent's ``space.<path>`` params, as the sweep file has them."""
    space = {}
    for key, text in sorted(params.items()):
        if key.startswith(SPACE_PREFIX):
            entry = yaml.safe_load(text)
            if Distribution.model_validate(entry).searched:
                space[key.removeprefix(SPACE_PREFIX)] = entry
    return space


def _race(params: dict[str, str]) -> tuple[int, int, float] | None:
    """``search.confirm``'s (seeds, max_seeds, min_gain) from the parent's params."""
    if "search.confirm.seeds" not in params:
        return None
    first = int(params["search.confirm.seeds"])
    last = params.get("search.confirm.max_seeds", "None")
    gain = float(params.get("search.confirm.min_gain", "0.0"))
    return first, first if last == "None" else int(last), gain


def _transfer(params: dict[str, str], tags: dict[str, str]) -> tuple[int, str] | None:
    """``search.transfer``'s (seeds, fidelity in words) from the parent's params and tag (the
    overrides as logged while the transfer phase has not logged its words)."""
    if "search.transfer.seeds" not in params:
        return None
    prefix = "search.transfer.overrides."
    logged = ", ".join(
        f"{k.removeprefix(prefix)} {v}" for k, v in params.items() if k.startswith(prefix)
    )
    return int(params["search.transfer.seeds"]), tags.get(TAG_TRANSFER_FIDELITY, logged)


def _asha(params: dict[str, str]) -> tuple[int, float] | None:
    if "schedule.asha.grace" not in params:
        return None
    return int(params["schedule.asha.grace"]), float(params["schedule.asha.reduction"])


def _curve(client: mlflow.MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of ``metric`` in a run, epochs ascending; an epoch logged twice (a resumed
    trial re-reporting it) counts as its last value."""
    history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.timestamp)
    return sorted({int(m.step): m.value for m in history}.items())


def sweep_data(client: mlflow.MlflowClient, parent: Any) -> plots.SweepData:
    """The sweep of ``parent`` (a parent run) as the plots and the report take it."""
    params = parent.data.params
    metric, mode = _objective(parent)
    space = _space(params)
    trials, seeds, transfers, epochs = [], [], [], 0
    for run in children(client, parent.info.experiment_id, parent.info.run_id):
        tags, run_params = run.data.tags, run.data.params
        phase = tags.get(TAG_PHASE, PHASE_SEARCH)
        if phase != PHASE_TRANSFER:  # transfer runs have the transfer fidelity's epochs
            epochs = max(epochs, int(run_params.get("epochs", 0)))
        searched = {p: _param_value(run_params[p]) for p in space if p in run_params}
        value = run.data.metrics.get(metric)
        status = tags.get(TAG_STATUS, "")
        label = tags.get(TAG_TRIAL_ID, run.info.run_name)
        curve = _curve(client, run.info.run_id, metric)
        if phase in (PHASE_CONFIRM, PHASE_TRANSFER):
            seed = int(tags.get(TAG_SEED, run_params.get("seed", 0)))
            group = tags.get(TAG_CONFIRM_OF, "")
            run_data = plots.SeedData(group, seed, status, value, searched, label, curve)
            (seeds if phase == PHASE_CONFIRM else transfers).append(run_data)
            continue
        trials.append(
            plots.TrialData(
                label=label,
                status=status,
                params=searched,
                curve=curve,
                value=value,
                epochs_run=int(run.data.metrics.get("epoch", curve[-1][0] if curve else 0)),
                reason=tags.get(TAG_REASON, ""),
            )
        )
    tags = parent.data.tags
    return plots.SweepData(
        name=tags.get(TAG_SWEEP, parent.info.run_name),
        metric=metric,
        mode=mode,
        epochs=epochs or max((t.epochs_run for t in trials), default=1),
        space=space,
        asha=_asha(params),
        trials=trials,
        seeds=seeds,
        verdict=tags.get(TAG_VERDICT),
        run_id=parent.info.run_id,
        run_name=parent.info.run_name,
        best_trial=tags.get(TAG_BEST_TRIAL),
        parent_metrics=dict(parent.data.metrics),
        race=_race(params),
        transfers=transfers,
        transfer=_transfer(params, tags),
    )


def upload_plots(
    client: mlflow.MlflowClient, parent_id: str, uploaded: dict[str, str] | None = None
) -> plots.Rendered | None:
    """Draw the sweep's plots from what MLflow holds and log them under the parent's ``plots/``.

    ``uploaded`` (a file's name -> the sha256 of its bytes as last uploaded; updated
    here): a file drawn with the same bytes again is not uploaded again.
    A store that cannot be read or written raises (the journal retries it, like
    any write); anything else going wrong is a logged warning and None: plots
    never stop a sweep.
    """
    try:
        data = sweep_data(client, client.get_run(parent_id))
    except (MlflowException, OSError):
        raise
    except Exception as err:  # noqa: BLE001 - a plot is never worth stopping the writer
        log.warning("plots of run %s not drawn: %s: %s", parent_id, type(err).__name__, err)
        return None
    uploaded = {} if uploaded is None else uploaded
    with tempfile.TemporaryDirectory(prefix="smotune-plots-") as tmp:
        rendered = plots.render(data, tmp)
        for name in rendered.files:
            digest = hashlib.sha256((Path(tmp) / name).read_bytes()).hexdigest()
            if uploaded.get(name) != digest:
                client.log_artifact(parent_id, str(Path(tmp) / name), PLOTS_DIR)
                uploaded[name] = digest
                rendered.uploaded.append(name)
    return rendered


def read_sweep(uri: str, experiment: str, where: str) -> plots.SweepData:
    """The latest sweep of ``experiment`` at ``uri`` (checked first: one-line errors)."""
    check_tracking(uri, where=where, existing=True)
    client, _, parent = _latest_sweep(uri, experiment)
    return sweep_data(client, parent)
