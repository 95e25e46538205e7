"""The confirm phase's plot: every config's result at each shared seed, and each rival's gain.

Left, one line per seed across the configs (baseline first): runs at one seed
move together, and the lines show it. Right, each rival's gain over the
baseline with its interval (:func:`smotune.confirm.judge`, the verdict's own
numbers), against ``min_gain``: a claim is an interval clear of it.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from matplotlib import colormaps

from smotune import confirm
from smotune.plots.data import BASELINE, Skip, SweepData, figure

CLAIMED, DROPPED, OPEN = "#2a9d8f", "#8d99ae", "#e76f51"


def seed_groups(data: SweepData) -> dict[str, dict[int, float]]:
    """Config label -> seed -> final value of the confirm runs that completed (baseline first).

    Only completed runs count, as in the verdict (``confirm.collect``).
    """
    groups: dict[str, dict[int, float]] = {}
    for s in sorted(data.seeds, key=lambda s: (s.group != BASELINE, s.group, s.seed)):
        if s.status == "completed" and s.value is not None and math.isfinite(s.value):
            groups.setdefault(s.group, {})[s.seed] = s.value
    return groups


def verdict(data: SweepData) -> confirm.Verdict | None:
    """The verdict recomputed from the confirm runs (None without a baseline and a rival, or
    without the sweep's race settings)."""
    values = seed_groups(data)
    if data.race is None or BASELINE not in values or len(values) < 2:
        return None
    first, last, min_gain = data.race
    order = tuple(sorted({s.seed for s in data.seeds}))
    plan = confirm.Plan(order, first, max(last, first), min_gain, data.mode)
    groups = [confirm.Group(label, {}, values=v) for label, v in values.items()]
    return confirm.judge(groups, plan, upto=min(len(order), plan.last))


def seed_paired(data: SweepData, path: Path) -> None:
    groups = seed_groups(data)
    if not groups:
        raise Skip("no confirm run has completed")
    found = verdict(data)
    fig = figure(max(9.0, 1.6 * len(groups) + 6), 4.8)
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    labels = list(groups)
    seeds = sorted({s for v in groups.values() for s in v})
    palette = colormaps["tab10"]
    for i, seed in enumerate(seeds):
        xs = [x for x, label in enumerate(labels) if seed in groups[label]]
        ys = [groups[labels[x]][seed] for x in xs]
        left.plot(xs, ys, marker="o", color=palette(i % 10), alpha=0.8, label=f"seed {seed}")
    for x, label in enumerate(labels):
        mean = statistics.fmean(groups[label].values())
        left.plot(x, mean, "s", color="black", markersize=8, zorder=4)
        left.annotate(f"{mean:.4f}", (x, mean), xytext=(7, -3), textcoords="offset points")
    left.set_xticks(range(len(labels)), labels, rotation=15)
    left.set_xlim(-0.4, len(labels) - 0.4)
    left.set_xlabel("config (baseline, then the confirmed search trials); black: mean")
    left.set_ylabel(f"final {data.metric}")
    left.set_title("one line per seed, across configs")
    if len(seeds) <= 12:
        left.legend(fontsize="small", loc="best")
    _gains(right, found, data)
    title = f"{data.name}: {data.metric} over new shared seeds"
    fig.suptitle(title + (f"; verdict: {found.verdict}" if found and found.verdict else ""))
    fig.savefig(path)


def _gains(ax, found: confirm.Verdict | None, data: SweepData) -> None:
    """Each rival's gain over the baseline with its interval, against ``min_gain``."""
    judged = [c for c in found.comparisons if c.pairs >= 2] if found is not None else []
    if not judged:
        ax.text(0.5, 0.5, "no rival with two paired seeds yet", ha="center", va="center")
        ax.set_axis_off()
        return
    for y, c in enumerate(judged):
        colour = CLAIMED if c.claimed else DROPPED if c.dropped else OPEN
        ax.errorbar(
            c.gain,
            y,
            xerr=[[c.gain - c.lower], [c.upper - c.gain]],
            fmt="o",
            color=colour,
            capsize=5,
        )
        state = ", claimed" if c.claimed else f", dropped at {c.runs}" if c.dropped else ""
        ax.annotate(
            f"{c.gain:+.4f} over {c.pairs} seeds{state}",
            (c.gain, y),
            xytext=(0, 9),
            textcoords="offset points",
            ha="center",
            fontsize="small",
        )
    min_gain = found.design.min_gain if found.design is not None else 0.0
    ax.axvline(min_gain, color="black", linewidth=0.9, linestyle="--")
    ax.set_yticks(range(len(judged)), [c.group.label for c in judged])
    ax.set_ylim(-0.6, len(judged) - 0.4)
    ax.set_xlabel("gain per seed over the baseline\n(dashed line: min_gain)")
    ax.set_title("gain and its interval (green: claimed)")
