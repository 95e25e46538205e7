"""The transfer phase without Ray: its comparisons against scipy, which flipped pairs are within
the seed noise, which configs it re-runs at which seeds, its config checks (one line, exit 2),
and its plot and report section drawn from plain data."""

from __future__ import annotations

import html
import itertools
import math
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats as sps

from smotune import cli, config, confirm, plots, report, transfer
from smotune.errors import UserError
from tests.test_config import _sweep, _write

N = 384  # top-1 on 384 eval images moves in steps of 1/384


def _group(label: str, values: list[float], first: int = 1) -> confirm.Group:
    return confirm.Group(
        label, {"loss.label_smoothing": 0.1}, values=dict(enumerate(values, first))
    )


def _plan(seeds: int = 3, first: int = 1, mode: str = "max") -> confirm.Plan:
    return confirm.Plan(tuple(range(first, first + seeds)), seeds, seeds, 0.0, mode)


def _lattice(means: list[float], spread: list[float]) -> list[list[float]]:
    """Per-config values at 3 seeds on top-1's lattice: mean + spread pattern, in whole images."""
    return [[round((m + s) * N) / N for s in spread] for m in means]


LOW = [0.50, 0.55, 0.60, 0.42, 0.58]  # confirmed means of baseline + 4 rivals
HIGH = [0.70, 0.74, 0.69, 0.61, 0.72]  # their means at the transfer fidelity


def _made_up(mode: str = "max") -> transfer.Transfer:
    labels = ["baseline", "t1", "t2", "t3", "t4"]
    low = [_group(n, v) for n, v in zip(labels, _lattice(LOW, [-0.02, 0.0, 0.02]), strict=True)]
    high_values = _lattice(HIGH, [-0.01, 0.015, -0.005])
    high = [_group(n, v, first=4) for n, v in zip(labels, high_values, strict=True)]
    return transfer.compare(low, high, _plan(first=4, mode=mode), "epochs 30 (search 10)")


def test_tau_rho_and_decision_accuracy_are_scipys_and_the_pairs_own_count():
    t = _made_up()
    lo = [g.mean for g in t.low]
    hi = [g.mean for g in t.high]
    assert t.tau == pytest.approx(sps.kendalltau(lo, hi).statistic)
    assert t.rho == pytest.approx(sps.spearmanr(lo, hi).statistic)
    both = zip(lo, hi, strict=True)
    held = sum((a - b) * (c - d) > 0 for (a, c), (b, d) in itertools.combinations(both, 2))
    assert len(t.pairs) == 10 and t.concordant == held == 6 and t.ties == 0
    assert (t.tau, t.rho) == pytest.approx((0.2, 0.3))  # not one number twice
    assert t.accuracy == pytest.approx(held / 10)
    assert t.accuracy == pytest.approx((1 + t.tau) / 2)  # no ties: the concordant share
    # t2 (best confirmed, 0.60) fell behind the baseline, t1 and t4 at the transfer fidelity,
    # and t4 behind t1
    assert {(p.first, p.second) for p in t.discordant} == {
        ("t2", "baseline"),
        ("t2", "t1"),
        ("t2", "t4"),
        ("t4", "t1"),
    }
    # the winner at the search fidelity (t2, 0.60) is not the winner there (t1, 0.74)
    assert (t.winner_low, t.winner_high, t.held) == ("t2", "t1", False)
    lines = t.lines("zeroshot_top1")
    assert lines[0] == (
        f"transfer: Kendall tau {t.tau:+.2f}, Spearman rho {t.rho:+.2f} between the "
        "zeroshot_top1 means at the two fidelities over 5 configs; decision accuracy 6/10 "
        "pairs hold (60%)"
    )
    assert lines[1] == (
        "transfer: the winner did not hold: t2 is best at the search fidelity, t1 at the "
        "transfer fidelity"
    )
    assert lines[-1] == t.words("zeroshot_top1")
    assert lines[-1].startswith("at the transfer fidelity (epochs 30 (search 10)): verdict: ")


def test_a_loss_like_objective_orders_both_fidelities_the_other_way():
    up, down = _made_up("max"), _made_up("min")
    assert down.tau == pytest.approx(up.tau) and down.concordant == up.concordant
    assert (down.winner_low, down.winner_high) == ("t3", "t3")  # the lowest at both
    assert down.held is True


def test_ties_do_not_hold_and_tau_b_is_scipys():
    low = [_group("baseline", [0.5, 0.5]), _group("a", [0.6, 0.6]), _group("b", [0.6, 0.6])]
    high = [_group("baseline", [0.7, 0.7], 3), _group("a", [0.8, 0.8], 3)]
    high.append(_group("b", [0.7, 0.7], 3))
    t = transfer.compare(low, high, _plan(2, first=3), "x")
    assert len(t.pairs) == 3 and t.ties == 2 and t.concordant == 1 and t.accuracy == 1 / 3
    lo, hi = [0.5, 0.6, 0.6], [0.7, 0.8, 0.7]
    assert t.tau == pytest.approx(sps.kendalltau(lo, hi).statistic)
    assert t.rho == pytest.approx(sps.spearmanr(lo, hi).statistic)
    # a constant side: no rank agreement to speak of
    assert all(math.isnan(x) for x in transfer.rank_agreement([0.5, 0.6], [0.7, 0.7]))


def test_a_flipped_pair_is_within_the_noise_when_its_paired_interval_holds_zero():
    """The interval is stats.race's for one rival at one look: scipy's t at one-sided 5% on the
    per-seed differences, the metric's step h in the variance (h^2/6)."""
    low = [_group("baseline", [0.50] * 3), _group("a", [0.60] * 3), _group("b", [0.55] * 3)]
    base = [269 / N, 288 / N, 276 / N]  # whole images of 384
    steady = [x - 10 / N for x in base]  # a: 10 images behind the baseline at every seed
    noisy = [x + d / N for x, d in zip(base, [-30, 25, -10], strict=True)]  # b: all over
    high = [_group("baseline", base, 4), _group("a", steady, 4), _group("b", noisy, 4)]
    t = transfer.compare(low, high, _plan(first=4), "x")
    flipped = {(p.first, p.second): p for p in t.discordant}
    # b's mean ends 5 images ahead of a's too: flipped, and within a's and b's noise
    assert set(flipped) == {("a", "baseline"), ("b", "baseline"), ("a", "b")}
    assert flipped["a", "b"].within_noise
    steady_pair, noisy_pair = flipped["a", "baseline"], flipped["b", "baseline"]
    assert not steady_pair.within_noise and steady_pair.upper < 0
    assert noisy_pair.within_noise and noisy_pair.lower < 0 < noisy_pair.upper
    assert {(p.first, p.second) for p in t.within_noise} == {("b", "baseline"), ("a", "b")}
    for pair, ahead in ((steady_pair, steady), (noisy_pair, noisy)):
        d = [a - b for a, b in zip(ahead, base, strict=True)]
        counts = [round(v * N) for v in [*ahead, *base]]
        h = math.gcd(*(c - counts[0] for c in counts)) / N
        se = math.sqrt((statistics.variance(d) + h**2 / 6) / 3)
        half = sps.t.isf(0.05, 2) * se
        assert pair.gain == pytest.approx(statistics.fmean(d))
        assert (pair.lower, pair.upper) == pytest.approx((pair.gain - half, pair.gain + half))
        assert pair.seeds == 3
    assert "within the seed noise" in noisy_pair.words() and "outside" in steady_pair.words()


def test_the_verdict_there_is_the_confirm_phases_judge_at_one_look():
    low = [_group("baseline", [0.5, 0.5, 0.5]), _group("a", [0.6, 0.6, 0.6])]
    high = [_group("baseline", [0.70, 0.80, 0.60], 4), _group("a", [0.75, 0.85, 0.66], 4)]
    t = transfer.compare(low, high, _plan(first=4), "epochs 4 (search 2)")
    same = confirm.judge(high, _plan(first=4))
    assert t.verdict.verdict == same.verdict == confirm.BEATS_BASELINE
    assert t.verdict.chosen.label == "a" and t.verdict.design.method == same.design.method
    assert "one look at 3 seeds" in t.verdict.design.method
    assert t.words("m") == f"at the transfer fidelity (epochs 4 (search 2)): {same.words('m')}"
    table = transfer.format_table(t, "m")
    assert table.splitlines()[0].startswith("transferred to epochs 4 (search 2)")
    assert "0.6000 ± 0.0000 (3)" in table and t.verdict.comparisons[0].interval() in table


def _sweep_with(tmp_path, **transfer_cfg) -> config.SweepConfig:
    data = _sweep(tmp_path)
    data["search"]["confirm"] = {"top": 3, "seeds": 2, "max_seeds": 4}
    data["search"]["transfer"] = transfer_cfg
    return config.load_sweep(_write(tmp_path, data))


def test_which_configs_and_seeds_it_runs(tmp_path):
    sweep = _sweep_with(tmp_path, overrides={"epochs": 6}, top=2, seeds=3)
    p = transfer.plan(sweep)
    # after every seed the confirm phase may run (train.seed 0 + max_seeds 4)
    assert p.seeds == (5, 6, 7) and (p.first, p.last, p.mode) == (3, 3, "max")
    assert transfer.fidelity_words(sweep) == "epochs 6 (search 3)"
    base = _group("baseline", [0.5, 0.5])
    rivals = [_group("t1", [0.4, 0.4]), _group("t2", [0.7, 0.6]), _group("t3", [0.6, 0.6])]
    rivals.append(confirm.Group("t4", {}))  # never finished a confirm run
    low = confirm.judge([base, *rivals], _plan(2))
    chosen = transfer.choose_groups(low, 2, "max")
    assert [g.label for g in chosen] == ["baseline", "t2", "t3"]
    assert all(not g.values for g in chosen) and chosen[1].params == rivals[1].params
    assert [g.label for g in transfer.choose_groups(low, 2, "min")] == ["baseline", "t1", "t3"]


@pytest.mark.parametrize(
    "transfer_cfg, field, words",
    [
        ({"overrides": {"seed": 3}}, "search.transfer.overrides.seed", "own new seeds"),
        (
            {"overrides": {"loss.label_smoothing": 0.2}},
            "search.transfer.overrides.loss.label_smoothing",
            "is searched",
        ),
        (
            {"overrides": {"data.sample_per_epoch": 64}},
            "search.transfer.overrides.data.sample_per_epoch",
            "not a field of the train config",
        ),
        ({"overrides": {"epochs": 0}}, "search.transfer.overrides.epochs", "greater than"),
        ({"overrides": {"epochs": 3}}, "search.transfer.overrides", "changes nothing"),
        ({"overrides": {}}, "search.transfer.overrides", "at least 1 item"),
        ({"overrides": {"epochs": 6}, "seeds": 1}, "search.transfer.seeds", "greater than"),
        ({"overrides": {"epochs": 6}, "top": 2}, "search.transfer.top", "at most"),
        (
            {"overrides": {"data.zeroshot": "/nonexistent/zs"}},
            "search.transfer.overrides.data.zeroshot",
            "does not exist",
        ),
    ],
)
def test_a_transfer_mistake_is_one_line_with_exit_2(tmp_path, capsys, transfer_cfg, field, words):
    data = _sweep(tmp_path)
    data["search"]["transfer"] = transfer_cfg
    path = _write(tmp_path, data)
    with pytest.raises(UserError) as raised:
        config.load_sweep(path)
    assert raised.value.field == field, str(raised.value)
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f" {field}:" in err and "fix:" in err, err
    assert words in err, err


def test_a_transfer_needs_a_confirm_phase(tmp_path):
    data = _sweep(tmp_path)
    del data["search"]["confirm"]
    data["search"]["transfer"] = {"overrides": {"epochs": 6}}
    with pytest.raises(UserError, match="search.transfer: needs a confirm phase"):
        config.load_sweep(_write(tmp_path, data))


def _sweep_data(t: transfer.Transfer, with_runs: bool = True) -> plots.SweepData:
    seeds = [
        plots.SeedData(g.label, s, "completed", v, g.params, f"c-{g.label}-{s}")
        for g in t.low
        for s, v in g.values.items()
    ]
    moved = [
        plots.SeedData(g.label, s, "completed", v, g.params, f"x-{g.label}-{s}")
        for g in t.high
        for s, v in g.values.items()
    ]
    moved.append(plots.SeedData("t1", 6, "failed", None, {}, "x-t1-6-failed"))
    return plots.SweepData(
        name="sw",
        metric="zeroshot_top1",
        mode="max",
        epochs=2,
        space={"loss.label_smoothing": {"uniform": [0.0, 0.3]}},
        asha=None,
        trials=[],
        seeds=seeds,
        race=(3, 3, 0.0),
        transfers=moved if with_runs else [],
        transfer=(3, t.fidelity),
    )


def test_the_plot_and_the_report_recompute_it_from_the_runs(tmp_path):
    t = _made_up()
    t.high[1].values.pop(6)  # t1's last seed failed at the transfer fidelity
    t = transfer.compare(t.low, t.high, _plan(first=4), t.fidelity)
    data = _sweep_data(t)
    again = plots.transfer_of(data)
    assert again is not None
    assert (again.tau, again.rho, again.concordant) == (t.tau, t.rho, t.concordant)
    assert [p.words() for p in again.pairs] == [p.words() for p in t.pairs]
    assert again.lines("zeroshot_top1") == t.lines("zeroshot_top1")
    done = plots.render(data, tmp_path / "plots")
    assert "transfer.png" in done.files and "transfer.png" not in done.skipped
    assert (tmp_path / "plots" / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.unescape(report.page(data, done, "sqlite:///x.db", "sw"))
    assert all(line in page for line in t.lines("zeroshot_top1"))
    base = t.high[0]
    assert f"{base.mean:.4f} ± {base.std:.4f} (3 seeds)" in page
    assert f"{t.high[1].mean:.4f} ± {t.high[1].std:.4f} (2 seeds)" in page  # t1: one failed
    # before any transfer run: the plot says why it is missing, the report has no section
    empty = _sweep_data(t, with_runs=False)
    assert plots.render(empty, tmp_path / "none").skipped["transfer.png"] == (
        "no transfer run has completed"
    )
    assert report.transfer_section(empty) == []
    # a sweep without a transfer phase is not told about one
    plain = plots.SweepData(**{**empty.__dict__, "transfer": None})
    assert "transfer.png" not in plots.render(plain, tmp_path / "plain").skipped


def test_the_demo_keeps_the_transfer_phase_off_and_a_cluster_file_uses_it():
    root = Path(__file__).resolve().parent.parent / "search_spaces"
    demo = yaml.safe_load((root / "demo.yaml").read_text())
    assert "transfer" not in demo["search"]
    sweep = config.load_sweep(root / "smoclip-cc3m-vitb32.yaml", check_paths=False)
    assert sweep.search.transfer is not None
    assert config.transfer_train(sweep).epochs > sweep.train.epochs
