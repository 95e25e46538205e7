"""smotune.plots from plain data: ASHA's rungs as Ray places them, the study Optuna's figures
read, what is left out and why, and a plot that breaks never stopping the others."""

from __future__ import annotations

import html
import logging

import optuna
import pytest
from PIL import Image

from smotune import plots

SPACE = {
    "loss.label_smoothing": {"uniform": [0.0, 0.3]},
    "optim.weight_decay": {"loguniform": [0.01, 1.0]},
    "optim.lr": {"choice": [1e-3, 1e-9]},
}


def sweep(n: int, seeds: bool = True, space: dict | None = None) -> plots.SweepData:
    """``n`` trials: every third stopped by ASHA at epoch 1, the fifth failed, others completed
    (10 completed at n = 16; the searched values stay inside SPACE up to n = 18)."""
    trials = []
    for i in range(n):
        params = {"loss.label_smoothing": 0.3 * i / max(n, 1), "optim.weight_decay": 0.01 * 1.3**i}
        params["optim.lr"] = 1e-9 if i % 3 == 2 else 1e-3
        status = "early_stopped" if i % 3 == 2 else "failed" if i == 4 else "completed"
        epochs = 3 if status == "completed" else 1
        curve = [(e, 0.5 - params["loss.label_smoothing"] + 0.03 * e) for e in range(1, epochs + 1)]
        trials.append(plots.TrialData(f"t{i:04d}", status, params, curve, curve[-1][1], epochs))
    confirm = [
        plots.SeedData(g, s, "completed", 0.4 + 0.01 * s + (0.05 if g != "baseline" else 0.0))
        for g in ("t0000", "baseline")
        for s in (1, 2, 3)
    ]
    confirm.append(plots.SeedData("baseline", 4, "failed", None))
    return plots.SweepData(
        "t",
        "zeroshot_top1",
        "max",
        3,
        space or SPACE,
        (1, 2.0),
        trials,
        confirm if seeds else [],
        race=(3, 3, 0.0),
    )


@pytest.mark.parametrize(
    "grace,reduction,epochs", [(1, 2.0, 2), (1, 3.0, 10), (2, 2.0, 16), (1, 4.0, 3), (3, 3.0, 2)]
)
def test_rungs_are_where_rays_asha_compares(grace, reduction, epochs):
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(
        time_attr="epoch",
        metric="m",
        mode="max",
        max_t=epochs,
        grace_period=min(grace, epochs),
        reduction_factor=reduction,
    )
    ray_rungs = sorted(m for m, _ in asha._brackets[0]._rungs if m < epochs)
    assert plots.rung_epochs(grace, reduction, epochs) == ray_rungs


def test_the_study_holds_what_the_sweep_told_optuna():
    data = sweep(6)
    st = plots.study(data)
    by_label = {t.user_attrs["tune_trial_id"]: t for t in st.trials}
    assert set(by_label) == {t.label for t in data.trials}
    for t in data.trials:
        frozen = by_label[t.label]
        want = {"completed": "COMPLETE", "early_stopped": "PRUNED", "failed": "FAIL"}[t.status]
        assert frozen.state.name == want
        assert frozen.intermediate_values == dict(t.curve)
        assert frozen.params == t.params
        assert frozen.value == (t.value if want == "COMPLETE" else None)
    assert st.direction == optuna.study.StudyDirection.MAXIMIZE


def test_render_draws_every_plot_or_says_why_not(tmp_path):
    done = plots.render(sweep(16), tmp_path / "all")
    assert done.skipped == {}
    assert done.files == [
        "learning_curves.png",
        "optimization_history.png",
        "parallel_coordinates.png",
        "param_importances.png",
        "slice.png",
        "rung_check.png",
        "asha_stops.png",
        "seed_paired.png",
        "optuna.html",
    ]
    for name in done.files[:-1]:
        with Image.open(tmp_path / "all" / name) as img:
            img.verify()

    early = plots.render(sweep(1, seeds=False), tmp_path / "one")
    assert early.skipped == {
        "param_importances.png": "1 completed trial; fANOVA's importances need at least 10 "
        "(with fewer, their order is close to chance)",
        "asha_stops.png": "ASHA stopped no trial",
        "seed_paired.png": "no confirm run has completed",
    }
    no_asha = plots.SweepData(**{**sweep(3).__dict__, "asha": None})
    assert plots.render(no_asha, tmp_path / "none").skipped["rung_check.png"] == (
        "no ASHA in this sweep: no rung to check"
    )
    assert not (tmp_path / "one" / "seed_paired.png").exists()


def test_importances_only_from_ten_completed_trials(tmp_path):
    """Below ten completed trials fANOVA's bars are close to chance (see
    MIN_COMPLETED_FOR_IMPORTANCES): neither the PNG nor optuna.html draws them, and both say
    why; from ten on both do."""
    few = plots.render(sweep(15), tmp_path / "few")  # 9 completed, 4 stopped, 1 failed
    why = "9 completed trials; fANOVA's importances need at least 10"
    assert few.skipped["param_importances.png"].startswith(why)
    assert not (tmp_path / "few" / "param_importances.png").exists()
    page = (tmp_path / "few" / "optuna.html").read_text()
    assert f"<p>parameter importances: not drawn ({html.escape(why)}" in page
    assert "<h2>parameter importances</h2>" not in page

    enough = plots.render(sweep(16), tmp_path / "enough")
    assert "param_importances.png" in enough.files
    page = (tmp_path / "enough" / "optuna.html").read_text()
    assert "<h2>parameter importances</h2>" in page and "not drawn" not in page


def test_a_redraw_computes_fanova_once_and_writes_the_same_bytes(tmp_path, monkeypatch):
    """fANOVA (a random forest: most of a redraw's CPU) runs once per redraw, for the PNG and
    optuna.html alike; the same data draws byte-identical files (so the drawer uploads only
    what changed), and one more epoch changes the learning curves."""
    calls = []
    fanova = optuna.importance.FanovaImportanceEvaluator.evaluate

    def counted(self, *args, **kwargs):
        calls.append(1)
        return fanova(self, *args, **kwargs)

    monkeypatch.setattr(optuna.importance.FanovaImportanceEvaluator, "evaluate", counted)
    first = plots.render(sweep(16), tmp_path / "a")
    assert len(calls) == 1 and "param_importances.png" in first.files
    assert "<h2>parameter importances</h2>" in (tmp_path / "a" / "optuna.html").read_text()
    again = plots.render(sweep(16), tmp_path / "b")
    assert len(calls) == 2 and again.files == first.files
    for name in first.files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    longer = sweep(16)
    longer.trials[0].curve.append((4, 0.9))
    plots.render(longer, tmp_path / "c")
    assert (tmp_path / "c" / "learning_curves.png").read_bytes() != (
        tmp_path / "a" / "learning_curves.png"
    ).read_bytes()


def test_trial_numbers_agree_between_the_pngs_and_optuna():
    """Trial i in start order is Optuna's trial number i in optuna.html, also when trials
    before it cannot be in the study (running, killed, outside the space): those keep their
    number as empty FAIL trials, which no figure draws."""
    data = sweep(6, seeds=False)
    odd = [
        plots.TrialData("run0", "running", data.trials[0].params, [(1, 0.4)], 0.4, 1),
        plots.TrialData("kill", "killed", data.trials[1].params, [(1, 0.3)], 0.3, 1),
        plots.TrialData("out0", "completed", {"loss.label_smoothing": 0.9}, [(3, 0.5)], 0.5, 3),
    ]
    data = plots.SweepData(**{**data.__dict__, "trials": [*odd, *data.trials]})
    st = plots.study(data)
    assert [t.number for t in st.trials] == list(range(len(data.trials)))
    assert [t.user_attrs["tune_trial_id"] for t in st.trials] == [t.label for t in data.trials]
    for frozen in st.trials[:3]:
        assert frozen.state.name == "FAIL" and not frozen.params and not frozen.intermediate_values
    assert [t.state.name for t in st.trials[3:]] == ["COMPLETE", "COMPLETE", "PRUNED"] + [
        "COMPLETE",
        "FAIL",
        "PRUNED",
    ]
    assert st.trials[3].params == data.trials[3].params


def test_learning_curves_label_each_line_by_its_number_legibly(tmp_path, monkeypatch):
    """Each line ends in its trial's number; with 20 trials whose ends crowd together (the
    same epochs, values 0.001 apart) no two labels overlap."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    drawn = []
    save = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k)
    )
    trials = []
    for i in range(20):
        stopped = i % 2 == 1
        end = (0.3 if stopped else 0.5) + 0.001 * i
        curve = [(1, end)] if stopped else [(1, 0.3), (2, 0.4), (3, end)]
        status = "early_stopped" if stopped else "completed"
        trials.append(plots.TrialData(f"t{i}", status, {}, curve, end, len(curve)))
    data = plots.SweepData(**{**sweep(1, seeds=False).__dict__, "trials": trials})
    assert "learning_curves.png" in plots.render(data, tmp_path).files
    (ax,) = next(f for f in drawn if "per epoch" in f.axes[0].get_title()).axes
    labels = {t.get_text(): t for t in ax.texts if t.get_text().startswith("#")}
    assert sorted(labels) == sorted(f"#{i}" for i in range(20))
    for i, t in enumerate(data.trials):  # tied to the line's last point
        assert labels[f"#{i}"].xy == t.curve[-1]
    renderer = ax.figure.canvas.get_renderer()
    nan = plots.TrialData("n", "failed", {}, [(1, float("nan"))], None, 1)  # no end to label
    only_nan = plots.SweepData(**{**data.__dict__, "trials": [nan]})
    assert "learning_curves.png" in plots.render(only_nan, tmp_path / "nan").files
    boxes = [Text.get_window_extent(t, renderer) for t in labels.values()]  # no leader line
    inside = ax.get_window_extent(renderer).expanded(1.2, 1.0)
    for n, a in enumerate(boxes):
        assert inside.contains(a.x0, a.y0) and inside.contains(a.x1, a.y1)
        for b in boxes[n + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_a_broken_plot_is_a_warning_and_the_others_are_drawn(tmp_path, caplog):
    broken = {**SPACE, "optim.weight_decay": {"loguniform": [0.0, 1.0]}}  # log of 0
    with caplog.at_level(logging.WARNING, logger="smotune.plots"):
        done = plots.render(sweep(6, space=broken), tmp_path)
    assert "learning_curves.png" in done.files and "seed_paired.png" in done.files
    failed = {n: why for n, why in done.skipped.items() if why.startswith("failed: ")}
    assert "parallel_coordinates.png" in failed and "slice.png" in failed
    assert all(f"plot {n} of t not drawn" in caplog.text for n in failed)


def test_seed_groups_count_only_completed_runs():
    groups = plots.seed_groups(sweep(3))
    assert list(groups) == ["baseline", "t0000"]  # the baseline first
    assert groups["baseline"] == pytest.approx({1: 0.41, 2: 0.42, 3: 0.43})


def test_the_seed_paired_plot_shows_the_verdicts_numbers(tmp_path):
    """Recomputed from the confirm runs alone: t0000 is 0.05 better at each of 3 seeds (the
    failed baseline run at seed 4 counts nowhere)."""
    data = sweep(3)
    found = plots.confirm_verdict(data)
    assert found.verdict == "beats_baseline" and found.chosen.label == "t0000"
    (c,) = found.comparisons
    assert c.gain == pytest.approx(0.05) and c.pairs == 3 and c.claimed
    # without the sweep's race settings (an older sweep) there is no gain panel, still a plot
    old = plots.SweepData(**{**data.__dict__, "race": None})
    assert plots.confirm_verdict(old) is None
    assert plots.render(old, tmp_path).files.count("seed_paired.png") == 1
