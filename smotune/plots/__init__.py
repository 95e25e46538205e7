"""Every plot of a sweep, drawn from plain data: PNGs (matplotlib, Agg) and Optuna's own HTML.

One module a phase: ``data`` (what is drawn), ``search``, ``study`` (Optuna's view),
``asha`` (what ASHA's rungs decided), ``confirm``, ``transfer``.

The input is a :class:`SweepData` (numbers, strings and dicts; the tracking
package reads it back from MLflow), so the same drawing serves the parent run's
artifacts during a sweep and ``smotune report`` for a sweep that ran anywhere.
Nothing here knows MLflow.

:func:`render` writes into a directory:

- ``learning_curves.png``: ``search.metric`` per epoch, one line per search
  trial, coloured by status and labelled with the trial's number at its end, an
  ``x`` where ASHA stopped a trial, ASHA's rungs as dashed lines;
- ``optimization_history.png``: each trial's final value by trial number and the
  best completed value so far;
- ``parallel_coordinates.png``: one polyline per trial over the searched values
  and the metric (completed trials coloured by value, early-stopped in grey);
- ``param_importances.png``: Optuna's fANOVA importances over the completed trials
  (from ``study.MIN_COMPLETED_FOR_IMPORTANCES`` of them on: fewer say nothing);
- ``slice.png``: each searched value against the final metric;
- ``rung_check.png`` (with ASHA, once a run ran every epoch): one panel per rung,
  each full run's value there against its last epoch's, the rung check's tau, p
  and judgement in the title;
- ``asha_stops.png`` (once ASHA stopped a trial): one panel per searched path,
  where each stopped trial sat at its rung against the completed trials' curves,
  coloured by that path's value;
- ``seed_paired.png`` (after the confirm phase): one line per seed across the
  configs, and each rival's gain over the baseline with its interval;
- ``transfer.png`` (a sweep with ``search.transfer``, once a transfer run
  completed): one point per transferred config, its mean at the search fidelity
  against the transfer fidelity's, each axis with its seeds' spread, discordant
  pairs joined; tau, rho, decision accuracy and the
  verdict there in the title;
- ``optuna.html``: Optuna's interactive figures (history, intermediate values,
  parallel coordinates, importances, slice) in one page, plotly.js embedded
  once (no network needed to open it).

A trial's number is its place in start order from 0 (``#0``, ``#1``, ...), the
number Optuna gives it in ``optuna.html``, and the report's ``#`` column.

A plot that the data cannot support yet (e.g. importances with fewer than ten
completed trials) is left out and its reason returned (``Rendered.skipped``);
in ``optuna.html`` a line says why in the figure's place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import optuna

from smotune.plots.asha import asha_stops, rung_check
from smotune.plots.confirm import seed_groups, seed_paired
from smotune.plots.confirm import verdict as confirm_verdict
from smotune.plots.data import (
    ASHA_STOPS,
    BASELINE,
    LEARNING_CURVES,
    OPTIMIZATION_HISTORY,
    OPTUNA_HTML,
    PARALLEL_COORDINATES,
    PARAM_IMPORTANCES,
    RUNG_CHECK,
    SEED_PAIRED,
    SLICE,
    STATUS_COLOURS,
    TITLES,
    TRANSFER,
    Rendered,
    SeedData,
    Skip,
    SweepData,
    TrialData,
    number,
)
from smotune.plots.search import (
    learning_curves,
    optimization_history,
    parallel_coordinates,
    slice_plots,
)
from smotune.plots.study import importances, optuna_html, param_importances, study
from smotune.plots.transfer import transfer_of, transfer_plot
from smotune.rungs import rung_epochs

log = logging.getLogger(__name__)

__all__ = [
    "ASHA_STOPS",
    "BASELINE",
    "RUNG_CHECK",
    "SEED_PAIRED",
    "STATUS_COLOURS",
    "TITLES",
    "TRANSFER",
    "Rendered",
    "SeedData",
    "SweepData",
    "TrialData",
    "confirm_verdict",
    "importances",
    "number",
    "render",
    "rung_epochs",
    "seed_groups",
    "study",
    "transfer_of",
]


def render(data: SweepData, out: str | Path) -> Rendered:
    """Draw every plot ``data`` supports into ``out``; what was written and what was left out.

    A plot that fails for any other reason is left out too, with a logged warning:
    drawing never stops the caller.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = Rendered()
    st: optuna.Study | None = None

    def the_study() -> optuna.Study:
        nonlocal st
        if st is None:
            st = study(data)
        return st

    steps: list[tuple[str, Callable[[Path], None]]] = [
        (LEARNING_CURVES, lambda p: learning_curves(data, p)),
        (OPTIMIZATION_HISTORY, lambda p: optimization_history(data, p)),
        (PARALLEL_COORDINATES, lambda p: parallel_coordinates(data, p)),
        (PARAM_IMPORTANCES, lambda p: param_importances(data, the_study(), p)),
        (SLICE, lambda p: slice_plots(data, p)),
        (RUNG_CHECK, lambda p: rung_check(data, p)),
        (ASHA_STOPS, lambda p: asha_stops(data, p)),
        (SEED_PAIRED, lambda p: seed_paired(data, p)),
        (OPTUNA_HTML, lambda p: optuna_html(data, the_study(), p)),
    ]
    if data.transfer is not None:  # a sweep without a transfer phase is not told it has none
        steps.insert(-1, (TRANSFER, lambda p: transfer_plot(data, p)))
    for name, draw in steps:
        path = out / name
        try:
            draw(path)
        except Skip as why:
            done.skipped[name] = str(why)
            path.unlink(missing_ok=True)
            continue
        except Exception as err:  # noqa: BLE001 - a plot is never worth a crash
            log.warning("plot %s of %s not drawn: %s: %s", name, data.name, type(err).__name__, err)
            done.skipped[name] = f"failed: {type(err).__name__}: {err}"
            path.unlink(missing_ok=True)
            continue
        done.files.append(name)
    return done
