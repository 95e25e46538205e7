"""The search phase's plots: learning curves with ASHA's rungs, optimisation history,
parallel coordinates, slices (Agg PNGs from :class:`~smotune.plots.data.SweepData`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib import colormaps, colors
from matplotlib.cm import ScalarMappable
from matplotlib.lines import Line2D

from smotune.config import DIST_KINDS, Distribution
from smotune.plots.data import (
    STATUS_COLOURS,
    Skip,
    SweepData,
    figure,
    number,
    short,
    status_legend,
    with_values,
)
from smotune.rungs import rung_epochs

LABEL_PT = 8.0  # the end-of-line labels' font size, points


def learning_curves(data: SweepData, path: Path) -> None:
    fig = figure()
    ax = fig.subplots()
    drawn = [(i, t) for i, t in enumerate(data.trials) if t.curve]
    if not drawn:
        raise Skip("no trial has reported an epoch yet")
    ends = []
    for i, trial in drawn:
        xs, ys = zip(*trial.curve, strict=True)
        colour = STATUS_COLOURS.get(trial.status, "black")
        ax.plot(xs, ys, color=colour, marker=".", alpha=0.85, linewidth=1.2)
        if trial.status == "early_stopped":
            ax.plot(xs[-1], ys[-1], color=colour, marker="x", markersize=9, mew=2)
        if math.isfinite(ys[-1]):
            ends.append((xs[-1], ys[-1], number(i), colour))
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
    ax.set_title(f"{data.name}: {data.metric} per epoch, one line per trial (#: trial number)")
    status_legend(ax, [t.status for _, t in drawn])
    _end_labels(fig, ax, ends)
    fig.savefig(path)


def _end_labels(fig: Any, ax: Any, ends: list[tuple[float, float, str, str]]) -> None:
    """Each line's trial number just right of its last point. Labels that would overlap (ends
    at the same epoch, close values) are spread apart vertically, each tied to its point by a
    thin line; the y range grows if a column of labels does not fit."""
    if not ends:
        return
    fig.canvas.draw()  # the axes' size in pixels after the layout
    box = ax.get_window_extent()
    font_px = LABEL_PT * fig.dpi / 72
    left, right = ax.get_xlim()
    room = (8 + 0.65 * font_px * max(len(t) for _, _, t, _ in ends)) / max(box.width, 1.0)
    right = (right - left * room) / (1 - room)  # the right margin holds the longest label
    ax.set_xlim(left, right)
    dx = 7 / max(box.width, 1.0) * (right - left)  # 7 px right of the end (clear of an x)
    low, high = ax.get_ylim()
    gap = 1.25 * font_px * (high - low) / max(box.height, 1.0)
    columns: dict[float, list[tuple[float, str, str]]] = {}
    for x, y, text, colour in ends:
        columns.setdefault(x, []).append((y, text, colour))
    for x, column in columns.items():
        column.sort()
        placed = _spread([y for y, _, _ in column], gap, low + gap / 2, high - gap / 2)
        low, high = min(low, placed[0] - gap / 2), max(high, placed[-1] + gap / 2)
        for (y, text, colour), at in zip(column, placed, strict=True):
            moved = abs(at - y) > gap / 4
            ax.annotate(
                text,
                (x, y),
                xytext=(x + dx, at),
                fontsize=LABEL_PT,
                color=colour,
                va="center",
                bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.75},
                arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5} if moved else None,
            )
    ax.set_ylim(low, high)


def _spread(ys: list[float], gap: float, low: float, high: float) -> list[float]:
    """Sorted ``ys`` moved as little as possible so neighbours are ``gap`` apart, kept inside
    ``[low, high]`` when they fit (else they run over the top, and the caller widens)."""
    placed: list[float] = []
    for y in ys:
        placed.append(max(y, placed[-1] + gap) if placed else y)
    shift = sum(p - y for p, y in zip(placed, ys, strict=True)) / len(ys)
    placed = [p - shift for p in placed]  # centred on the ends they label
    if placed[0] < low:
        placed = [p + low - placed[0] for p in placed]
    if placed[-1] > high:
        placed = [p - (placed[-1] - high) for p in placed]
    if placed[0] < low:
        placed = [p + low - placed[0] for p in placed]
    return placed


def optimization_history(data: SweepData, path: Path) -> None:
    scored = with_values(data)
    if not scored:
        raise Skip("no trial has a value yet")
    fig = figure()
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
    ax.set_xlabel("trial number (start order, as in optuna.html and the learning curves)")
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


class Axis:
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
            return [(self.position(v), short(v)) for v in self.value]
        low, high = self.value
        return [(0.0, short(low)), (1.0, short(high))]


def parallel_coordinates(data: SweepData, path: Path) -> None:
    axes = [Axis(p, e) for p, e in data.space.items()]
    scored = [t for _, t in with_values(data) if all(p in t.params for p in data.space)]
    if not scored or not axes:
        raise Skip("no trial with a value yet")
    values = [t.value for t in scored]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    fig = figure(max(6.0, 2.2 * (len(axes) + 1)), 4.8)
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
        ax.annotate(short(v), (len(axes), y), xytext=(4, 0), textcoords="offset points")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) + 0.5)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm, viridis), ax=ax, label=f"{data.metric} (completed)")
    ax.set_title(
        f"{data.name}: searched values and final {data.metric} (grey dashed: not completed)"
    )
    fig.savefig(path)


def slice_plots(data: SweepData, path: Path) -> None:
    axes = [Axis(p, e) for p, e in data.space.items()]
    scored = [t for _, t in with_values(data)]
    if not scored or not axes:
        raise Skip("no trial with a value yet")
    fig = figure(max(4.0, 3.6 * len(axes)), 3.8)
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
            panel.set_xticks(range(len(a.value)), [short(v) for v in a.value])
            panel.set_xlim(-0.5, len(a.value) - 0.5)
        else:
            if a.kind.log:
                panel.set_xscale("log")
            panel.set_xlim(*a.value)
        panel.set_xlabel(a.path)
    panels[0].set_ylabel(f"final {data.metric}")
    status_legend(panels[-1], [t.status for t in scored])
    fig.suptitle(f"{data.name}: each searched value against final {data.metric}")
    fig.savefig(path)
