"""What the plots draw (plain data, no MLflow) and what every plot shares.

:class:`SweepData` is a sweep as numbers, strings and dicts (``smotune.tracking.history``
reads it back from MLflow), so the same drawing serves the parent run's artifacts
during a sweep and ``smotune report`` for a sweep that ran anywhere.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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
SEED_PAIRED = "seed_paired.png"
TRANSFER = "transfer.png"
RUNG_CHECK = "rung_check.png"
ASHA_STOPS = "asha_stops.png"
OPTUNA_HTML = "optuna.html"
TITLES = {
    LEARNING_CURVES: "Learning curves",
    OPTIMIZATION_HISTORY: "Optimisation history",
    PARALLEL_COORDINATES: "Parallel coordinates",
    PARAM_IMPORTANCES: "Parameter importances",
    SLICE: "Slice plots",
    SEED_PAIRED: "Seed-paired results and the gain over the baseline (confirm phase)",
    TRANSFER: "Transfer: each config's mean at the search fidelity against the transfer "
    "fidelity's, with its seeds' spread",
    RUNG_CHECK: "Rung check: each full run's value at ASHA's rungs against its last epoch's",
    ASHA_STOPS: "Where ASHA stopped trials, coloured by each searched value",
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
    label: str = ""  # the run's Tune trial id ("" when not known)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, search.metric)


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
    race: tuple[int, int, float] | None = None  # search.confirm's (seeds, max_seeds, min_gain)
    transfers: list[SeedData] = field(default_factory=list)  # the transfer runs (other fidelity)
    transfer: tuple[int, str] | None = None  # search.transfer's (seeds, fidelity in words)

    @property
    def sign(self) -> float:
        return 1.0 if self.mode == "max" else -1.0


@dataclass
class Rendered:
    """What :func:`render` wrote (file names, in display order) and what it left out, and why;
    which of the files a caller that stores them stored (those whose bytes changed)."""

    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)


def figure(width: float = 8.0, height: float = 4.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state (the writer is a thread)
    return fig


def suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width (a narrow figure would cut a long one)."""
    width = max(30, int(fig.get_figwidth() * 11))  # characters of a medium font per inch
    fig.suptitle(textwrap.fill(text, width), fontsize="large")


def status_legend(ax: Any, statuses: list[str], marker: str = "o") -> None:
    counts = {s: statuses.count(s) for s in STATUS_COLOURS if s in statuses}
    handles = [
        Line2D([], [], color=STATUS_COLOURS[s], marker=marker, label=f"{STATUS_WORDS[s]} ({n})")
        for s, n in counts.items()
    ]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize="small")


class Skip(Exception):
    """The data cannot support this plot yet (the reason is the message)."""


def number(i: int) -> str:
    """Trial ``i`` (start order from 0, Optuna's trial number in optuna.html) as plots label it."""
    return f"#{i}"


def with_values(data: SweepData) -> list[tuple[int, TrialData]]:
    """(trial number: start order from 0, trial) of the trials with a final value."""
    return [
        (i, t) for i, t in enumerate(data.trials) if t.value is not None and math.isfinite(t.value)
    ]


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
