"""Confirming a search's winner over seeds, and the sweep's verdict.

After the search, the baseline (``train:`` as written) and the ``search.confirm.top``
best completed configs of the study each run ``search.confirm.seeds`` new seeds
(``train.seed + 1``, ``+ 2``, ...), all epochs, no early stop. A seed varies
everything random in a run: the model's init, the shard and sample order, the
augmentation, the LaCLIP caption choice and dropout (all derive from
``train.seed``).

Only the new seeds count: the search picked its winners by their score at the
search seed, so that score is biased upwards (the winner's curse). The verdict
compares the best config's mean with the baseline's: ``beats_baseline`` when the
difference is more than two standard errors of the difference
(``sqrt(s_a²/n_a + s_b²/n_b)``), ``within_noise`` when it is not, and
``baseline_best`` when no config's mean beats the baseline's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from smotune.config import SweepConfig
from smotune.search import ATTR_TUNE_TRIAL, ATTR_WARM_START
from smotune.space import default_point

BASELINE = "baseline"
BEATS_BASELINE = "beats_baseline"
WITHIN_NOISE = "within_noise"
BASELINE_BEST = "baseline_best"
VERDICT_WORDS = {
    BEATS_BASELINE: "the best config beats the baseline by more than the seed noise",
    WITHIN_NOISE: "the best config's gain over the baseline is within the seed noise",
    BASELINE_BEST: "no searched config beat the baseline's mean",
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


def seeds(sweep: SweepConfig) -> list[int]:
    """The new seeds each confirmed config runs."""
    assert sweep.search.confirm is not None
    return [sweep.train.seed + i for i in range(1, sweep.search.confirm.seeds + 1)]


def choose_groups(sweep: SweepConfig, storage: optuna.storages.BaseStorage) -> list[Group]:
    """The baseline, then the top completed configs of this sweep's study (best first)."""
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
class Verdict:
    verdict: str | None  # None: too few finished seeds to judge
    baseline: Group
    best: Group
    diff: float  # rival - baseline, in the objective's direction (positive = better)
    se: float  # standard error of that difference
    rival: Group | None = None  # the best searched config (the best, unless the baseline is)

    def words(self, metric: str) -> str:
        if self.verdict is None:
            return "no verdict: fewer than two finished seeds for the baseline or the best config"
        words = f"verdict: {self.verdict} ({VERDICT_WORDS[self.verdict]})"
        if self.rival is None:
            return words
        return (
            f"{words}: best searched config {self.rival.label} "
            f"{metric} {self.rival.mean:.4f} ± {self.rival.std:.4f} vs baseline "
            f"{self.baseline.mean:.4f} ± {self.baseline.std:.4f} over {self.rival.n} and "
            f"{self.baseline.n} seeds; difference {self.diff:+.4f}, noise band ± {2 * self.se:.4f} "
            "(two standard errors)"
        )


def verdict(groups: list[Group], mode: str) -> Verdict:
    """Compare the config with the best mean over seeds against the baseline."""
    sign = 1.0 if mode == "max" else -1.0
    baseline = groups[0]
    judged = [g for g in groups if g.n >= 2]
    if baseline.n < 2 or not judged:
        return Verdict(None, baseline, baseline, math.nan, math.nan)
    rivals = [g for g in judged if g is not baseline]
    if not rivals:  # no searched config finished two seeds
        return Verdict(BASELINE_BEST, baseline, baseline, math.nan, math.nan)
    rival = max(rivals, key=lambda g: sign * g.mean)
    diff = sign * (rival.mean - baseline.mean)
    se = math.sqrt(rival.std**2 / rival.n + baseline.std**2 / baseline.n)
    if diff <= 0:  # a tie goes to the baseline
        return Verdict(BASELINE_BEST, baseline, baseline, diff, se, rival)
    return Verdict(
        BEATS_BASELINE if diff > 2 * se else WITHIN_NOISE, baseline, rival, diff, se, rival
    )


def format_table(groups: list[Group], metric: str) -> str:
    """One line per confirmed config: its values, seeds, mean ± std and its search-seed score."""
    head = ["config", *(p.rsplit(".", 1)[-1] for p in groups[0].params), "seeds", "mean", "std"]
    rows = [head + ["search"]]
    for g in groups:
        rows.append(
            [
                g.label,
                *(_fmt(v) for v in g.params.values()),
                str(g.n),
                _fmt(g.mean),
                _fmt(g.std),
                "-" if g.search_value is None else _fmt(g.search_value),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return f"confirmed over new seeds ({metric}):\n" + "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)
