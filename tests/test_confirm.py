"""The confirm phase's choices and verdict: which configs re-run, and what the seeds say."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from smotune import confirm, search
from smotune.config import SweepConfig


def _group(label: str, values: list[float]) -> confirm.Group:
    return confirm.Group(label, {"loss.label_smoothing": 0.0}, values=dict(enumerate(values)))


def test_beats_baseline_only_beyond_two_standard_errors():
    base = _group("baseline", [0.50, 0.52, 0.48])
    clear = _group("t1", [0.70, 0.72, 0.68])
    v = confirm.verdict([base, clear], "max")
    assert v.verdict == confirm.BEATS_BASELINE and v.best is clear
    se = math.sqrt(
        statistics.stdev([0.7, 0.72, 0.68]) ** 2 / 3 + statistics.stdev([0.5, 0.52, 0.48]) ** 2 / 3
    )
    assert v.diff == pytest.approx(0.2) and v.se == pytest.approx(se)
    # the same gain with seeds spread wide is noise
    noisy = _group("t2", [0.95, 0.40, 0.75])
    wide = _group("baseline", [0.80, 0.25, 0.45])
    assert confirm.verdict([wide, noisy], "max").verdict == confirm.WITHIN_NOISE
    # just above and just below 2 SE
    base = _group("baseline", [0.0, 0.2])  # mean 0.1, sd 0.1414
    se2 = math.sqrt(2 * 0.02 / 2)  # both groups sd 0.1414, n 2
    above = _group("a", [0.1 + 2 * se2 + 0.001 - 0.1, 0.1 + 2 * se2 + 0.001 + 0.1])
    below = _group("b", [0.1 + 2 * se2 - 0.001 - 0.1, 0.1 + 2 * se2 - 0.001 + 0.1])
    assert confirm.verdict([base, above], "max").verdict == confirm.BEATS_BASELINE
    assert confirm.verdict([base, below], "max").verdict == confirm.WITHIN_NOISE


def test_baseline_best_and_min_mode():
    base = _group("baseline", [0.6, 0.62])
    worse = _group("t1", [0.5, 0.55])
    v = confirm.verdict([base, worse], "max")
    assert v.verdict == confirm.BASELINE_BEST and v.best is base
    # the words compare the best searched config with the baseline, not the baseline with itself
    assert v.rival is worse and v.diff == pytest.approx(-0.085)
    words = v.words("zeroshot_top1")
    assert "best searched config t1 zeroshot_top1 0.5250 ± 0.0354 vs baseline 0.6100" in words
    assert "difference -0.0850" in words and "noise band ± 0.0539" in words
    # a loss-like objective: lower is better, so the same numbers flip
    v = confirm.verdict([base, worse], "min")
    assert v.best is worse and v.diff == pytest.approx(0.085)
    # the best of several is the highest mean, not the luckiest seed
    lucky = _group("lucky", [0.99, 0.1])
    steady = _group("steady", [0.7, 0.72])
    assert confirm.verdict([base, lucky, steady], "max").best is steady


def test_no_verdict_without_two_finished_seeds():
    base = _group("baseline", [0.6])
    other = _group("t1", [0.7, 0.8])
    v = confirm.verdict([base, other], "max")
    assert v.verdict is None and "no verdict" in v.words("zeroshot_top1")


def _sweep(tmp_path, include_default: bool = True) -> SweepConfig:
    return SweepConfig.model_validate(
        {
            "name": "c",
            "train": {
                "data": {"train": "x.tar", "zeroshot": "zs"},
                "loss": {"label_smoothing": 0.1},
                "seed": 7,
            },
            "space": {"loss.label_smoothing": {"uniform": [0.0, 0.3]}},
            "search": {"include_default": include_default, "confirm": {"top": 2, "seeds": 3}},
            "storage": {"path": str(tmp_path / "runs")},
        }
    )


def test_groups_are_the_baseline_and_the_top_completed_configs(tmp_path):
    sweep = _sweep(tmp_path)
    url, storage = search.prepare_study(sweep, resume=False, where="t")
    study = optuna.load_study(study_name="c", storage=url)
    dist = {"loss.label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.3)}

    def add(ls, value, state=TrialState.COMPLETE, tune_id=None):
        study.add_trial(
            optuna.trial.create_trial(
                params={"loss.label_smoothing": ls},
                distributions=dist,
                value=value,
                state=state,
                intermediate_values={1: value} if value is not None else {},
                user_attrs={search.ATTR_TUNE_TRIAL: tune_id or f"t{ls}"},
            )
        )

    add(0.1, 0.9)  # the baseline's own values: not a group of its own
    add(0.2, 0.8)
    add(0.25, 0.95, state=TrialState.PRUNED)  # pruned trials are not confirmed
    add(0.05, 0.7)
    add(0.15, 0.5)
    groups = confirm.choose_groups(sweep, storage)
    assert [g.label for g in groups] == ["baseline", "t0.2", "t0.05"]
    assert groups[0].params == {"loss.label_smoothing": 0.1} and groups[0].search_value == 0.9
    assert confirm.seeds(sweep) == [8, 9, 10]
    points = confirm.points(groups, confirm.seeds(sweep))
    assert len(points) == 9 and points[3] == {"loss.label_smoothing": 0.2, "seed": 8}
    assert confirm.group_of(groups, points[3]) is groups[1]
    # collect: a run counts only with all its epochs and a finite value
    confirm.collect(
        groups,
        [
            (points[0], {"zeroshot_top1": 0.6, "epoch": 6}),
            (points[1], {"zeroshot_top1": 0.9, "epoch": 3}),
            (points[2], {"zeroshot_top1": float("nan"), "epoch": 6}),
            (points[3], {"zeroshot_top1": 0.7, "epoch": 6}),
        ],
        sweep,
    )
    assert groups[0].values == {8: 0.6} and groups[1].values == {8: 0.7}

    # the baseline's search score is shown even when the top-K outrank it
    sweep.search.confirm.top = 1
    add(0.12, 0.99)
    groups = confirm.choose_groups(sweep, storage)
    assert [g.label for g in groups] == ["baseline", "t0.12"]
    assert groups[0].search_value == 0.9
