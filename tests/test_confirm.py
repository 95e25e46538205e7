"""The confirm phase's choices and verdict: which configs re-run, and what the seeds say."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from smotune import confirm, optuna_study, stats
from smotune.config import SweepConfig


def _group(label: str, values: list[float], first_seed: int = 1) -> confirm.Group:
    return confirm.Group(
        label,
        {"loss.label_smoothing": 0.0},
        values={first_seed + i: v for i, v in enumerate(values)},
    )


def _plan(first: int = 3, last: int | None = None, min_gain: float = 0.0, mode: str = "max"):
    last = last or first
    return confirm.Plan(tuple(range(1, last + 1)), first, last, min_gain, mode)


def test_a_rival_that_gains_at_every_seed_beats_the_baseline():
    """Seeds move both configs (0.40-0.80) while the rival gains ~0.03 at each: a claim."""
    base = _group("baseline", [0.50, 0.80, 0.40, 0.62, 0.71])
    rival = _group("t1", [0.53, 0.83, 0.43, 0.66, 0.73])
    v = confirm.judge([base, rival], _plan(5))
    assert v.verdict == confirm.BEATS_BASELINE and v.chosen is rival and v.decided
    (c,) = v.comparisons
    assert c.gain == pytest.approx(0.03) and c.lower > 0 and c.pairs == 5 and c.df == 4
    words = v.words("zeroshot_top1")
    assert words.startswith("verdict: beats_baseline (said when no config is better at most 5%")
    assert "t1: zeroshot_top1 gain over the baseline +0.0300 [+0.0" in words
    assert words.endswith("best.yaml is t1")
    # the same numbers unpaired: the seeds' spread (sd 0.15) hides the 0.03
    unpaired_se = math.sqrt(base.std**2 / 5 + rival.std**2 / 5)
    assert c.gain < 2 * unpaired_se


def test_no_claim_says_not_decided_with_the_seeds_it_would_take():
    base = _group("baseline", [0.60, 0.62])
    rival = _group("t1", [0.615, 0.625])
    v = confirm.judge([base, rival], _plan(2))
    assert v.verdict == confirm.NOT_DECIDED and v.chosen is base
    need = v.seeds_to_decide
    c = v.comparisons[0]
    assert need == stats.seeds_to_decide(c.gain, c.sd, stats.Design(1, 2, 2)) and need > 2
    words = v.words("zeroshot_top1")
    assert words.startswith("verdict: not_decided: best searched config t1: ")
    assert f"would take about {need} seeds a config" in words
    assert words.endswith("best.yaml is the baseline (nothing was shown better)")


def test_every_rival_worse_is_no_gain_and_a_loss_flips_the_direction():
    base = _group("baseline", [0.60, 0.70, 0.65, 0.72, 0.58, 0.66])
    worse = _group("t1", [0.50, 0.61, 0.54, 0.63, 0.47, 0.56])
    v = confirm.judge([base, worse], _plan(6))
    assert v.verdict == confirm.NO_GAIN and v.chosen is base
    assert v.comparisons[0].upper < 0 and "best.yaml is the baseline" in v.words("m")
    # a loss-like objective: lower is better, so the same values make t1 the winner
    v = confirm.judge([base, worse], _plan(6, mode="min"))
    assert v.verdict == confirm.BEATS_BASELINE and v.chosen is worse
    assert v.comparisons[0].gain == pytest.approx(0.1)
    # min_gain: a rival 0.01 better per seed is not worth claiming a 0.05 gain for
    slight = _group("t2", [x + 0.01 for x in [0.60, 0.70, 0.65, 0.72, 0.58, 0.66]])
    v = confirm.judge([base, slight], _plan(6, min_gain=0.05))
    assert v.verdict == confirm.NO_GAIN and "min_gain 0.05" in v.words("m")


def test_the_race_drops_rivals_behind_and_races_the_rest():
    base = _group("baseline", [0.50, 0.62, 0.41])
    ahead = _group("t1", [0.51, 0.625, 0.42])
    behind = _group("t2", [0.49, 0.63, 0.40])
    plan = _plan(3, 6)
    v = confirm.judge([base, ahead, behind], plan, upto=3)
    assert not v.decided and v.racing == [ahead] and v.verdict == confirm.NOT_DECIDED
    assert [c.dropped for c in v.comparisons] == [False, True]
    line = v.race_line("zeroshot_top1")
    assert line.startswith("[confirm] after 3 seeds, zeroshot_top1 gain over the baseline: t1 ")
    assert "t2 -0.0033 [" in line and "dropped behind at 3 seeds" in line
    assert line.endswith("next: seed 4 of the baseline and t1")
    # seed 4 for the baseline and t1 only; the race is replayed from the values
    base.values[4], ahead.values[4] = 0.55, 0.56
    again = confirm.judge([base, ahead, behind], plan)
    assert again.base_runs == 4 and [c.runs for c in again.comparisons] == [4, 3]
    table = confirm.format_table(again, "zeroshot_top1")
    assert "dropped behind at 3 seeds" in table and "racing" in table


def test_no_verdict_without_a_rival_or_a_finished_pair():
    base = _group("baseline", [0.6, 0.61])
    v = confirm.judge([base], _plan(2))
    words = v.words("zeroshot_top1")
    assert v.verdict is None and v.chosen is base and words.startswith("no verdict: no searched")
    v = confirm.judge([base, _group("t1", [])], _plan(2))
    assert v.verdict is None and v.chosen is base
    assert v.words("m").startswith("no verdict: fewer than two seeds at which the baseline")


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
    url, storage = optuna_study.prepare_study(sweep, resume=False, where="t")
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
                user_attrs={optuna_study.ATTR_TUNE_TRIAL: tune_id or f"t{ls}"},
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
    plan = confirm.Plan.of(sweep)
    assert plan.seeds == (8, 9, 10) and (plan.first, plan.last) == (3, 3)
    points = confirm.points(groups, list(plan.seeds))
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


def test_the_plan_of_a_racing_sweep(tmp_path):
    sweep = _sweep(tmp_path)
    sweep.search.confirm.max_seeds = 5
    plan = confirm.Plan.of(sweep)
    assert plan.seeds == (8, 9, 10, 11, 12) and (plan.first, plan.last) == (3, 5)
    assert plan.design(2) == stats.Design(2, 3, 5)
