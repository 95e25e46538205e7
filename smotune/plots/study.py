"""The search as Optuna sees it: an in-memory study rebuilt from the trials, fANOVA's
parameter importances, and Optuna's own interactive figures in one ``optuna.html``."""

from __future__ import annotations

import html
import logging
import math
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from smotune.config import Distribution
from smotune.plots.data import Skip, SweepData, TrialData, figure
from smotune.space import to_optuna

log = logging.getLogger(__name__)


class _NoInMemoryStudyLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "created in memory" not in record.getMessage()


# Optuna logs "A new study created in memory" for each study: one per drawing, noise in a sweep.
logging.getLogger("optuna.storages._in_memory").addFilter(_NoInMemoryStudyLine())


MIN_COMPLETED_FOR_IMPORTANCES = 10
"""Fewer completed trials than this, and no parameter importances are drawn (PNG or HTML).

fANOVA fits a random forest to the completed trials' values and splits their variance among
the parameters; it always draws bars that sum to 1, with no uncertainty. Measured with
Optuna 5's evaluator (seed 0), 2-3 uniform parameters, one of them moving the value by 3
noise standard deviations over its range, 40 repeats: it ranked that parameter first 53-70%
of the time at 5-6 completed trials (chance: 33-50%), 70-88% at 10, 90% at 15. With no effect
at all the top bar still averaged 0.6-0.68 at every n from 2 to 20. Below 10 completed trials
the bars' order is close to a coin toss, and a 0.41 / 0.41 / 0.17 split over 2 trials says
nothing; at 10 and beyond it is a hint, still to be confirmed over seeds."""


def study(data: SweepData) -> optuna.Study:
    """An in-memory Optuna study of the search trials, as the sweep's study held them: completed
    COMPLETE, stopped by ASHA PRUNED, failed FAIL, every epoch an intermediate value.

    Trial ``i`` of ``data.trials`` (start order) is the study's trial number ``i``, so
    optuna.html numbers the trials as the PNGs do (:func:`~smotune.plots.data.number`): a trial
    the study cannot hold as it ended (running, killed, outside the space) keeps its number as
    an empty FAIL trial, which no figure draws."""
    dists = {p: to_optuna(Distribution.model_validate(e)) for p, e in data.space.items()}
    direction = "maximize" if data.mode == "max" else "minimize"
    result = optuna.create_study(direction=direction)
    states = {
        "completed": optuna.trial.TrialState.COMPLETE,
        "early_stopped": optuna.trial.TrialState.PRUNED,
        "failed": optuna.trial.TrialState.FAIL,
    }
    for t in data.trials:
        result.add_trial(_frozen(t, states.get(t.status), dists))
    return result


def _frozen(t: TrialData, state: Any, dists: dict[str, Any]) -> optuna.trial.FrozenTrial:
    """The trial as the study holds it, or the empty FAIL trial that keeps its number."""
    attrs = {"tune_trial_id": t.label}
    complete = state == optuna.trial.TrialState.COMPLETE
    usable = state is not None and set(t.params) == set(dists)
    if usable and not (complete and (t.value is None or not math.isfinite(t.value))):
        try:
            return optuna.trial.create_trial(
                state=state,
                value=t.value if complete else None,
                params=t.params,
                distributions=dists,
                intermediate_values={e: v for e, v in t.curve if math.isfinite(v)},
                user_attrs=attrs,
            )
        except ValueError as err:  # a value outside the space (the space was edited)
            log.debug("trial %s is an empty trial in the plots' study: %s", t.label, err)
    return optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs)


def _completed(st: optuna.Study) -> int:
    return len(st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _importances_say_something(st: optuna.Study) -> None:
    """:class:`Skip` when importances would say more than the completed trials can
    (:data:`MIN_COMPLETED_FOR_IMPORTANCES`), or nothing at all (one value)."""
    done = _completed(st)
    if done < MIN_COMPLETED_FOR_IMPORTANCES:
        raise Skip(
            f"{done} completed trial{'s' if done != 1 else ''}; fANOVA's importances need at "
            f"least {MIN_COMPLETED_FOR_IMPORTANCES} (with fewer, their order is close to chance)"
        )
    values = {t.value for t in st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    if len(values) < 2:
        raise Skip("every completed trial has the same value")


def importances(data: SweepData, st: optuna.Study) -> dict[str, float]:
    """fANOVA's importances over the completed trials (:class:`Skip` if too few), computed
    once a study: the PNG and ``optuna.html`` share them."""
    _importances_say_something(st)
    return optuna.importance.get_param_importances(st, evaluator=evaluator(st))


class OnceFanova(optuna.importance.BaseImportanceEvaluator):
    """fANOVA, seeded (the same trials draw the same bars; Optuna 5's default is PED-ANOVA,
    the axis says which one drew them), evaluated once per study, params and target:
    ``evaluations`` counts the real ones."""

    def __init__(self) -> None:
        self.fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
        self.found: dict[Any, dict[str, float]] = {}
        self.evaluations = 0

    def evaluate(
        self,
        study: optuna.Study,
        params: list[str] | None = None,
        *,
        target: Callable[[optuna.trial.FrozenTrial], float] | None = None,
    ) -> dict[str, float]:
        key = (tuple(params) if params is not None else None, target)
        if key not in self.found:
            self.evaluations += 1
            self.found[key] = self.fanova.evaluate(study, params, target=target)
        return dict(self.found[key])


_EVALUATORS: weakref.WeakKeyDictionary[optuna.Study, OnceFanova] = weakref.WeakKeyDictionary()


def evaluator(st: optuna.Study) -> OnceFanova:
    """The study's one fANOVA evaluator (it lives as long as the study)."""
    return _EVALUATORS.setdefault(st, OnceFanova())


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
    """Optuna's own interactive figures of the study, one page, plotly.js embedded once; a
    figure the data cannot support is a line saying why in its place."""
    if _completed(st) < 1:
        raise Skip("no completed trial yet")
    import optuna.visualization as vis

    figures: list[tuple[str, Callable[[], Any]]] = [
        ("optimisation history", lambda: vis.plot_optimization_history(st)),
        ("intermediate values (learning curves)", lambda: vis.plot_intermediate_values(st)),
        ("parallel coordinates", lambda: vis.plot_parallel_coordinate(st)),
        ("slice", lambda: vis.plot_slice(st)),
    ]

    def importance_figure() -> Any:
        _importances_say_something(st)
        return vis.plot_param_importances(st, evaluator=evaluator(st))

    figures.append(("parameter importances", importance_figure))
    parts, first = [], True
    for i, (title, make) in enumerate(figures):
        try:
            fig = make()
        except (ValueError, RuntimeError, Skip) as err:
            parts.append(f"<p>{html.escape(title)}: not drawn ({html.escape(str(err))})</p>")
            continue
        # a fixed div id (plotly draws a random one): the same study writes the same bytes
        body = fig.to_html(include_plotlyjs=first, full_html=False, div_id=f"optuna-figure-{i}")
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
