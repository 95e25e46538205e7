"""Confirming a search's winners over seeds: which configs, which seeds, and what they say.

After the search, the baseline (``train:`` as written) and the ``search.confirm.top``
best completed configs of the study run new seeds (``train.seed + 1``, ``+ 2``,
...), all epochs, no early stop. A seed varies everything random in a run: the
model's init, the shard and sample order, the augmentation, the LaCLIP caption
choice and dropout (all derive from ``train.seed``). Every config runs the same
seeds, so the verdict compares them seed by seed (:mod:`smotune.stats`).

Only the new seeds count: the search picked its winners by their score at the
search seed, so that score is biased upwards (the winner's curse).

The confirm phase runs in rounds (:mod:`smotune.confirm_run`): the first runs
``seeds`` seeds of every config; with ``max_seeds`` (racing), each later round
runs one more seed of the baseline and of each rival still racing, until the
verdict is decided or ``max_seeds`` is reached. :func:`judge` replays the race
from the values alone, so a resumed sweep takes up the race where it was.

The verdict decides ``best.yaml``: the winner when a rival beats the baseline,
otherwise the baseline (nothing was shown to be better than it).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smotune import stats
from smotune.config import SweepConfig

BASELINE = "baseline"
BEATS_BASELINE, NO_GAIN, NOT_DECIDED = stats.BEATS_BASELINE, stats.NO_GAIN, stats.NOT_DECIDED
VERDICT_WORDS = {
    BEATS_BASELINE: "a searched config beats the baseline",
    NO_GAIN: "no searched config gains over the baseline",
    NOT_DECIDED: "the seeds run cannot tell the best searched config from the baseline",
}
ERROR_WORDS = {
    BEATS_BASELINE: "said when no config is better at most 5% of the time",
    NO_GAIN: "said of a config that does gain at most 5% of the time",
    NOT_DECIDED: "no claim",
}


@dataclass
class Group:
    """One config the confirm phase re-runs: its label, searched values and per-seed results."""

    label: str  # "baseline" or the Tune trial id of the search trial it re-runs
    params: dict[str, Any]
    search_value: float | None = None  # its score at the search seed (biased; not in the mean)
    values: dict[int, float] = field(default_factory=dict)  # seed -> final metric

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values()) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values.values()) if self.n >= 2 else math.nan


@dataclass(frozen=True)
class Plan:
    """The confirm phase's seeds and race, as :func:`judge` needs them."""

    seeds: tuple[int, ...]  # every seed a config may run, in order
    first: int  # seeds every config runs in round one (``search.confirm.seeds``)
    last: int  # the most seeds a config runs (``max_seeds``; ``first``: no racing)
    min_gain: float = 0.0
    mode: str = "max"

    @classmethod
    def of(cls, sweep: SweepConfig) -> Plan:
        c = sweep.search.confirm
        assert c is not None
        seeds = tuple(sweep.train.seed + i for i in range(1, c.most_seeds + 1))
        return cls(seeds, c.seeds, c.most_seeds, c.min_gain, sweep.search.mode)

    def design(self, rivals: int) -> stats.Design:
        return stats.Design(rivals, self.first, self.last, min_gain=self.min_gain)


def choose_groups(sweep: SweepConfig, storage: Any) -> list[Group]:
    """The baseline, then the top completed configs of this sweep's study (best first)."""
    import optuna  # the study: only where the confirm phase starts
    from optuna.trial import TrialState

    from smotune.optuna_study import ATTR_TUNE_TRIAL, ATTR_WARM_START
    from smotune.space import default_point

    assert sweep.search.confirm is not None
    baseline = Group(BASELINE, default_point(sweep))
    study = optuna.load_study(study_name=sweep.name, storage=storage)
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if ATTR_WARM_START not in t.user_attrs and math.isfinite(t.value)
    ]
    done.sort(key=lambda t: t.value, reverse=sweep.search.mode == "max")
    groups = [baseline]
    baseline.search_value = next((t.value for t in done if t.params == baseline.params), None)
    for t in done:
        if len(groups) > sweep.search.confirm.top:
            break
        if t.params != baseline.params and all(g.params != t.params for g in groups):
            label = t.user_attrs.get(ATTR_TUNE_TRIAL, f"optuna#{t.number}")
            groups.append(Group(label, dict(t.params), search_value=t.value))
    return groups


def points(groups: list[Group], seed_list: list[int]) -> list[dict[str, Any]]:
    """The confirm trials' configs: each group's values plus ``seed``."""
    return [{**g.params, "seed": s} for g in groups for s in seed_list]


def group_of(groups: list[Group], config: dict[str, Any]) -> Group | None:
    """The group a confirm trial's config belongs to."""
    params = {k: v for k, v in config.items() if k != "seed"}
    return next((g for g in groups if g.params == params), None)


def collect(groups: list[Group], results: list[tuple[dict[str, Any], dict[str, Any]]], sweep):
    """Fill each group's per-seed values from (config, final metrics) of finished confirm runs.

    A run counts only if it ran every epoch and its metric is finite.
    """
    for config, metrics in results:
        group = group_of(groups, config)
        value = metrics.get(sweep.search.metric)
        if group is None or value is None or not math.isfinite(value):
            continue
        if int(metrics.get("epoch", 0)) >= sweep.train.epochs:
            group.values[int(config["seed"])] = float(value)


@dataclass(frozen=True)
class Comparison:
    """One rival against the baseline, at its last look (:class:`smotune.stats.Race`)."""

    group: Group
    gain: float  # mean per-seed difference, positive = better than the baseline
    lower: float
    upper: float
    p: float  # one-sided paired-t p-value times the number of rivals
    p_needed: float  # p had to be at or below this for a claim at that look
    sd: float  # of the per-seed differences
    pairs: int  # seeds where both runs finished
    runs: int  # seeds the rival ran
    claimed: bool
    dropped: bool  # left the race behind the baseline

    @property
    def df(self) -> int:
        return max(self.pairs - 1, 0)

    def interval(self) -> str:
        return f"{self.gain:+.4f} [{self.lower:+.4f}, {self.upper:+.4f}]"


@dataclass(frozen=True)
class Verdict:
    """What the confirm runs say: the verdict, each rival's comparison, the config chosen."""

    verdict: str | None  # None: nothing to compare (no searched config, or no finished pair)
    groups: list[Group]
    design: stats.Design | None
    comparisons: list[Comparison]
    decided: bool  # the race is over (no more seeds would be run)
    base_runs: int = 0  # seeds the baseline ran

    @property
    def baseline(self) -> Group:
        return self.groups[0]

    @property
    def winner(self) -> Comparison | None:
        claimed = [c for c in self.comparisons if c.claimed]
        return max(claimed, key=lambda c: c.gain) if claimed else None

    @property
    def chosen(self) -> Group:
        """The config ``best.yaml`` holds: the winner, else the baseline."""
        winner = self.winner
        return winner.group if winner is not None else self.baseline

    @property
    def shown(self) -> Comparison | None:
        """The comparison the words are about: the winner, else the rival with the best gain."""
        if self.winner is not None:
            return self.winner
        judged = [c for c in self.comparisons if math.isfinite(c.gain)]
        return max(judged, key=lambda c: c.gain) if judged else None

    @property
    def racing(self) -> list[Group]:
        """The rivals that run the next round's seed (none once decided)."""
        if self.decided:
            return []
        return [c.group for c in self.comparisons if not c.dropped]

    @property
    def seeds_to_decide(self) -> int | None:
        shown = self.shown
        if self.verdict != NOT_DECIDED or shown is None or self.design is None:
            return None
        return stats.seeds_to_decide(shown.gain, shown.sd, self.design)

    def race_line(self, metric: str) -> str:
        """After a round of a race: each rival's gain so far, and who runs the next seed."""
        parts = []
        for c in self.comparisons:
            gain = c.interval() if math.isfinite(c.gain) else "no finished pair"
            parts.append(f"{c.group.label} {gain} {race_state(c, self)}")
        after = (
            f"next: seed {self.base_runs + 1} of the baseline and "
            + ", ".join(g.label for g in self.racing)
            if self.racing
            else "the race is over"
        )
        return (
            f"[confirm] after {self.base_runs} seeds, {metric} gain over the baseline: "
            + "; ".join(parts)
            + f"; {after}"
        )

    def words(self, metric: str) -> str:
        """The verdict as one paragraph: what is claimed, on what numbers, what best.yaml is."""
        if self.verdict is None:
            why = (
                "no searched config apart from the baseline completed in the search"
                if len(self.groups) < 2
                else "fewer than two seeds at which the baseline and a searched config both "
                "finished"
            )
            return f"no verdict: {why}; best.yaml is the search's best trial (one run, one seed)"
        shown, design = self.shown, self.design
        assert shown is not None and design is not None
        gain = f"{metric} gain over the baseline"
        floor = f" (min_gain {design.min_gain:g})" if design.min_gain else ""
        numbers = (
            f"{shown.group.label}: {gain} {shown.interval()} over {shown.pairs} paired seeds, "
            f"p {shown.p:.3g} (needed ≤ {shown.p_needed:.3g})"
        )
        if self.verdict == BEATS_BASELINE:
            head = f"verdict: {BEATS_BASELINE} ({ERROR_WORDS[BEATS_BASELINE]}): {numbers}"
            tail = f"best.yaml is {shown.group.label}"
        elif self.verdict == NO_GAIN:
            head = (
                f"verdict: {NO_GAIN}{floor}: every searched config's bound is below "
                f"{design.min_gain:g} ({ERROR_WORDS[NO_GAIN]}); best of them {numbers}"
            )
            tail = "best.yaml is the baseline"
        else:
            need = self.seeds_to_decide
            how = (
                f"deciding a gain of {abs(shown.gain - design.min_gain):.4f} at 80% power "
                f"would take about {need} seeds a config"
                if need is not None
                else "no number of seeds would decide it at these values"
            )
            head = f"verdict: {NOT_DECIDED}{floor}: best searched config {numbers}; {how}"
            tail = "best.yaml is the baseline (nothing was shown better)"
        dropped = [c for c in self.comparisons if c.dropped]
        left = (
            "; dropped behind the baseline: "
            + ", ".join(f"{c.group.label} after {c.runs} seeds" for c in dropped)
            if dropped
            else ""
        )
        return f"{head}{left}; {tail}"


def judge(groups: list[Group], plan: Plan, upto: int | None = None) -> Verdict:
    """The verdict of the confirm values so far: the race replayed over the first ``upto``
    seeds of ``plan`` (default: up to the last seed any group has a value for)."""
    if len(groups) < 2:
        return Verdict(None, groups, None, [], True)
    d = plan.design(len(groups) - 1)
    if upto is None:
        seen = {s for g in groups for s in g.values}
        upto = max((i + 1 for i, s in enumerate(plan.seeds) if s in seen), default=0)
    if upto < 2:
        return Verdict(None, groups, d, [], False)
    y = np.array([[[g.values.get(s, math.nan) for s in plan.seeds[:upto]] for g in groups]])
    r = stats.race(y, d, sign=1.0 if plan.mode == "max" else -1.0)
    comparisons = [
        Comparison(
            g,
            *(float(getattr(r, f)[0, i]) for f in ("gain", "lower", "upper", "p", "p_needed")),
            sd=float(r.sd[0, i]),
            pairs=int(r.pairs[0, i]),
            runs=int(r.runs[0, i]),
            claimed=bool(r.claimed[0, i]),
            dropped=bool(r.dropped[0, i]),
        )
        for i, g in enumerate(groups[1:])
    ]
    verdict = str(r.verdict[0]) if any(c.pairs >= 2 for c in comparisons) else None
    return Verdict(verdict, groups, d, comparisons, bool(r.decided[0]), int(r.base_runs[0]))


def race_state(c: Comparison, verdict: Verdict) -> str:
    """Where the race left a rival: claimed, dropped behind the baseline, racing, or done."""
    if c.claimed:
        return "claimed"
    if c.dropped:
        return f"dropped behind at {c.runs} seeds"
    return "racing" if not verdict.decided else f"ran {c.runs} seeds"


def format_table(verdict: Verdict, metric: str) -> str:
    """One line per confirmed config: seeds, mean ± std, search-seed score, and for each rival
    its gain over the baseline with the interval and where the race left it."""
    groups = verdict.groups
    by_label = {c.group.label: c for c in verdict.comparisons}
    head = ["config", *(p.rsplit(".", 1)[-1] for p in groups[0].params), "seeds", "mean", "std"]
    rows = [head + ["search", "gain [interval]", "race"]]
    for g in groups:
        c = by_label.get(g.label)
        race = "baseline" if c is None else race_state(c, verdict)
        rows.append(
            [
                g.label,
                *(_fmt(v) for v in g.params.values()),
                str(g.n),
                _fmt(g.mean),
                _fmt(g.std),
                "-" if g.search_value is None else _fmt(g.search_value),
                "-" if c is None or not math.isfinite(c.gain) else c.interval(),
                race,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return f"confirmed over new seeds ({metric}; gain per seed vs the baseline):\n" + "\n".join(
        lines
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)
