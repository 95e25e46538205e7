"""smotune.rungs: pair counts and tau-b as scipy has them, the exact null distribution against
brute force, the judgements at their edges, and the error rates of check_rung measured by
simulating it: under the null (rung independent of final) and under correlated alternatives."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from smotune import rungs

EVAL_IMAGES = 384  # top-1 on a 48-class eval set of 384 images: multiples of 1/384


def points(x, y) -> dict[str, tuple[float, float]]:
    return {f"r{k}": (float(a), float(b)) for k, (a, b) in enumerate(zip(x, y, strict=True))}


def check(x, y, mode: str = "max") -> rungs.RungCheck:
    return rungs.check_rung(points(x, y), 1, 3, mode)


def inversions(perm) -> int:
    return sum(a > b for a, b in itertools.combinations(perm, 2))


@pytest.mark.parametrize("n", range(1, 8))
def test_the_exact_null_distribution_counts_every_permutation(n):
    counts = np.bincount([inversions(p) for p in itertools.permutations(range(n))])
    want = np.cumsum(counts) / math.factorial(n)
    assert np.allclose(rungs._inversions_cdf(n), want, rtol=1e-12, atol=0)


def test_untied_runs_tau_and_exact_p_are_scipys():
    rng = np.random.default_rng(0)
    for n in range(4, 13):
        for _ in range(5):
            x = rng.normal(size=n)
            y = x + rng.normal(scale=1.5, size=n)
            got = check(x, y)
            want = stats.kendalltau(x, y, alternative="greater", method="exact")
            assert got.method == "exact"
            assert got.tau == pytest.approx(want.statistic, abs=1e-12)
            assert got.p_value == pytest.approx(want.pvalue, rel=1e-9)
            assert got.min_p == pytest.approx(1 / math.factorial(n), rel=1e-9)
            assert got.concordant + got.discordant == got.pairs == n * (n - 1) // 2


def test_ties_are_counted_apart_and_tau_b_is_scipys():
    # pairs: (0,1) tied at the rung, (1,2) tied at the final epoch, the four others concordant
    got = check([1, 1, 2, 3], [1, 2, 2, 3])
    assert (got.pairs, got.concordant, got.discordant, got.ties) == (6, 4, 0, 2)
    assert got.concordance == 1.0
    assert got.tau == pytest.approx(stats.kendalltau([1, 1, 2, 3], [1, 2, 2, 3]).statistic)
    assert got.tau == pytest.approx(4 / 5)  # (C - D) / sqrt((6 - 1)(6 - 1))


GROUPS = [2, 2, 2, 5, 5, 7, 9]  # values tied in two groups


@pytest.mark.parametrize(
    "rung,final",
    [
        (GROUPS, [1, 3, 2, 3, 6, 5, 8]),  # ties at both epochs; p 0.014
        (GROUPS, [3, 6, 2, 3, 1, 8, 5]),  # p 0.32, where counting S* > S instead of >= shows
        ([3, 6, 2, 4, 1, 8, 5], GROUPS),  # ties at the final epoch only
    ],
)
def test_with_ties_the_permutation_p_is_the_full_enumerations(rung, final):
    x, y = np.array(rung), np.array(final)
    got = check(x, y)
    i, j = np.triu_indices(len(x), 1)
    sy = np.sign(y[i] - y[j])
    shuffled = x[list(itertools.permutations(range(7)))]  # all 5,040 orders of the rung values
    null = np.sign(shuffled[:, i] - shuffled[:, j]) @ sy
    s = got.concordant - got.discordant
    exact = np.mean(null >= s)
    se = math.sqrt(exact * (1 - exact) / rungs.PERMUTATIONS)
    assert got.method == "permutation"
    assert abs(got.p_value - exact) < 4 * se + 1 / rungs.PERMUTATIONS
    assert got.tau == pytest.approx(stats.kendalltau(x, y).statistic)


def test_many_runs_use_scipys_tie_corrected_normal_tail():
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=80) * 4)
    y = np.round(x + rng.normal(size=80) * 12)
    got = check(x, y)
    want = stats.kendalltau(x, y, alternative="greater", method="asymptotic")
    assert got.method == "normal"
    assert got.p_value == pytest.approx(want.pvalue, rel=1e-9)
    assert got.tau == pytest.approx(want.statistic)


def test_judgements_at_their_edges():
    assert rungs.RUNS_NEEDED == 4
    three = check([1, 2, 3], [1, 2, 3])  # perfect, but 1/3! = 0.17 is the smallest p
    assert three.judgement == rungs.TOO_FEW and three.min_p == pytest.approx(1 / 6)
    assert "at least 4 runs" in three.words()
    four = check([1, 2, 3, 4], [1, 2, 3, 4])
    assert four.judgement == rungs.AGREES and four.p_value == pytest.approx(1 / 24)
    assert check([4, 3, 2, 1], [1, 2, 3, 4]).judgement == rungs.CHANCE  # reversed
    # six untied runs: 2 discordant pairs give p = 20/720, 3 give 49/720 (Mahonian counts)
    two = check([2, 3, 1, 4, 5, 6], [1, 2, 3, 4, 5, 6])
    assert two.discordant == 2 and two.p_value == pytest.approx(20 / 720)
    assert two.judgement == rungs.AGREES
    three_d = check([2, 3, 4, 1, 5, 6], [1, 2, 3, 4, 5, 6])
    assert three_d.discordant == 3 and three_d.p_value == pytest.approx(49 / 720)
    assert three_d.judgement == rungs.CHANCE
    # ties: the rung order that agrees best is one of 4!/(2!2!) = 6 (p 1/6), of 5!/2! = 60
    paired = check([1, 1, 2, 2], [1, 2, 3, 4])
    assert paired.judgement == rungs.TOO_FEW and abs(paired.min_p - 1 / 6) < 0.03
    one_tie = check([1, 1, 2, 3, 4], [1, 2, 3, 4, 5])
    assert one_tie.judgement == rungs.AGREES and abs(one_tie.min_p - 1 / 60) < 0.01
    assert check([4, 3, 2, 1, 1], [1, 2, 3, 4, 5]).judgement == rungs.CHANCE  # judged, reversed
    at_chance = check([8 / 384] * 10, np.arange(10) / 10)  # every run tied at the rung
    assert at_chance.judgement == rungs.TOO_FEW and math.isnan(at_chance.tau)
    assert check([], []).judgement == rungs.TOO_FEW


def test_the_mode_sets_the_final_bests_place_and_not_the_agreement():
    x, y = [0.9, 0.5, 0.1, 0.3], [0.9, 0.5, 0.6, 0.2]
    high, low = check(x, y, "max"), check(x, y, "min")
    assert high.best_place == 1  # best final (0.9) was first at the rung (0.9)
    assert low.best_place == 2  # best final (0.2) had rung 0.3: behind 0.1 only
    assert (high.tau, high.p_value) == (low.tau, low.p_value)
    with pytest.raises(ValueError, match="mode"):
        check(x, y, "maximize")


def test_check_rungs_reads_each_run_where_asha_reads_it():
    curves = {
        "a": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.9},
        "b": {1: 0.2, 2: 0.1, 3: 0.5, 4: 0.7},
        "c": {1: 0.3, 2: 0.4, 3: 0.2, 4: 0.5},
        "stopped": {1: 0.9, 2: 0.9},  # no final epoch: left out
        "nan": {1: 0.5, 2: 0.5, 3: 0.5, 4: math.nan},
    }
    first, later = rungs.check_rungs(curves, [1, 2.5, 4], 4, "max")  # 4 = the final epoch: none
    assert first.epoch == 1 and later.epoch == 2.5
    assert first.points == {"a": (0.1, 0.9), "b": (0.2, 0.7), "c": (0.3, 0.5)}
    assert later.points == {"a": (0.3, 0.9), "b": (0.5, 0.7), "c": (0.2, 0.5)}  # epoch 3
    assert later == rungs.check_rung(later.points, 2.5, 4, "max")
    assert rungs.rung_epochs(1, 3.0, 10) == [1, 3, 9]


def test_the_warning_names_the_sweep_files_fields():
    n = 8
    noise = check([8, 1, 6, 3, 5, 4, 7, 2], range(n))
    good = check(range(n), range(n))
    assert noise.judgement == rungs.CHANCE
    text = rungs.warning([noise, good], grace=1, reduction=3.0)
    for words in ("no better than chance", "schedule.asha.grace (now 1; at epoch 1 the order"):
        assert words in text
    assert "schedule.asha.reduction (now 3;" in text and "asha: null" in text
    assert rungs.warning([good, noise], 1, 3.0) is None
    few = rungs.warning([check([1, 2, 3], [1, 2, 3])], 1, 3.0)
    assert "too few runs" in few and "search.confirm" in few


def a_sweep(curves: dict[str, tuple[str, list[float]]], seeds=(), asha=(1, 2.0)):
    """A SweepData of search trials (label -> (status, curve)) and confirm runs (seeds: (group,
    seed, status, label, curve) tuples)."""
    from smotune import plots

    trials = [
        plots.TrialData(k, status, {}, list(enumerate(c, 1)), c[-1], len(c))
        for k, (status, c) in curves.items()
    ]
    runs = [
        plots.SeedData(g, s, status, c[-1], {}, label, list(enumerate(c, 1)))
        for g, s, status, label, c in seeds
    ]
    return plots.SweepData("t", "zeroshot_top1", "max", 4, {}, asha, trials, runs)


def test_a_sweeps_check_counts_every_run_that_ran_every_epoch():
    """Completed search trials and completed confirm runs, each seed its own run; stopped,
    failed, killed and running runs are left out, whatever epochs they logged."""
    full = [0.1, 0.2, 0.3, 0.4]
    data = a_sweep(
        {
            "done": ("completed", full),
            "stopped": ("early_stopped", [0.9]),
            "failed": ("failed", full),  # a NaN loss at its last epoch: not a finished run
            "killed": ("killed", full[:3]),
            "running": ("running", full[:2]),
        },
        seeds=[
            ("baseline", 1, "completed", "conf0", [0.2, 0.1, 0.4, 0.5]),
            ("done", 1, "completed", "", [0.3, 0.3, 0.2, 0.6]),  # trial id not known
            ("done", 2, "failed", "conf2", full),
        ],
    )
    assert rungs.full_curves(data) == {
        "done": dict(enumerate(full, 1)),
        "conf0": {1: 0.2, 2: 0.1, 3: 0.4, 4: 0.5},
        "done seed 1": {1: 0.3, 2: 0.3, 3: 0.2, 4: 0.6},
    }
    first, second = rungs.sweep_checks(data)  # grace 1, reduction 2, 4 epochs: rungs 1 and 2
    assert (first.epoch, second.epoch, first.final_epoch) == (1, 2, 4)
    assert first.points == {"conf0": (0.2, 0.5), "done": (0.1, 0.4), "done seed 1": (0.3, 0.6)}
    assert rungs.sweep_checks(a_sweep({"done": ("completed", full)}, asha=None)) == []


def test_a_sweeps_lines_say_each_rung_then_the_advice():
    agree = [[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.5], [0.3, 0.4, 0.5, 0.6]]
    agree += [[0.4, 0.5, 0.6, 0.7], [0.5, 0.6, 0.7, 0.8]]
    # the first rung reversed, the second in order: chance, then agreement (exact p 1/120)
    flipped = {f"r{k}": ("completed", [0.6 - c[0], *c[1:]]) for k, c in enumerate(agree)}
    first, second = rungs.sweep_checks(a_sweep(flipped))
    assert (first.judgement, second.judgement) == (rungs.CHANCE, rungs.AGREES)
    said = rungs.sweep_lines(a_sweep(flipped))
    assert said == [
        f"rung check, {first.words()}",
        f"rung check, {second.words()}",
        rungs.warning([first, second], 1, 2.0),
    ]
    assert "at epoch 2 the order agrees, tau +1.00" in said[-1]
    ordered = {f"r{k}": ("completed", c) for k, c in enumerate(agree)}
    assert len(rungs.sweep_lines(a_sweep(ordered))) == 2  # both agree: no advice
    few = {k: v for k, v in list(ordered.items())[:3]}
    first, second = rungs.sweep_checks(a_sweep(few))
    assert rungs.sweep_lines(a_sweep(few)) == [
        rungs.warning([first, second], 1, 2.0),  # the too-few line stands for the first rung's
        f"rung check, {second.words()}",
    ]
    assert "too few runs" in rungs.sweep_lines(a_sweep(few))[0]
    assert rungs.sweep_lines(a_sweep(ordered, asha=None)) == []


def null_draw(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rung value and a final value per run, independent of each other."""
    if kind == "normal":
        return rng.normal(size=n), rng.normal(size=n)
    if kind == "heavy":  # Student t, 2 degrees of freedom: no variance
        return rng.standard_t(2, size=n), rng.standard_t(2, size=n)
    # top-1 on 384 images: the rung near chance (1/48), many ties; the final one, some
    rung = np.clip(1 / 48 + 0.01 * rng.standard_t(3, size=n), 0, 1)
    final = np.clip(0.3 + 0.02 * rng.standard_t(3, size=n), 0, 1)
    return np.round(rung * EVAL_IMAGES) / EVAL_IMAGES, np.round(final * EVAL_IMAGES) / EVAL_IMAGES


NULL_DRAWS = 600  # per (kind, n); pooled over n: 5,400 per kind, over kinds: 1,800 per n


def test_agreement_under_the_null_is_said_at_most_alpha_of_the_time():
    """check_rung itself, 16,200 draws: the false-agreement rate per kind (pooled over n = 4..12)
    and per n (pooled over the kinds) stays below 0.05 + 3 standard errors of a 0.05 rate
    (0.059 for 5,400 draws, 0.065 for 1,800)."""
    rng = np.random.default_rng(24)
    said = {}
    for kind in ("normal", "heavy", "rounded"):
        for n in range(4, 13):
            checks = [check(*null_draw(kind, n, rng)) for _ in range(NULL_DRAWS)]
            said[kind, n] = sum(c.judgement == rungs.AGREES for c in checks)
    for kind in ("normal", "heavy", "rounded"):
        draws = NULL_DRAWS * 9
        rate = sum(said[kind, n] for n in range(4, 13)) / draws
        assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / draws), (kind, rate)
    for n in range(4, 13):
        draws = NULL_DRAWS * 3
        rate = sum(said[k, n] for k in ("normal", "heavy", "rounded")) / draws
        assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / draws), (n, rate)


@pytest.mark.parametrize("n,rho,least", [(6, 0.9, 0.5), (10, 0.9, 0.9), (12, 0.6, 0.45)])
def test_a_rung_that_tracks_the_final_order_is_said_to_agree(n, rho, least):
    """Power, so a check that never says "agrees" cannot pass the null test above: 400 draws
    of rung = rho * final + noise; bench/rung_check.py measures the whole table (the floors
    here sit at least 4 standard errors under the rates measured there)."""
    rng = np.random.default_rng(7)
    agrees = 0
    for _ in range(400):
        y = rng.normal(size=n)
        x = rho * y + math.sqrt(1 - rho**2) * rng.normal(size=n)
        agrees += check(x, y).judgement == rungs.AGREES
    assert agrees / 400 >= least
