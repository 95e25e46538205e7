"""The search as Optuna sees it: an in-memory study rebuilt from the trials, fANOVA's
parameter importances, and Optuna's own interactive figures in one ``optuna.html``."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from smotune.config import Distribution
from smotune.plots.data import Skip, SweepData, figure
from smotune.space import to_optuna

log = logging.getLogger(__name__)


class _NoInMemoryStudyLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "created in memory" not in record.getMessage()


# Optuna logs "A new study created in memory" for each study: one per drawing, noise in a sweep.
logging.getLogger("optuna.storages._in_memory").addFilter(_NoInMemoryStudyLine())


def study(data: SweepData) -> optuna.Study:
    """An in-memory Optuna study of the search trials (ended ones), as the sweep's study held them:
    completed COMPLETE, stopped by ASHA PRUNED, failed FAIL, every epoch an intermediate value."""
    dists = {p: to_optuna(Distribution.model_validate(e)) for p, e in data.space.items()}
    direction = "maximize" if data.mode == "max" else "minimize"
    result = optuna.create_study(direction=direction)
    states = {
        "completed": optuna.trial.TrialState.COMPLETE,
        "early_stopped": optuna.trial.TrialState.PRUNED,
        "failed": optuna.trial.TrialState.FAIL,
    }
    for t in data.trials:
        state = states.get(t.status)
        if state is None or set(t.params) != set(dists):
            continue
        complete = state == optuna.trial.TrialState.COMPLETE
        if complete and (t.value is None or not math.isfinite(t.value)):
            continue
        curve = {e: v for e, v in t.curve if math.isfinite(v)}
        try:
            frozen = optuna.trial.create_trial(
                state=state,
                value=t.value if complete else None,
                params=t.params,
                distributions=dists,
                intermediate_values=curve,
                user_attrs={"tune_trial_id": t.label},
            )
        except ValueError as err:  # a value outside the space (the space was edited)
            log.debug("trial %s left out of the plots' study: %s", t.label, err)
            continue
        result.add_trial(frozen)
    return result


def _completed(st: optuna.Study) -> int:
    return len(st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def importances(data: SweepData, st: optuna.Study) -> dict[str, float]:
    if _completed(st) < 2:
        raise Skip("needs at least two completed trials")
    values = {t.value for t in st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    if len(values) < 2:
        raise Skip("every completed trial has the same value")
    return optuna.importance.get_param_importances(st, evaluator=_evaluator())


def _evaluator() -> optuna.importance.FanovaImportanceEvaluator:
    """fANOVA, seeded: the same trials draw the same bars (Optuna 5's default is PED-ANOVA;
    the axis says which one drew them)."""
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def param_importances(data: SweepData, st: optuna.Study, path: Path) -> None:
    found = importances(data, st)
    names = list(reversed(found))
    fig = figure(8.0, 1.2 + 0.5 * len(names))
    ax = fig.subplots()
    ax.barh(names, [found[n] for n in names], color="#2a9d8f")
    for y, n in enumerate(names):
        ax.annotate(f"{found[n]:.2f}", (found[n], y), xytext=(3, -3), textcoords="offset points")
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"importance for {data.metric} (fANOVA, sums to 1)")
    ax.set_title(f"{data.name}: parameter importances over {_completed(st)} completed trials")
    fig.savefig(path)


def optuna_html(data: SweepData, st: optuna.Study, path: Path) -> None:
    """Optuna's own interactive figures of the study, one page, plotly.js embedded once."""
    if _completed(st) < 1:
        raise Skip("no completed trial yet")
    import optuna.visualization as vis

    figures: list[tuple[str, Callable[[], Any]]] = [
        ("optimisation history", lambda: vis.plot_optimization_history(st)),
        ("intermediate values (learning curves)", lambda: vis.plot_intermediate_values(st)),
        ("parallel coordinates", lambda: vis.plot_parallel_coordinate(st)),
        ("slice", lambda: vis.plot_slice(st)),
    ]
    if _completed(st) >= 2:
        figures.append(
            (
                "parameter importances",
                lambda: vis.plot_param_importances(st, evaluator=_evaluator()),
            )
        )
    parts, first = [], True
    for title, make in figures:
        try:
            fig = make()
        except (ValueError, RuntimeError) as err:
            parts.append(f"<p>{html.escape(title)}: not drawn ({html.escape(str(err))})</p>")
            continue
        body = fig.to_html(include_plotlyjs=first, full_html=False)
        parts.append(f"<h2>{html.escape(title)}</h2>\n{body}")
        first = False
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(data.name)}: Optuna</title></head><body>\n"
        f"<h1>{html.escape(data.name)}: the search as Optuna sees it</h1>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
