"""The transfer phase's plot: each config's mean at the search fidelity against the larger one's.

``transfer.png``: one point per transferred config (baseline and the best
confirmed configs), its confirmed mean at the search fidelity on x and its mean
at the transfer fidelity on y, error bars one standard deviation of its seeds on
each axis, labelled with the config and its place at each fidelity. Discordant
pairs (their order flipped) are joined by a line, dashed when the flip is within
the seed noise at the transfer fidelity. The title has Kendall's tau, Spearman's
rho, the decision accuracy with its pair count and the verdict there: the numbers
of :func:`smotune.transfer.compare`, as the sweep printed them.

The two axes are different fidelities, so their scales differ; only the order
along each axis is compared.
"""

from __future__ import annotations

import math
from pathlib import Path

from smotune import confirm, transfer
from smotune.plots.confirm import seed_groups
from smotune.plots.data import BASELINE, Skip, SweepData, figure, suptitle

HELD, FLIPPED = "#2a9d8f", "#c1121f"


def transfer_of(data: SweepData) -> transfer.Transfer | None:
    """The transfer phase recomputed from the runs (None before any transfer run completed or
    without the sweep's confirm and transfer settings): low are the completed confirm runs,
    high the completed transfer runs, every config's params from its runs."""
    if data.transfer is None or data.race is None:
        return None
    high_values: dict[str, dict[int, float]] = {}
    order = sorted(data.transfers, key=lambda s: (s.group != BASELINE, s.label))
    for s in order:
        values = high_values.setdefault(s.group, {})
        if s.status == "completed" and s.value is not None and math.isfinite(s.value):
            values[s.seed] = s.value
    if BASELINE not in high_values or not any(high_values.values()):
        return None
    params = {s.group: s.params for s in [*data.seeds, *data.transfers]}
    low = [
        confirm.Group(label, params.get(label, {}), values=v)
        for label, v in seed_groups(data).items()
    ]
    high = [
        confirm.Group(label, params.get(label, {}), values=v) for label, v in high_values.items()
    ]
    seeds, fidelity = data.transfer
    first = min(s.seed for s in data.transfers)  # every run that started, failed ones too
    plan = confirm.Plan(tuple(range(first, first + seeds)), seeds, seeds, data.race[2], data.mode)
    return transfer.compare(low, high, plan, fidelity)


def transfer_plot(data: SweepData, path: Path) -> None:
    found = transfer_of(data)
    if found is None:
        raise Skip("no transfer run has completed")
    ranked = found.ranked
    if not ranked:
        raise Skip("no config has a mean at both fidelities")
    fig = figure(8.0, 6.0)
    ax = fig.subplots()
    where = {lo.label: (lo.mean, hi.mean) for lo, hi in ranked}
    for pair in found.discordant:
        (x0, y0), (x1, y1) = where[pair.first], where[pair.second]
        style = "--" if pair.within_noise else "-"
        ax.plot([x0, x1], [y0, y1], style, color=FLIPPED, linewidth=1.0, alpha=0.7, zorder=1)
    winners = {found.winner_low, found.winner_high}
    for lo, hi in ranked:
        colour = HELD if found.held else FLIPPED if lo.label in winners else "#457b9d"
        ax.errorbar(
            lo.mean,
            hi.mean,
            xerr=lo.std if lo.n >= 2 else None,
            yerr=hi.std if hi.n >= 2 else None,
            fmt="o" if lo.label != BASELINE else "s",
            color=colour,
            capsize=4,
            zorder=3,
        )
        ax.annotate(
            f"{lo.label} ({lo.n} / {hi.n} seeds)",
            (lo.mean, hi.mean),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize="small",
        )
    ax.set_xlabel(f"{data.metric} at the search fidelity (confirmed mean ± sd of seeds)")
    ax.set_ylabel(f"{data.metric} at the transfer fidelity (mean ± sd of seeds)")
    ax.set_title(
        f"{found.fidelity}; red lines: discordant pairs (dashed: within the seed noise)",
        fontsize="small",
    )
    pairs = len(found.pairs)
    accuracy = "n/a" if not pairs else f"{found.concordant}/{pairs} pairs hold"
    tau = "n/a" if not math.isfinite(found.tau) else f"{found.tau:+.2f}"
    rho = "n/a" if not math.isfinite(found.rho) else f"{found.rho:+.2f}"
    held = {None: "", True: "; the winner held", False: "; the winner did not hold"}[found.held]
    suptitle(
        fig,
        f"{data.name}: transfer over {len(ranked)} configs: Kendall tau {tau}, Spearman rho "
        f"{rho}, decision accuracy {accuracy}{held}; verdict there: "
        f"{found.verdict.verdict or 'none'}",
    )
    fig.savefig(path)
