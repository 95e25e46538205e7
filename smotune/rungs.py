"""Does ASHA's order at a rung hold at the final epoch? Rank agreement per rung, with a test.

ASHA stops trials at its rungs (``schedule.asha.grace * reduction**k`` epochs) by
their order at that epoch. The runs that ran every epoch (search trials ASHA kept,
confirm runs) show whether that order is the one the last epoch gives: each pair of
runs is concordant (the same run leads at the rung and at the final epoch),
discordant, or tied at either epoch. Per rung: the pair counts, the share of
concordant pairs among the untied ones, Kendall's tau (tau-b, corrected for ties;
scipy's value) and a one-sided p-value for "the rung's order agrees with the final
one no better than chance" (H0: the rung values are exchangeable across runs given
the final values, i.e. the two orders are independent):

- no ties, at most ``SMALL`` runs: exact. The discordant pairs are then the
  inversions of a uniformly random permutation, whose distribution (Mahonian) a
  small dynamic program builds;
- ties, at most ``SMALL`` runs: a permutation test of C - D over ``PERMUTATIONS``
  fixed random reorderings of the rung values, p = (1 + #{S* >= S}) / (1 + B);
- more runs: the normal approximation with the tie-corrected variance (scipy's
  ``asymptotic``).

Judgements: ``agrees`` (p <= ``ALPHA``), ``no_better_than_chance`` (the warning),
``too_few_runs`` when even a rung order in perfect agreement with the final one
could not reach ``ALPHA`` (3 untied runs: 1/3! = 0.17; every run tied at chance).
Their error rates are measured by simulating :func:`check_rung` itself
(``tests/test_rungs.py``, ``bench/rung_check.py``, BENCHMARKS.md).

"No better than chance" means "not shown to agree", not "shown to disagree": with
12 runs a rung whose value correlates 0.6 with the final one is judged to agree in
about 58% of draws (BENCHMARKS.md). The mode does not change tau or p (both orders
flip together); it sets ``best_place``. Caveat: a search trial reaches the final
epoch only by passing the rungs, so among search trials the check sees the
survivors' order, not the stopped trials'.

In a sweep (:func:`sweep_checks`, one function for the sweep's end, the parent's
metrics and ``smotune report``) the runs are every run that ran every epoch: the
completed search trials and the completed confirm runs, each a point of its own
(a run at one seed, as ASHA compares runs). The confirm runs passed no rung (they
run without early stopping), so they are the part of the check free of the
survivor bias above; they are the top configs and the baseline, chosen by their
final search value, not by their rung values. Several seeds of one config (and
that config's search trial) are kept apart, not averaged: ASHA decides on one run
at one seed, so whether a run's place at the rung holds at its own end is the
question, and a seed that is behind at the rung but ahead at the end (seed noise
the rung cannot see through) is exactly what misleads it. So among the confirm
runs tau measures the order of runs, config and seed together: where seeds move a
config's result more than the configs differ, a low tau says the rung cannot order
runs, which is also all that ASHA's stops rest on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import norm

if TYPE_CHECKING:
    from smotune.plots.data import SweepData

ALPHA = 0.05  # one-sided level of "agrees better than chance"
SMALL = 50  # up to this many runs: exact (no ties) or permutation (ties); above: normal
PERMUTATIONS = 2000  # reorderings of the permutation test (fixed seed: a run's check is stable)
AGREES = "agrees"
CHANCE = "no_better_than_chance"
TOO_FEW = "too_few_runs"
JUDGEMENT_WORDS = {
    AGREES: "the rung's order agrees with the final one better than chance",
    CHANCE: "the rung's order agrees with the final one no better than chance",
    TOO_FEW: "too few runs to judge",
}
RUNS_NEEDED = next(n for n in range(1, 20) if 1 / math.factorial(n) <= ALPHA)  # 4 at 0.05


def rung_epochs(grace: int, reduction: float, epochs: int) -> list[float]:
    """The epochs at which ASHA (Ray's, one bracket) compares trials, below the last epoch.

    Ray's ``_Bracket``: ``grace * reduction**k`` for ``k < int(log(max_t/grace)/log(reduction)
    + 1)``; ``tests/test_plots.py`` checks this against Ray's own scheduler.
    """
    grace = min(grace, epochs)
    count = int(math.log(epochs / grace) / math.log(reduction) + 1)
    return [grace * reduction**k for k in range(count) if grace * reduction**k < epochs]


@dataclass(frozen=True)
class RungCheck:
    """One rung's order against the final epoch's, over the runs that have both values."""

    epoch: float  # ASHA's rung; a run's value is read at its first epoch >= it, as ASHA reads it
    final_epoch: int
    points: dict[str, tuple[float, float]]  # run label -> (value at the rung, at the final epoch)
    pairs: int  # runs * (runs - 1) / 2
    concordant: int
    discordant: int
    ties: int  # pairs tied at the rung, at the final epoch or at both (neither of the above)
    concordance: float  # concordant / (concordant + discordant); nan without an untied pair
    tau: float  # Kendall's tau-b; nan when every run ties at one of the epochs
    p_value: float  # one-sided, H0: the rung's order is independent of the final order
    min_p: float  # the smallest p these runs (and their ties) can reach
    method: str  # "exact", "permutation" or "normal"
    judgement: str  # AGREES, CHANCE or TOO_FEW
    best_place: int | None  # the final epoch's best run's place at the rung (1 = first)

    @property
    def runs(self) -> int:
        return len(self.points)

    def words(self) -> str:
        head = f"epoch {self.epoch:g} against epoch {self.final_epoch}, {self.runs} runs"
        if self.judgement == TOO_FEW:
            return (
                f"{head}: too few runs to judge ({self.ties} of {self.pairs} pairs tied; the "
                f"smallest p they can reach is {self.min_p:.2g} > {ALPHA}): it takes at least "
                f"{RUNS_NEEDED} runs whose values differ at both epochs"
            )
        return (
            f"{head}: Kendall tau {self.tau:+.2f}, {self.concordant} of "
            f"{self.concordant + self.discordant} untied pairs concordant "
            f"({self.concordance:.0%}), {self.ties} tied; p {self.p_value:.2g} "
            f"({self.method}): {JUDGEMENT_WORDS[self.judgement]}"
        )


def check_rung(
    points: Mapping[str, tuple[float, float]], epoch: float, final_epoch: int, mode: str
) -> RungCheck:
    """The agreement of the runs' order at ``epoch`` with their order at ``final_epoch``.

    ``points``: run label -> (value at the rung, value at the final epoch), finite values.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    x = np.array([v[0] for v in points.values()], dtype=float)
    y = np.array([v[1] for v in points.values()], dtype=float)
    i, j = np.triu_indices(len(x), 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs = len(i)
    concordant, discordant = int(np.sum(sx * sy > 0)), int(np.sum(sx * sy < 0))
    untied = concordant + discordant
    tied_x, tied_y = int(np.sum(sx == 0)), int(np.sum(sy == 0))
    denom = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    p_value, min_p, method = _p_values(x, y, sx, sy, i, j)
    judgement = TOO_FEW if min_p > ALPHA else AGREES if p_value <= ALPHA else CHANCE
    return RungCheck(
        epoch=epoch,
        final_epoch=final_epoch,
        points=dict(points),
        pairs=pairs,
        concordant=concordant,
        discordant=discordant,
        ties=pairs - untied,
        concordance=concordant / untied if untied else math.nan,
        tau=(concordant - discordant) / denom if denom else math.nan,
        p_value=p_value,
        min_p=min_p,
        method=method,
        judgement=judgement,
        best_place=_best_place(x, y, mode),
    )


def check_rungs(
    curves: Mapping[str, Mapping[int, float]], rungs: Sequence[float], final_epoch: int, mode: str
) -> list[RungCheck]:
    """:func:`check_rung` at each rung below ``final_epoch``, over the runs with both values.

    ``curves``: run label -> {epoch: value} of ``search.metric`` (runs that ran every
    epoch; a run without a finite value at the final epoch or at the rung is left out).
    """
    checks = []
    for epoch in rungs:
        if epoch >= final_epoch:
            continue
        points = {}
        for label in sorted(curves):
            curve = curves[label]
            at = [e for e in curve if e >= epoch]
            final = curve.get(final_epoch)
            if final is None or not at:
                continue
            value = curve[min(at)]
            if math.isfinite(value) and math.isfinite(final):
                points[label] = (float(value), float(final))
        checks.append(check_rung(points, epoch, final_epoch, mode))
    return checks


def warning(checks: Sequence[RungCheck], grace: int, reduction: float) -> str | None:
    """What to tell the user when ASHA's first rung does not earn its stops, or None.

    ``grace`` and ``reduction``: the sweep's ``schedule.asha`` values.
    """
    if not checks or checks[0].judgement == AGREES:
        return None
    first = checks[0]
    if first.judgement == TOO_FEW:
        return (
            f"rung check, ASHA's first rung: {first.words()}; search.confirm's runs (its top "
            "configs x seeds) run every epoch and count here"
        )
    later = next((c for c in checks[1:] if c.judgement == AGREES), None)
    where = (
        f"at epoch {later.epoch:g} the order agrees, tau {later.tau:+.2f}, p {later.p_value:.2g}"
        if later
        else "no later rung agrees either"
    )
    return (
        f"rung check: at ASHA's first rung (epoch {first.epoch:g}) the order of {first.runs} "
        f"full runs agrees with their order at epoch {first.final_epoch} no better than chance "
        f"(Kendall tau {first.tau:+.2f}, {first.concordant} of "
        f"{first.concordant + first.discordant} untied pairs concordant, p "
        f"{first.p_value:.2g}): nothing shows that ASHA's stops there follow the final result "
        "(with few runs a rung that does can fail this check too; see BENCHMARKS.md). "
        f"In the sweep file: a later schedule.asha.grace (now {grace}; {where}); a smaller "
        f"schedule.asha.reduction (now {reduction:g}; each rung keeps the best 1/reduction of "
        "its trials, so 2 keeps half); or no early stopping (schedule: {asha: null})"
    )


def _p_values(x, y, sx, sy, i, j) -> tuple[float, float, str]:
    """(p, smallest reachable p, method) of S = C - D against its null distribution."""
    n = len(x)
    s = float(np.sum(sx * sy))
    # S of the rung values laid in the final order: the most agreement the ties allow
    comonotone = np.empty(n)
    comonotone[np.argsort(y, kind="stable")] = np.sort(x)
    s_max = float(np.sum(np.sign(comonotone[i] - comonotone[j]) * sy))
    if not np.any(sx) or not np.any(sy):  # every pair tied at one epoch: S is 0 whatever the order
        return 1.0, 1.0, "exact"
    ties = not np.all(sx) or not np.all(sy)
    if n <= SMALL and not ties:
        cdf = _inversions_cdf(n)
        return min(1.0, float(cdf[int(np.sum(sx * sy < 0))])), float(cdf[0]), "exact"
    if n <= SMALL:
        first, second = _permuted_pairs(n)  # each pair's runs after each reordering
        null = np.sign(x[first] - x[second]) @ sy
        return (
            (1 + int(np.sum(null >= s))) / (1 + PERMUTATIONS),
            (1 + int(np.sum(null >= s_max))) / (1 + PERMUTATIONS),
            "permutation",
        )
    sd = math.sqrt(_variance_s(x, y))
    return float(norm.sf(s / sd)), float(norm.sf(s_max / sd)), "normal"


@functools.cache
def _inversions_cdf(n: int) -> np.ndarray:
    """P(D <= k), k = 0 .. n(n-1)/2, for D the inversions of a uniformly random permutation.

    Inserting the m-th element adds 0 .. m-1 inversions, equally likely:
    f_m(k) = (f_{m-1}(k) + ... + f_{m-1}(k - m + 1)) / m, a window sum over a cumulative sum.
    """
    f = np.ones(1)
    for m in range(2, n + 1):
        c = np.cumsum(np.concatenate([f, np.zeros(m - 1)]))
        c[m:] = c[m:] - c[:-m]
        f = c / m
    return np.cumsum(f)


@functools.cache
def _permuted_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``PERMUTATIONS`` fixed reorderings of n runs, the runs at each pair's two places."""
    order = np.argsort(np.random.default_rng(20261204 + n).random((PERMUTATIONS, n)), axis=1)
    i, j = np.triu_indices(n, 1)
    return order[:, i], order[:, j]


def _variance_s(x: np.ndarray, y: np.ndarray) -> float:
    """Var(C - D) under H0 with ties (Kendall 1970; scipy's asymptotic kendalltau)."""
    n = len(x)
    tx = np.unique(x, return_counts=True)[1].astype(float)
    ty = np.unique(y, return_counts=True)[1].astype(float)
    m = n * (n - 1.0)
    return (
        (
            m * (2 * n + 5)
            - np.sum(tx * (tx - 1) * (2 * tx + 5))
            - np.sum(ty * (ty - 1) * (2 * ty + 5))
        )
        / 18
        + np.sum(tx * (tx - 1)) * np.sum(ty * (ty - 1)) / (2 * m)
        + np.sum(tx * (tx - 1) * (tx - 2)) * np.sum(ty * (ty - 1) * (ty - 2)) / (9 * m * (n - 2))
    )


def _best_place(x: np.ndarray, y: np.ndarray, mode: str) -> int | None:
    """The rung place (1 = first, ties share the better place) of the final epoch's best run."""
    if len(x) == 0:
        return None
    sign = 1.0 if mode == "max" else -1.0
    best = np.flatnonzero(sign * y == np.max(sign * y))
    return 1 + int(min(np.sum(sign * x > sign * x[k]) for k in best))


def full_curves(data: SweepData) -> dict[str, dict[int, float]]:
    """Run label -> {epoch: ``search.metric``} of the sweep's runs that ran every epoch: the
    completed search trials and the completed confirm runs (a confirm run whose trial id is not
    known is labelled by its config and seed)."""
    curves = {t.label: dict(t.curve) for t in data.trials if t.status == "completed"}
    for s in data.seeds:
        if s.status == "completed":
            curves[s.label or f"{s.group} seed {s.seed}"] = dict(s.curve)
    return curves


def sweep_checks(data: SweepData) -> list[RungCheck]:
    """The rung check of a sweep: at each of ASHA's rungs, over :func:`full_curves` (none without
    ASHA). What the sweep prints at its end, the parent's ``rung_*`` metrics and the report."""
    if data.asha is None:
        return []
    rungs = rung_epochs(*data.asha, data.epochs)
    return check_rungs(full_curves(data), rungs, data.epochs, data.mode)


def sweep_lines(data: SweepData) -> list[str]:
    """:func:`lines` of :func:`sweep_checks` (none without ASHA)."""
    if data.asha is None:
        return []
    return lines(sweep_checks(data), *data.asha)


def lines(checks: Sequence[RungCheck], grace: int, reduction: float) -> list[str]:
    """What a person reads: one line per rung, then :func:`warning`'s advice if the first rung
    is not shown to agree (for too few runs, the warning stands in for that rung's line)."""
    said = warning(checks, grace, reduction)
    out = [f"rung check, {c.words()}" for c in checks]
    if said is None:
        return out
    if checks[0].judgement == TOO_FEW:
        return [said, *out[1:]]
    return [*out, said]
