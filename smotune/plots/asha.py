"""What ASHA's rungs decided, drawn: the rung check and the trials ASHA stopped.

- ``rung_check.png``: one panel per ASHA rung, one point per run that ran every
  epoch (completed search trials, completed confirm runs): its value at the rung
  against its value at the last epoch, the check's tau, p and judgement in the
  panel's title (:func:`smotune.rungs.sweep_checks`, the numbers the sweep
  printed and the parent holds).
- ``asha_stops.png``: one panel per searched path, the completed search trials'
  curves and each stopped trial's curve up to its rung (a large dot where ASHA
  stopped it), coloured by that path's value, with a colour bar. Each numeric
  path's title says in what share of (stopped, completed) pairs the stopped
  trial had the higher value (``stopped > completed in 90% of 32 pairs``; ties
  count half): a knob that stopping followed (every stopped trial had high
  smoothing) shows as a share near 0% or 100%, and in the dots' colour.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.cm import ScalarMappable
from matplotlib.lines import Line2D

from smotune.plots.data import (
    STATUS_COLOURS,
    Skip,
    SweepData,
    TrialData,
    figure,
    short,
    suptitle,
)
from smotune.plots.search import Axis
from smotune.rungs import AGREES, CHANCE, RungCheck, rung_epochs, sweep_checks

CONFIRM_COLOUR = "#264653"
JUDGEMENT_COLOURS = {AGREES: "#2a9d8f", CHANCE: "#c1121f"}
SHORT_JUDGEMENTS = {
    AGREES: "agrees better than chance",
    CHANCE: "no better than chance",
}
VALUE_COLOURS = "plasma"  # its top 15% (yellow) left out: hard to see on white
OUTSIDE = "#999999"


def _panel_title(k: int, check: RungCheck) -> str:
    head = f"rung {k}: epoch {check.epoch:g} against epoch {check.final_epoch}"
    if check.judgement not in SHORT_JUDGEMENTS:
        return f"{head}\n{check.runs} runs: too few runs to judge"
    return (
        f"{head}\n{check.runs} runs: tau {check.tau:+.2f}, p {check.p_value:.2g}, "
        f"{check.concordant}/{check.concordant + check.discordant} concordant\n"
        f"{SHORT_JUDGEMENTS[check.judgement]}"
    )


def rung_check(data: SweepData, path: Path) -> None:
    if data.asha is None:
        raise Skip("no ASHA in this sweep: no rung to check")
    checks = sweep_checks(data)
    if not checks:
        raise Skip("ASHA has no rung before the last epoch")
    if not any(c.points for c in checks):
        raise Skip("no run has run every epoch yet")
    searched = {t.label for t in data.trials}
    fig = figure(max(6.0, 4.3 * len(checks)), 4.9)
    panels = fig.subplots(1, len(checks), squeeze=False, sharey=True)[0]
    for k, (panel, check) in enumerate(zip(panels, checks, strict=True), 1):
        for label, (x, y) in check.points.items():
            if label in searched:
                panel.plot(x, y, "o", color=STATUS_COLOURS["completed"], alpha=0.85)
            else:
                panel.plot(x, y, "s", color=CONFIRM_COLOUR, alpha=0.85)
        panel.set_title(
            _panel_title(k, check),
            fontsize="medium",
            color=JUDGEMENT_COLOURS.get(check.judgement, "#555555"),
        )
        panel.set_xlabel(f"{data.metric} at epoch {check.epoch:g}")
        panel.margins(0.08)
    panels[0].set_ylabel(f"{data.metric} at epoch {data.epochs} (the last)")
    handles = [
        Line2D([], [], color=STATUS_COLOURS["completed"], marker="o", ls="", label="search trial"),
        Line2D([], [], color=CONFIRM_COLOUR, marker="s", ls="", label="confirm run (a seed)"),
    ]
    panels[-1].legend(handles=handles, loc="best", fontsize="small")
    suptitle(
        fig,
        f"{data.name}: do the runs' places at ASHA's rungs hold at the last epoch? "
        "(one point per run that ran every epoch)",
    )
    fig.savefig(path)


def _value_colours(axis: Axis) -> tuple[Any, Any, Callable[[Any], Any]]:
    """(colour map, norm, searched value -> its colour) of one searched path; grey for a value
    outside the path's space (or none)."""
    if axis.categorical:
        n = len(axis.value)
        cmap = colors.ListedColormap([colormaps["tab10"](i % 10) for i in range(n)])
        norm = colors.BoundaryNorm([i - 0.5 for i in range(n + 1)], n)

        def paint(value: Any) -> Any:
            return cmap(norm(axis.value.index(value))) if value in axis.value else OUTSIDE

        return cmap, norm, paint
    low, high = axis.value
    norm = colors.LogNorm(low, high) if axis.kind.log else colors.Normalize(low, high)
    cmap = colors.ListedColormap(colormaps[VALUE_COLOURS](np.linspace(0.0, 0.85, 256)))
    return cmap, norm, lambda value: OUTSIDE if value is None else cmap(norm(value))


def higher_share(stopped: list[Any], completed: list[Any]) -> tuple[float, int] | None:
    """(share of (stopped, completed) pairs where the stopped trial's value is the higher, ties
    counting half; the pair count), or None without a pair."""
    pairs = [(s, c) for s in stopped for c in completed]
    if not pairs:
        return None
    wins = sum(1.0 if s > c else 0.5 if s == c else 0.0 for s, c in pairs)
    return wins / len(pairs), len(pairs)


def _spread(stopped: list[TrialData]) -> dict[str, float]:
    """A small x offset per stopped trial, so dots at one rung with close values stay apart."""
    offsets: dict[str, float] = {}
    by_epoch: dict[int, list[TrialData]] = {}
    for t in stopped:
        by_epoch.setdefault(t.curve[-1][0], []).append(t)
    for group in by_epoch.values():
        group.sort(key=lambda t: t.curve[-1][1])
        step = min(0.06, 0.3 / len(group))
        for i, t in enumerate(group):
            offsets[t.label] = (i - (len(group) - 1) / 2) * step
    return offsets


def asha_stops(data: SweepData, path: Path) -> None:
    stopped = [t for t in data.trials if t.status == "early_stopped" and t.curve]
    if not stopped:
        raise Skip("ASHA stopped no trial")
    axes = [Axis(p, e) for p, e in data.space.items()]
    if not axes:
        raise Skip("nothing searched")
    completed = [t for t in data.trials if t.status == "completed" and t.curve]
    offsets = _spread(stopped)
    fig = figure(max(6.0, 4.6 * len(axes)), 4.9)
    panels = fig.subplots(1, len(axes), squeeze=False, sharey=True)[0]
    for panel, axis in zip(panels, axes, strict=True):
        cmap, norm, paint = _value_colours(axis)
        for t in completed:
            xs, ys = zip(*t.curve, strict=True)
            colour = paint(t.params.get(axis.path))
            panel.plot(xs, ys, color=colour, linewidth=1.4, alpha=0.85, marker=".")
        for t in stopped:
            xs, ys = zip(*t.curve, strict=True)
            colour = paint(t.params.get(axis.path))
            panel.plot(xs, ys, color=colour, linewidth=0.9, linestyle="--", alpha=0.7)
            x = xs[-1] + offsets[t.label]
            panel.plot(x, ys[-1], "o", color=colour, markersize=10, mec="black")
        if data.asha is not None:
            for rung in rung_epochs(*data.asha, data.epochs):
                panel.axvline(rung, color="#555555", linestyle=":", linewidth=0.8)
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=panel, pad=0.02)
        bar.set_label(axis.path)
        if axis.categorical:
            bar.set_ticks(range(len(axis.value)), labels=[short(v) for v in axis.value])
        title = axis.path
        if not axis.categorical:
            values = {t.label: t.params.get(axis.path) for t in (*stopped, *completed)}
            share = higher_share(
                [values[t.label] for t in stopped if values[t.label] is not None],
                [values[t.label] for t in completed if values[t.label] is not None],
            )
            if share is not None:
                title += f"\nstopped > completed in {share[0]:.0%} of {share[1]} pairs"
        panel.set_title(title, fontsize="medium")
        panel.set_xlim(0.7, max(data.epochs, 1) + 0.3)
        panel.xaxis.get_major_locator().set_params(integer=True)
        panel.set_xlabel("epoch (dotted: ASHA's rungs)")
    panels[0].set_ylabel(data.metric)
    handles = [
        Line2D([], [], color="#777777", marker=".", label=f"completed ({len(completed)})"),
        Line2D(
            [],
            [],
            color="#777777",
            ls="--",
            marker="o",
            mec="black",
            markersize=8,
            label=f"stopped by ASHA ({len(stopped)})",
        ),
    ]
    panels[0].legend(handles=handles, loc="best", fontsize="small")
    suptitle(
        fig,
        f"{data.name}: where ASHA stopped trials, against the completed trials' curves; "
        "colour: each searched value",
    )
    fig.savefig(path)
