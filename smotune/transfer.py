"""Does the confirmed order hold at a larger fidelity? The transfer phase's comparisons, pure.

A sweep decides at a proxy (its ``train:``: a few epochs, a short epoch). With
``search.transfer: {overrides, top, seeds}`` the baseline and the ``top`` best
confirmed configs (by their confirmed mean) re-run with ``overrides`` applied to
``train:`` (e.g. ``epochs``, ``data.samples_per_epoch``, ``model.arch``), at
``seeds`` new seeds after the confirm phase's (``train.seed + max_seeds + 1``, ...),
seed-paired, every config the same seeds (:mod:`smotune.transfer_run` runs them).

What is compared (:func:`compare`), from each config's mean at both fidelities:

- Kendall's tau (tau-b) and Spearman's rho between the two fidelities' means
  (scipy); with 3 configs they take a handful of values and prove nothing alone:
  the pair count is always given with them.
- Decision accuracy (DataDecide, 2025): the share of config pairs whose order at
  the search fidelity holds at the transfer fidelity; a pair tied at either
  fidelity does not count as holding.
- Whether the winner held: the best confirmed mean is the best mean there too.
- Each discordant pair (its order flipped) with its paired interval at the
  transfer fidelity: ``smotune.stats.race`` on the two configs' per-seed values
  (one look, one-sided 5% on each side: a 90% two-sided interval, not adjusted
  over the pairs, the metric's step in the variance). An interval holding 0 means
  the flip is within the seed noise there: the seeds run cannot order the pair.
- The verdict at the transfer fidelity: :func:`smotune.confirm.judge`, the confirm
  phase's statistics (paired t, Bonferroni over the rivals, ``min_gain``), at one
  look: no racing at the transfer fidelity. Its chosen config is ``best.yaml``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats as sps

from smotune import confirm, stats
from smotune.config import SweepConfig, flatten, transfer_train


def fidelity_words(sweep: SweepConfig) -> str:
    """The transfer fidelity as its overrides: ``epochs 4 (search 2), data.samples_per_epoch
    256 (search 64)``."""
    t = sweep.search.transfer
    assert t is not None
    before = flatten(sweep.train.model_dump(mode="json"))
    after = flatten(transfer_train(sweep).model_dump(mode="json"))
    return ", ".join(f"{p} {after[p]} (search {before[p]})" for p in t.overrides)


def plan(sweep: SweepConfig) -> confirm.Plan:
    """The transfer phase's seeds (after every seed the confirm phase may run) and its one look,
    with the confirm phase's ``min_gain`` and the sweep's mode."""
    t, c = sweep.search.transfer, sweep.search.confirm
    assert t is not None and c is not None
    first = sweep.train.seed + c.most_seeds
    seeds = tuple(first + i for i in range(1, t.seeds + 1))
    return confirm.Plan(seeds, t.seeds, t.seeds, c.min_gain, sweep.search.mode)


def choose_groups(low: confirm.Verdict, top: int, mode: str) -> list[confirm.Group]:
    """The baseline and the ``top`` rivals with the best confirmed means (best first), as new
    groups without values (a rival with no finished confirm run is not chosen)."""
    sign = 1.0 if mode == "max" else -1.0
    rivals = [g for g in low.groups[1:] if g.n > 0 and math.isfinite(g.mean)]
    rivals.sort(key=lambda g: -sign * g.mean)  # stable: ties keep the search's order
    return [confirm.Group(g.label, dict(g.params)) for g in [low.baseline, *rivals[:top]]]


@dataclass(frozen=True)
class Pair:
    """Two configs in their order at the search fidelity (``first`` ahead), at both fidelities."""

    first: str
    second: str
    low_gap: float  # first's lead at the search fidelity (mean, in the objective's direction)
    high_gap: float  # first's lead at the transfer fidelity (means; negative: flipped)
    gain: float  # first's mean per-seed lead at the transfer fidelity (paired)
    lower: float  # the paired interval of ``gain`` (90% two-sided)
    upper: float
    seeds: int  # seeds where both ran at the transfer fidelity

    @property
    def tied(self) -> bool:
        return self.low_gap == 0 or self.high_gap == 0

    @property
    def concordant(self) -> bool:
        return self.low_gap > 0 and self.high_gap > 0

    @property
    def discordant(self) -> bool:
        return self.low_gap > 0 and self.high_gap < 0

    @property
    def within_noise(self) -> bool:
        """The paired interval at the transfer fidelity holds 0 (or too few seeds to have one)."""
        return not (self.lower > 0 or self.upper < 0)

    def words(self) -> str:
        if self.seeds < 2:
            how = f"on {self.seeds} paired seed{'s' if self.seeds != 1 else ''}: no interval"
        else:
            how = (
                f"paired {self.gain:+.4f} [{self.lower:+.4f}, {self.upper:+.4f}] over "
                f"{self.seeds} seeds"
            )
        noise = "within the seed noise" if self.within_noise else "outside the seed noise"
        return f"{self.first} > {self.second} by {self.low_gap:.4f}, then {how} ({noise})"


@dataclass(frozen=True)
class Transfer:
    """The configs at both fidelities, how their order held, and the verdict at the larger."""

    fidelity: str  # fidelity_words
    low: list[confirm.Group]  # the transferred configs' confirm groups (baseline first)
    high: list[confirm.Group]  # the same configs at the transfer fidelity, same order
    verdict: confirm.Verdict  # confirm.judge at the transfer fidelity
    pairs: list[Pair]  # every pair of the configs with a mean at both fidelities
    tau: float
    rho: float
    mode: str = "max"

    @property
    def ranked(self) -> list[tuple[confirm.Group, confirm.Group]]:
        """(low, high) of each config with a finite mean at both fidelities."""
        return [
            (lo, hi)
            for lo, hi in zip(self.low, self.high, strict=True)
            if math.isfinite(lo.mean) and math.isfinite(hi.mean)
        ]

    @property
    def concordant(self) -> int:
        return sum(p.concordant for p in self.pairs)

    @property
    def discordant(self) -> list[Pair]:
        return [p for p in self.pairs if p.discordant]

    @property
    def ties(self) -> int:
        return sum(p.tied for p in self.pairs)

    @property
    def accuracy(self) -> float:
        """Decision accuracy: the share of pairs whose order holds (NaN without a pair)."""
        return self.concordant / len(self.pairs) if self.pairs else math.nan

    @property
    def within_noise(self) -> list[Pair]:
        return [p for p in self.discordant if p.within_noise]

    def _best(self, at: int) -> str | None:
        sign = 1.0 if self.mode == "max" else -1.0
        ranked = self.ranked
        if not ranked:
            return None
        return max(ranked, key=lambda both: sign * both[at].mean)[0].label

    @property
    def winner_low(self) -> str | None:
        """The best confirmed mean among the transferred configs (the first of a tie)."""
        return self._best(0)

    @property
    def winner_high(self) -> str | None:
        return self._best(1)

    @property
    def held(self) -> bool | None:
        if self.winner_low is None or len(self.ranked) < 2:
            return None
        return self.winner_low == self.winner_high

    def lines(self, metric: str) -> list[str]:
        """What the console prints at the sweep's end (and the report shows)."""
        n, pairs = len(self.ranked), len(self.pairs)
        out = [
            f"transfer: Kendall tau {_f(self.tau)}, Spearman rho {_f(self.rho)} between the "
            f"{metric} means at the two fidelities over {n} configs; decision accuracy "
            f"{self.concordant}/{pairs} pairs hold ({_pct(self.accuracy)}"
            + (f"; {self.ties} tied" if self.ties else "")
            + ")"
        ]
        if self.held is None:
            out.append("transfer: no winner to hold (fewer than 2 configs finished at both)")
        elif self.held:
            out.append(f"transfer: the winner held: {self.winner_low} is best at both fidelities")
        else:
            out.append(
                f"transfer: the winner did not hold: {self.winner_low} is best at the search "
                f"fidelity, {self.winner_high} at the transfer fidelity"
            )
        flipped = self.discordant
        if flipped:
            out.append(
                f"transfer: {len(flipped)} discordant pair{'s' if len(flipped) > 1 else ''}, "
                f"{len(self.within_noise)} within the seed noise at the transfer fidelity "
                "(its 90% paired interval holds 0): " + "; ".join(p.words() for p in flipped)
            )
        else:
            out.append("transfer: no discordant pair")
        out.append(self.words(metric))
        return out

    def words(self, metric: str) -> str:
        """The verdict at the transfer fidelity, in one paragraph (the parent's description)."""
        if self.verdict.verdict is None:
            said = (
                "no verdict: no searched config finished two seeds paired with the baseline "
                "there; best.yaml stays the confirm phase's choice, at the search fidelity"
            )
        else:
            said = self.verdict.words(metric)
        return f"at the transfer fidelity ({self.fidelity}): {said}"


def compare(
    low: list[confirm.Group], high: list[confirm.Group], p: confirm.Plan, fidelity: str
) -> Transfer:
    """The transfer phase's comparisons: ``high`` (baseline first, values by seed of ``p``)
    against the same labels' confirm groups in ``low``."""
    by_label = {g.label: g for g in low}
    low = [by_label.get(g.label, confirm.Group(g.label, dict(g.params))) for g in high]
    verdict = confirm.judge(high, p, upto=len(p.seeds))
    sign = 1.0 if p.mode == "max" else -1.0
    both = [
        i for i in range(len(high)) if math.isfinite(low[i].mean) and math.isfinite(high[i].mean)
    ]
    pairs = []
    for i, j in combinations(both, 2):
        if sign * (low[j].mean - low[i].mean) > 0:
            i, j = j, i  # i ahead at the search fidelity
        pairs.append(_pair(high[i], high[j], low[i].mean, low[j].mean, p, sign))
    lo = [low[i].mean for i in both]
    hi = [high[i].mean for i in both]
    tau, rho = rank_agreement(lo, hi)
    return Transfer(fidelity, low, high, verdict, pairs, tau, rho, p.mode)


def rank_agreement(low: list[float], high: list[float]) -> tuple[float, float]:
    """Kendall's tau-b and Spearman's rho of two lists of means (scipy; NaN when undefined:
    fewer than 2 values, or one list constant)."""
    if len(low) < 2 or len(set(low)) < 2 or len(set(high)) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tau = float(sps.kendalltau(low, high).statistic)
        rho = float(sps.spearmanr(low, high).statistic)
    return tau, rho


def _pair(
    a: confirm.Group, b: confirm.Group, low_a: float, low_b: float, p: confirm.Plan, sign: float
) -> Pair:
    """``a`` (ahead at the search fidelity) against ``b`` at the transfer fidelity: ``b`` as
    the baseline and ``a`` as the one rival of ``stats.race``, one look at the plan's seeds."""
    y = np.array([[[g.values.get(s, math.nan) for s in p.seeds] for g in (b, a)]])
    r = stats.race(y, stats.Design(1, len(p.seeds), len(p.seeds)), sign=sign)
    return Pair(
        first=a.label,
        second=b.label,
        low_gap=sign * (low_a - low_b),
        high_gap=sign * (a.mean - b.mean),
        gain=float(r.gain[0, 0]),
        lower=float(r.lower[0, 0]),
        upper=float(r.upper[0, 0]),
        seeds=int(r.pairs[0, 0]),
    )


def format_table(t: Transfer, metric: str) -> str:
    """One line per transferred config: its searched values, mean ± std and seeds at both
    fidelities, its place at each, and its gain over the baseline at the transfer fidelity."""
    sign = 1.0 if t.mode == "max" else -1.0
    ranked = t.ranked
    place_low = _places([lo for lo, _ in ranked], sign)
    place_high = _places([hi for _, hi in ranked], sign)
    by_label = {c.group.label: c for c in t.verdict.comparisons}
    params = list(t.high[0].params) if t.high else []
    head = ["config", *(p.rsplit(".", 1)[-1] for p in params), "search fid.", "place"]
    rows = [head + ["transfer fid.", "place", "gain there [interval]"]]
    for lo, hi in zip(t.low, t.high, strict=True):
        c = by_label.get(hi.label)
        rows.append(
            [
                hi.label,
                *(_cell(hi.params.get(p)) for p in params),
                _mean(lo),
                place_low.get(lo.label, "-"),
                _mean(hi),
                place_high.get(hi.label, "-"),
                "baseline"
                if c is None
                else c.interval()
                if c.pairs >= 2 and math.isfinite(c.gain)
                else "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return (
        f"transferred to {t.fidelity} ({metric}, mean ± std (seeds) at each fidelity):\n"
        + "\n".join(lines)
    )


def _places(groups: list[confirm.Group], sign: float) -> dict[str, str]:
    order = sorted(groups, key=lambda g: -sign * g.mean)
    return {g.label: str(i + 1) for i, g in enumerate(order)}


def _mean(g: confirm.Group) -> str:
    if not g.n:
        return "-"
    std = f" ± {g.std:.4f}" if g.n >= 2 else ""
    return f"{g.mean:.4f}{std} ({g.n})"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _f(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.2f}"


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}%"
