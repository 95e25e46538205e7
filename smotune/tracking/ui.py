"""How a sweep reads in MLflow's UI: run names, each run's ending in words, a saved view, its URL.

MLflow 3.17's UI opens an experiment on its GenAI overview and shows runs by name with no
metric, parameter or tag column (FIELD-NOTES); measured for this module in headless
Chromium, it also keeps child runs collapsed under their parent, ignores the experiment
tag ``mlflow.experimentKind`` for its landing page (the workflow switch decides), and
gives a FAILED and a KILLED run the same red cross (only FINISHED gets a green check).
What a client can set, and smotune sets:

- run names that say what a run is: ``sweep <name>``; ``search #<n> [baseline] ls=0.1
  wd=0.3`` (``n``: the trial's number, start order from 0, as the plots and the report
  number it; the searched values by the initials of their last path part); ``confirm
  baseline seed 2`` or ``confirm #<n> seed 2 ls=... wd=...``;
- each trial's description (the ``Description`` column) saying how it ended, with the
  objective: ``completed 3/3 epochs: zeroshot_top1 0.5800``, ``stopped by ASHA at epoch
  1/3: ...``, ``failed: ...``; the parent's is the verdict, or without a confirm phase
  the best trial and what it rests on (see :mod:`smotune.tracking.ops`);
- a saved view of the runs page, an experiment tag ``mlflow.sharedViewState.<key>`` that
  the UI lists under "Views" and opens from ``?viewStateShareKey=<key>``: the runs sorted
  by the objective (a sorted table lists child runs flat, none collapsed), columns for the
  description, the objective, the epochs, ``status``, ``phase``, ``seed``, ``baseline`` and
  the searched params, every run drawn in charts (not the first 10), and the charts view
  led by the objective: by epoch, parallel coordinates of the searched params, a bar per
  run (the UI's own charts, one per metric in alphabetical order, follow collapsed);
- the URL that opens it: ``#/experiments/<id>/runs?workflowType=machine_learning``
  (the training runs table, not the GenAI overview) ``&viewStateShareKey=<key>``.
The UI drops the expanded rows (``runsExpanded``) of a shared view; a saved view's state
and key are the UI's own format (read from MLflow 3.17's bundle: an envelope of ``name``,
``createdAt`` and ``state``, the state a JSON text of the page's fields).
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlparse

from smotune.config import SweepConfig
from smotune.console import number
from smotune.space import optuna_space
from smotune.tracking.names import (
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    KILLED,
    PHASE_SEARCH,
    TAG_BASELINE,
    TAG_PHASE,
    TAG_SEED,
    TAG_STATUS,
)

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the UI's saved and shared views (experiment tags)
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
_MODEL_METRICS = "Model metrics"  # the UI's own section of generated charts


def short_names(paths: list[str]) -> dict[str, str]:
    """Each searched path's short name in run names: the initials of its last part's words
    (``loss.label_smoothing`` -> ``ls``), the last part where two would clash, else the path."""
    last = {p: p.rsplit(".", 1)[-1] for p in paths}
    initials = {p: "".join(w[0] for w in last[p].split("_") if w) or last[p] for p in paths}
    out = {}
    for p in paths:
        if list(initials.values()).count(initials[p]) == 1:
            out[p] = initials[p]
        elif list(last.values()).count(last[p]) == 1:
            out[p] = last[p]
        else:
            out[p] = p
    return out


def values_text(sweep: SweepConfig, config: dict[str, Any]) -> str:
    """``ls=0.1 wd=0.3``: a trial's searched values, short."""
    names = short_names(list(optuna_space(sweep)))
    return " ".join(f"{names[p]}={number(config[p])}" for p in names if p in config)


def parent_name(sweep: SweepConfig) -> str:
    return f"sweep {sweep.name}"


def trial_name(
    sweep: SweepConfig,
    phase: str,
    config: dict[str, Any],
    number_: int | None,
    baseline: bool,
    seed: int | None = None,
    of: str | None = None,
) -> str:
    """What a trial is: ``search #3 ls=0.12 wd=0.3``, ``search #0 baseline ...``,
    ``confirm baseline seed 2``, ``confirm #3 seed 2 ls=... wd=...`` (``of``: the confirmed
    search trial's label, shown when its number is unknown)."""
    values = values_text(sweep, config)
    if phase != PHASE_SEARCH:  # a config re-run at a seed: confirm, transfer
        if baseline:
            return f"{phase} baseline seed {seed}"
        who = f"#{number_}" if number_ is not None else (of or "?")
        return f"{phase} {who} seed {seed} {values}".rstrip()
    mark = " baseline" if baseline else ""
    return f"search #{number_}{mark} {values}".rstrip()


def ending(status: str, reason: str, epochs_run: int, epochs: int, metric: str, value) -> str:
    """How a trial ended, for its description: the status first, the objective, the reason."""
    shown = f"{metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
    if status == COMPLETED:
        return f"completed {epochs_run}/{epochs} epochs: {shown or metric + ' not reported'}"
    if status == EARLY_STOPPED:
        return reason or f"stopped by ASHA at epoch {epochs_run}/{epochs}: {shown}"
    if status in (FAILED, KILLED):
        at = f" after {epochs_run}/{epochs} epochs" + (f" ({shown})" if shown else "")
        return f"{status}{at}: {reason}"
    return status


def view_key(sweep: SweepConfig) -> str:
    """The saved view's key: ``smotune-<sweep name>`` (a name holds only what a tag key and a
    URL take as they are: letters, digits, ``-``, ``_``, ``.``)."""
    return f"smotune-{sweep.name}"


def _column(kind: str, name: str) -> str:
    """A runs-table column as the UI keys it (``metrics.`zeroshot_top1```)."""
    return f"{kind}.`{name}`"


def view_state(sweep: SweepConfig) -> dict[str, Any]:
    """The runs page as the sweep wants it read: the UI's own state fields."""
    metric, searched = sweep.search.metric, list(optuna_space(sweep))
    section = "smotune-objective"
    charts = [
        {
            "type": "LINE",
            "uuid": "smotune-by-epoch",
            "metricSectionId": section,
            "metricKey": metric,
            "selectedMetricKeys": [metric],
            "xAxisKey": "step",
            "scaleType": "linear",
            "lineSmoothness": 0,
            "selectedXAxisMetricKey": "",
            "displayName": f"{metric} by epoch",
        },
        {
            "type": "PARALLEL",
            "uuid": "smotune-parallel",
            "metricSectionId": section,
            "selectedParams": searched,
            "selectedMetrics": [metric],
            "displayName": f"searched values and {metric}",
        },
        {
            "type": "BAR",
            "uuid": "smotune-last",
            "metricSectionId": section,
            "metricKey": metric,
            "displayName": f"{metric}, last epoch",
        },
    ]
    for chart in charts:
        chart.update(isGenerated=False, deleted=False, runsCountToCompare=1000)
    sections = [
        {"uuid": section, "name": f"{metric} (search.metric)", "display": True},
        {"uuid": "smotune-other", "name": _MODEL_METRICS, "display": False},
    ]
    for s in sections:
        s.update(isReordered=False, deleted=False, isGenerated=False)
    return {
        "orderByKey": _column("metrics", metric),
        "orderByAsc": sweep.search.mode == "min",
        "selectedColumns": [
            _column("attributes", "Description"),
            _column("metrics", metric),
            _column("metrics", "epoch"),
            *(_column("tags", t) for t in (TAG_STATUS, TAG_PHASE, TAG_SEED, TAG_BASELINE)),
            *(_column("params", p) for p in searched),
        ],
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
    }


def view_tag(sweep: SweepConfig, created_ms: int) -> tuple[str, str]:
    """The experiment tag (key, value) holding the sweep's saved view, named ``smotune: <name>``."""
    envelope = {
        "name": view_tag_name(sweep),
        "createdAt": created_ms,
        "state": json.dumps(view_state(sweep), separators=(",", ":")),
    }
    return VIEW_TAG_PREFIX + view_key(sweep), json.dumps(envelope, separators=(",", ":"))


def ui_base(uri: str) -> str | None:
    """Where the UI of tracking store ``uri`` is served: the server itself (http[s]), `mlflow
    ui`'s default address for a local store, None for a hosted one (databricks)."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return uri.rstrip("/")
    if scheme in ("", "file", "sqlite", "postgresql", "mysql", "mssql"):
        return UI_DEFAULT
    return None


def runs_url(base: str, experiment_id: str, key: str | None = None) -> str:
    """The URL of an experiment's training runs table (with the saved view ``key``)."""
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return url + (f"&viewStateShareKey={key}" if key else "")


def best_words(best: Any | None, metric: str, done: list[Any], searched: list[Any]) -> str:
    """The parent's description after a search that no verdict followed (yet): the best trial
    and what it rests on."""
    if best is None:
        return (
            f"no search trial completed ({len(searched)} ran; each run's description says "
            "how it ended)"
        )
    value = best.data.metrics.get(metric, math.nan)
    return (
        f"best searched config: {best.info.run_name}, {metric} {value:.4f} at its last epoch, "
        f"the best of {len(done)} completed of {len(searched)} search trials, each at one seed; "
        "not confirmed over new seeds (a search winner's single-seed score is biased upwards: "
        "search.confirm re-runs it against the baseline)"
    )


def where_to_look(sweep: SweepConfig) -> str:
    """The lines saying how to open the sweep in MLflow's UI: the `mlflow ui` command for a
    local store, then the URL of the sweep's view (the experiment id read from the store;
    without it, the experiment's name)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from smotune.tracking.check import redact

    uri = sweep.tracking.uri
    shown, base = redact(uri), ui_base(uri)
    if base is None:
        return f"compare the trials: open {shown}  (experiment {sweep.experiment!r})"
    start = f"mlflow ui --backend-store-uri {shown}, then open " if base == UI_DEFAULT else ""
    try:
        exp = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(sweep.experiment)
    except (MlflowException, OSError):  # the store is down: the line still says where to look
        exp = None
    if exp is None:
        return f"compare the trials: {start}{redact(base)}  (experiment {sweep.experiment!r})"
    url = runs_url(redact(base), exp.experiment_id, view_key(sweep))
    return (
        f"compare the trials: {start}{url}\n"
        f"  (experiment {sweep.experiment!r}, view {view_tag_name(sweep)!r}: the runs by "
        f"{sweep.search.metric}, each run's description saying how it ended)"
    )


def view_tag_name(sweep: SweepConfig) -> str:
    return f"smotune: {sweep.name}"
