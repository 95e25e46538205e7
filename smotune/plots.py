"""Every plot of a sweep, drawn from plain data: PNGs (matplotlib, Agg) and Optuna's own HTML.

The input is a :class:`SweepData` (numbers, strings and dicts; the tracking
package reads it back from MLflow), so the same drawing serves the parent run's
artifacts during a sweep and ``smotune report`` for a sweep that ran anywhere.
Nothing here knows MLflow.

:func:`render` writes into a directory:

- ``learning_curves.png``: ``search.metric`` per epoch, one line per search
  trial, coloured by status, an ``x`` where ASHA stopped a trial, ASHA's rungs
  as dashed lines;
- ``optimization_history.png``: each trial's final value in start order and the
  best completed value so far;
- ``parallel_coordinates.png``: one polyline per trial over the searched values
  and the metric (completed trials coloured by value, early-stopped in grey);
- ``param_importances.png``: Optuna's fANOVA importances over the completed trials;
- ``slice.png``: each searched value against the final metric;
- ``seed_spread.png`` (after the confirm phase): per config, one point per
  seed, mean ± std;
- ``optuna.html``: Optuna's interactive figures (history, intermediate values,
  parallel coordinates, importances, slice) in one page, plotly.js embedded
  once (no network needed to open it).

A plot that the data cannot support yet (e.g. importances with fewer than two
completed trials) is left out and its reason returned.
"""

from __future__ import annotations

import html
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from matplotlib import colormaps, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from smotune.config import DIST_KINDS, Distribution
from smotune.rungs import rung_epochs
from smotune.space import to_optuna

log = logging.getLogger(__name__)

STATUS_COLOURS = {
    "completed": "#2a9d8f",
    "early_stopped": "#e76f51",
    "failed": "#c1121f",
    "killed": "#8d99ae",
    "running": "#457b9d",
}
STATUS_WORDS = {
    "completed": "completed",
    "early_stopped": "stopped by ASHA",
    "failed": "failed",
    "killed": "killed",
    "running": "running",
}
BASELINE = "baseline"
DPI = 100

LEARNING_CURVES = "learning_curves.png"
OPTIMIZATION_HISTORY = "optimization_history.png"
PARALLEL_COORDINATES = "parallel_coordinates.png"
PARAM_IMPORTANCES = "param_importances.png"
SLICE = "slice.png"
SEED_SPREAD = "seed_spread.png"
OPTUNA_HTML = "optuna.html"
TITLES = {
    LEARNING_CURVES: "Learning curves",
    OPTIMIZATION_HISTORY: "Optimisation history",
    PARALLEL_COORDINATES: "Parallel coordinates",
    PARAM_IMPORTANCES: "Parameter importances",
    SLICE: "Slice plots",
    SEED_SPREAD: "Seed spread (confirm phase)",
    OPTUNA_HTML: "Optuna's interactive figures",
}


@dataclass(frozen=True)
class TrialData:
    """One search trial: its searched values, its metric per epoch, how it ended."""

    label: str  # the Tune trial id
    status: str  # completed, early_stopped, failed, killed or running
    params: dict[str, Any]  # searched path -> value
    curve: list[tuple[int, float]]  # (epoch, search.metric), epochs ascending
    value: float | None  # the final search.metric (None: never reported)
    epochs_run: int = 0
    reason: str = ""


@dataclass(frozen=True)
class SeedData:
    """One confirm run: the config it re-runs (``baseline`` or a search trial id), its seed."""

    group: str
    seed: int
    status: str
    value: float | None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepData:
    """A sweep as the plots and the report need it."""

    name: str
    metric: str
    mode: str  # max or min
    epochs: int
    space: dict[str, dict[str, Any]]  # searched path -> its space entry, e.g. {"uniform": [0, 1]}
    asha: tuple[int, float] | None  # (grace, reduction), None without ASHA
    trials: list[TrialData]  # the search trials, in start order
    seeds: list[SeedData] = field(default_factory=list)  # the confirm runs
    verdict: str | None = None
    run_id: str = ""
    run_name: str = ""
    best_trial: str | None = None
    parent_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def sign(self) -> float:
        return 1.0 if self.mode == "max" else -1.0


@dataclass
class Rendered:
    """What :func:`render` wrote (file names, in display order) and what it left out, and why."""

    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class _NoInMemoryStudyLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "created in memory" not in record.getMessage()


# Optuna logs "A new study created in memory" for each study: one per drawing, noise in a sweep.
logging.getLogger("optuna.storages._in_memory").addFilter(_NoInMemoryStudyLine())


def _figure(width: float = 8.0, height: float = 4.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state (the writer is a thread)
    return fig


def _status_legend(ax: Any, statuses: list[str], marker: str = "o") -> None:
    counts = {s: statuses.count(s) for s in STATUS_COLOURS if s in statuses}
    handles = [
        Line2D([], [], color=STATUS_COLOURS[s], marker=marker, label=f"{STATUS_WORDS[s]} ({n})")
        for s, n in counts.items()
    ]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize="small")


def learning_curves(data: SweepData, path: Path) -> None:
    fig = _figure()
    ax = fig.subplots()
    drawn = [t for t in data.trials if t.curve]
    if not drawn:
        raise _Skip("no trial has reported an epoch yet")
    for trial in drawn:
        xs, ys = zip(*trial.curve, strict=True)
        colour = STATUS_COLOURS.get(trial.status, "black")
        ax.plot(xs, ys, color=colour, marker=".", alpha=0.85, linewidth=1.2)
        if trial.status == "early_stopped":
            ax.plot(xs[-1], ys[-1], color=colour, marker="x", markersize=9, mew=2)
    if data.asha is not None:
        for k, rung in enumerate(rung_epochs(*data.asha, data.epochs)):
            ax.axvline(rung, color="#555555", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"ASHA rung {k + 1}",
                (rung, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize="small",
                color="#555555",
            )
    ax.set_xlim(0.8, max(data.epochs, 1) + 0.2)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(data.metric)
    ax.set_title(f"{data.name}: {data.metric} per epoch, one line per trial")
    _status_legend(ax, [t.status for t in drawn])
    fig.savefig(path)


def _scored(data: SweepData) -> list[tuple[int, TrialData]]:
    """(start order from 1, trial) of the trials with a final value."""
    return [
        (i, t)
        for i, t in enumerate(data.trials, 1)
        if t.value is not None and math.isfinite(t.value)
    ]


def optimization_history(data: SweepData, path: Path) -> None:
    scored = _scored(data)
    if not scored:
        raise _Skip("no trial has a value yet")
    fig = _figure()
    ax = fig.subplots()
    for i, t in scored:
        colour = STATUS_COLOURS.get(t.status, "black")
        filled = t.status == "completed"
        ax.plot(i, t.value, "o", color=colour, mfc=colour if filled else "white", mew=1.5)
    best, xs, ys = None, [], []
    for i, t in scored:
        if t.status == "completed" and (best is None or data.sign * t.value > data.sign * best):
            best = t.value
        if best is not None:
            xs.append(i)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#264653", label="best completed so far")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(f"final {data.metric}")
    ax.set_title(f"{data.name}: optimisation history ({data.mode})")
    handles = [
        Line2D([], [], color=STATUS_COLOURS["completed"], marker="o", ls="", label="completed"),
        Line2D(
            [],
            [],
            color=STATUS_COLOURS["early_stopped"],
            marker="o",
            mfc="white",
            ls="",
            label="stopped by ASHA (value at its last epoch)",
        ),
    ]
    if xs:
        handles.append(Line2D([], [], color="#264653", label="best completed so far"))
    ax.legend(handles=handles, loc="best", fontsize="small")
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path)


class _Axis:
    """One searched path as a [0, 1] axis: bounds (log for loguniform) or evenly spaced choices."""

    def __init__(self, path: str, entry: dict[str, Any]):
        dist = Distribution.model_validate(entry)
        self.path = path
        self.kind = DIST_KINDS[dist.kind]
        self.value = dist.value

    @property
    def categorical(self) -> bool:
        return self.kind.shape == "choices"

    def position(self, value: Any) -> float | None:
        if self.categorical:
            if value not in self.value:
                return None
            n = len(self.value)
            return 0.5 if n == 1 else self.value.index(value) / (n - 1)
        low, high = self.value
        if self.kind.log:
            low, high, value = math.log(low), math.log(high), math.log(value)
        return (value - low) / (high - low)

    def ticks(self) -> list[tuple[float, str]]:
        if self.categorical:
            return [(self.position(v), _short(v)) for v in self.value]
        low, high = self.value
        return [(0.0, _short(low)), (1.0, _short(high))]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def parallel_coordinates(data: SweepData, path: Path) -> None:
    axes = [_Axis(p, e) for p, e in data.space.items()]
    scored = [t for _, t in _scored(data) if all(p in t.params for p in data.space)]
    if not scored or not axes:
        raise _Skip("no trial with a value yet")
    values = [t.value for t in scored]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    fig = _figure(max(6.0, 2.2 * (len(axes) + 1)), 4.8)
    ax = fig.subplots()
    norm = colors.Normalize(low, high)
    viridis = colormaps["viridis"]
    order = sorted(scored, key=lambda t: (t.status == "completed", data.sign * t.value))
    for t in order:
        ys = [a.position(t.params[a.path]) for a in axes] + [(t.value - low) / span]
        if any(y is None for y in ys):
            continue
        if t.status == "completed":
            ax.plot(range(len(ys)), ys, color=viridis(norm(t.value)), linewidth=1.8, alpha=0.9)
        else:
            ax.plot(range(len(ys)), ys, color="#b0b0b0", linewidth=1.0, linestyle="--")
    names = [a.path for a in axes] + [data.metric]
    for x, a in enumerate(axes):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, text in a.ticks():
            ax.annotate(text, (x, y), xytext=(4, 0), textcoords="offset points", fontsize="small")
    ax.axvline(len(axes), color="black", linewidth=0.8)
    for y, v in ((0.0, low), (1.0, high)):
        ax.annotate(_short(v), (len(axes), y), xytext=(4, 0), textcoords="offset points")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) + 0.5)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm, viridis), ax=ax, label=f"{data.metric} (completed)")
    ax.set_title(
        f"{data.name}: searched values and final {data.metric} (grey dashed: not completed)"
    )
    fig.savefig(path)


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
        raise _Skip("needs at least two completed trials")
    values = {t.value for t in st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    if len(values) < 2:
        raise _Skip("every completed trial has the same value")
    return optuna.importance.get_param_importances(st, evaluator=_evaluator())


def _evaluator() -> optuna.importance.FanovaImportanceEvaluator:
    """fANOVA, seeded: the same trials draw the same bars (Optuna 5's default is PED-ANOVA;
    the axis says which one drew them)."""
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def param_importances(data: SweepData, st: optuna.Study, path: Path) -> None:
    found = importances(data, st)
    names = list(reversed(found))
    fig = _figure(8.0, 1.2 + 0.5 * len(names))
    ax = fig.subplots()
    ax.barh(names, [found[n] for n in names], color="#2a9d8f")
    for y, n in enumerate(names):
        ax.annotate(f"{found[n]:.2f}", (found[n], y), xytext=(3, -3), textcoords="offset points")
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"importance for {data.metric} (fANOVA, sums to 1)")
    ax.set_title(f"{data.name}: parameter importances over {_completed(st)} completed trials")
    fig.savefig(path)


def slice_plots(data: SweepData, path: Path) -> None:
    axes = [_Axis(p, e) for p, e in data.space.items()]
    scored = [t for _, t in _scored(data)]
    if not scored or not axes:
        raise _Skip("no trial with a value yet")
    fig = _figure(max(4.0, 3.6 * len(axes)), 3.8)
    panels = fig.subplots(1, len(axes), sharey=True, squeeze=False)[0]
    for panel, a in zip(panels, axes, strict=True):
        for t in scored:
            if a.path not in t.params:
                continue
            colour = STATUS_COLOURS.get(t.status, "black")
            filled = t.status == "completed"
            x = t.params[a.path]
            if a.categorical:
                if x not in a.value:
                    continue
                x = a.value.index(x)
            panel.plot(x, t.value, "o", color=colour, mfc=colour if filled else "white", mew=1.5)
        if a.categorical:
            panel.set_xticks(range(len(a.value)), [_short(v) for v in a.value])
            panel.set_xlim(-0.5, len(a.value) - 0.5)
        else:
            if a.kind.log:
                panel.set_xscale("log")
            panel.set_xlim(*a.value)
        panel.set_xlabel(a.path)
    panels[0].set_ylabel(f"final {data.metric}")
    _status_legend(panels[-1], [t.status for t in scored])
    fig.suptitle(f"{data.name}: each searched value against final {data.metric}")
    fig.savefig(path)


def seed_groups(data: SweepData) -> dict[str, dict[int, float]]:
    """Config label -> seed -> final value of the confirm runs that completed (baseline first).

    Only completed runs count, as in the verdict (``confirm.collect``).
    """
    groups: dict[str, dict[int, float]] = {}
    for s in sorted(data.seeds, key=lambda s: (s.group != BASELINE, s.group, s.seed)):
        if s.status == "completed" and s.value is not None and math.isfinite(s.value):
            groups.setdefault(s.group, {})[s.seed] = s.value
    return groups


def seed_spread(data: SweepData, path: Path) -> None:
    groups = seed_groups(data)
    if not groups:
        raise _Skip("no confirm run has completed")
    fig = _figure(max(6.5, 1.8 * len(groups) + 2), 4.8)
    ax = fig.subplots()
    for x, (label, values) in enumerate(groups.items()):
        seeds = sorted(values)
        n = len(seeds)
        offsets = [(i - (n - 1) / 2) * 0.08 for i in range(n)]
        colour = "#8d99ae" if label == BASELINE else "#2a9d8f"
        ax.scatter([x + o for o in offsets], [values[s] for s in seeds], color=colour, zorder=3)
        for o, s in zip(offsets, seeds, strict=True):
            ax.annotate(f"seed {s}", (x + o, values[s]), xytext=(5, 0), textcoords="offset points")
        mean = statistics.fmean(values.values())
        std = statistics.stdev(values.values()) if n >= 2 else 0.0
        ax.errorbar(x + 0.3, mean, yerr=std, fmt="s", color="black", capsize=6, zorder=4)
        text = f"{mean:.4f} ± {std:.4f}" if n >= 2 else f"{mean:.4f} (1 seed)"
        ax.annotate(text, (x + 0.3, mean), xytext=(8, 0), textcoords="offset points")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_xlim(-0.5, len(groups) - 0.5 + 0.6)
    ax.set_xlabel("config (baseline, then the confirmed search trials)")
    ax.set_ylabel(f"final {data.metric}")
    verdict = f"\nverdict: {data.verdict}" if data.verdict else ""
    ax.set_title(f"{data.name}: {data.metric} over new seeds (mean ± std){verdict}")
    fig.savefig(path)


def optuna_html(data: SweepData, st: optuna.Study, path: Path) -> None:
    """Optuna's own interactive figures of the study, one page, plotly.js embedded once."""
    if _completed(st) < 1:
        raise _Skip("no completed trial yet")
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


class _Skip(Exception):
    """The data cannot support this plot yet (the reason is the message)."""


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
        (SEED_SPREAD, lambda p: seed_spread(data, p)),
        (OPTUNA_HTML, lambda p: optuna_html(data, the_study(), p)),
    ]
    for name, draw in steps:
        path = out / name
        try:
            draw(path)
        except _Skip as why:
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
