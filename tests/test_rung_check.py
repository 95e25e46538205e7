"""The rung check of a logged sweep, seen from the outside: the parent's ``rung_*`` metrics
against scipy's Kendall tau over the curves that were logged, the lines the sweep prints at its
end, and ``smotune report``'s plots and page, from MLflow alone.

The store is filled by smotune's own tracking code (the Tune callback, its journal and writer)
driven with real Tune ``Trial`` objects, as in ``test_report.py``; no Ray cluster is started.
"""

from __future__ import annotations

import html.parser
import itertools
import math
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import mlflow
import pytest
import yaml
from scipy import stats
from test_report import check_png, free_port, smotune, tune_trial

from smotune import confirm, plots, rungs, tracking
from smotune.config import SweepConfig
from smotune.plots.asha import asha_stops, rung_check
from smotune.tracking.history import read_sweep
from smotune.tracking.journal import live
from smotune.tracking.writer import close_journal

EPOCHS = 4  # ASHA grace 1, reduction 2: rungs at epochs 1 and 2
# trial id -> (label smoothing, weight decay, zeroshot_top1 per epoch run, NaN loss at its end)
SEARCH = {
    "aaaa0001": (0.02, 0.1, [0.30, 0.42, 0.50, 0.60], False),
    "bbbb0002": (0.08, 0.3, [0.34, 0.40, 0.49, 0.55], False),
    "cccc0003": (0.05, 0.05, [0.28, 0.47, 0.55, 0.66], False),
    "dddd0004": (0.12, 0.6, [0.36, 0.38, 0.45, 0.52], False),
    "eeee0005": (0.27, 0.2, [0.20], False),  # stopped by ASHA at epoch 1
    "ffff0006": (0.24, 0.02, [0.29, 0.33], False),  # stopped at epoch 2
    "gggg0007": (0.10, 0.1, [0.40, 0.50, 0.60, 0.70], True),  # failed: not a finished run
}
BASELINE = {"loss.label_smoothing": 0.1, "optim.weight_decay": 0.1}
CONFIRMED = "cccc0003"
# (config, seed) -> zeroshot_top1 per epoch of the confirm runs (the search's order at epoch 1
# is scrambled against the last epoch's; at epoch 2 it nearly holds)
CONFIRM = {
    ("baseline", 1): [0.33, 0.41, 0.50, 0.57],
    ("baseline", 2): [0.27, 0.37, 0.46, 0.53],
    ("baseline", 3): [0.31, 0.44, 0.52, 0.61],
    (CONFIRMED, 1): [0.35, 0.48, 0.56, 0.64],
    (CONFIRMED, 2): [0.26, 0.45, 0.53, 0.62],
    (CONFIRMED, 3): [0.32, 0.39, 0.47, 0.56],
}

SWEEP_YAML = """\
name: {name}
train:
  data: {{train: "data/synth/train-{{0000..0003}}.tar", zeroshot: data/synth/zeroshot}}
  loss: {{label_smoothing: 0.1}}
  optim: {{weight_decay: 0.1}}
  epochs: {epochs}
  workers: {{num: 2, cpus: 0}}
space:
  loss.label_smoothing: {{uniform: [0.0, 0.3]}}
  optim.weight_decay: {{loguniform: [0.01, 1.0]}}
search: {{algo: random, samples: 7, concurrent: 1, seed: 0, confirm: {{top: 1, seeds: 3}}}}
schedule: {{asha: {{grace: 1, reduction: 2}}}}
tracking: {{uri: "{uri}"}}
storage: {{path: "{storage}"}}
"""


def run(callback, trials: list, trial, curve: list[float], nan: bool = False) -> None:
    """One trial as Tune hands it to the callback: started, an epoch at a time, ended."""
    trials.append(trial)
    callback.on_trial_start(0, trials, trial)
    for epoch, value in enumerate(curve, 1):
        loss = math.nan if nan and epoch == len(curve) else 2.0 - 0.1 * epoch
        result = {"epoch": epoch, "zeroshot_top1": value, "train_loss": loss, "lr": 1e-3}
        callback.on_trial_result(0, trials, trial, result)
    callback.on_trial_complete(0, trials, trial)


class Logged:
    """A sweep logged by smotune's tracking code, ended as ``sweep._run`` ends it: the rung
    check logged through the journal (``tracking.log_rungs``) and its lines kept."""

    def __init__(self, uri: str, name: str, storage: Path):
        text = SWEEP_YAML.format(name=name, uri=uri, storage=storage, epochs=EPOCHS)
        self.uri, self.name = uri, name
        self.sweep = SweepConfig.model_validate(yaml.safe_load(text))
        search = tracking.MlflowSweepCallback(self.sweep, text)
        trials: list = []
        for trial_id, (s, wd, curve, nan) in SEARCH.items():
            config = {"loss.label_smoothing": s, "optim.weight_decay": wd}
            run(search, trials, tune_trial(trial_id, config), curve, nan)
        search.on_experiment_end(trials)
        journal = tracking.sweep_journal_path(self.sweep)
        self.parent_id = tracking.sweep_parent_id(uri, name, str(journal.parent))

        winner = {p: SEARCH[CONFIRMED][i] for i, p in enumerate(BASELINE)}
        groups = [confirm.Group("baseline", BASELINE), confirm.Group(CONFIRMED, winner)]
        callback = tracking.MlflowSweepCallback(
            self.sweep,
            text,
            phase="confirm",
            parent_run_id=self.parent_id,
            confirm_labels=lambda config: confirm.group_of(groups, config).label,
        )
        trials = []
        self.confirm_ids = {}
        for point in confirm.points(groups, [1, 2, 3]):
            key = (confirm.group_of(groups, point).label, point["seed"])
            trial_id = f"conf{len(trials):04d}"
            self.confirm_ids[trial_id] = key
            run(callback, trials, tune_trial(trial_id, point), CONFIRM[key])
        callback.on_experiment_end(trials)
        self.lines = tracking.log_rungs(uri, self.parent_id)  # as the sweep's end calls it
        writer, deadline = live(journal), time.monotonic() + 900
        while not writer.drain(30):
            assert time.monotonic() < deadline, writer.status_line()
        assert tracking.wait_for_plots() is None  # as a sweep's end waits for its drawer
        self.journal = journal
        self.ops = [op["op"] for op in writer.snapshot().ops]
        close_journal(writer)


@pytest.fixture(scope="module")
def logged(tmp_path_factory, migrated_db) -> Logged:
    root = tmp_path_factory.mktemp("rung-store")
    shutil.copy(migrated_db, root / "mlflow.db")
    sweep = Logged(f"sqlite:///{root}/mlflow.db", "rung-checked", root / "runs")
    shutil.rmtree(root / "runs")
    return sweep


def full_runs() -> dict[str, list[float]]:
    """What ran every epoch, as logged: completed search trials and every confirm run."""
    done = {k: c for k, (_, _, c, nan) in SEARCH.items() if len(c) == EPOCHS and not nan}
    return {**done, **{f"{g} seed {s}": c for (g, s), c in CONFIRM.items()}}


def by_hand(epoch: int) -> dict[str, float]:
    """The check at ``epoch`` counted from the logged curves (scipy for tau and p)."""
    curves = list(full_runs().values())
    x = [c[epoch - 1] for c in curves]
    y = [c[-1] for c in curves]
    pairs = itertools.combinations(zip(x, y, strict=True), 2)
    signs = [(a[0] - b[0]) * (a[1] - b[1]) for a, b in pairs]
    concordant, discordant = sum(s > 0 for s in signs), sum(s < 0 for s in signs)
    exact = stats.kendalltau(x, y, alternative="greater", method="exact")
    return {
        "runs": len(curves),
        "pairs": len(signs),
        "concordant": concordant,
        "discordant": discordant,
        "ties": len(signs) - concordant - discordant,
        "concordance": concordant / (concordant + discordant),
        "tau": stats.kendalltau(x, y).statistic,
        "p": exact.pvalue,
    }


def test_the_parent_holds_the_check_scipy_computes_from_the_logged_curves(logged):
    parent = mlflow.MlflowClient(tracking_uri=logged.uri).get_run(logged.parent_id)
    metrics, tags = parent.data.metrics, parent.data.tags
    assert "rungs" in logged.ops  # written through the journal, like every other write
    assert {k for k in metrics if k.startswith("rung_")} == {
        f"rung_{e}/{f}"
        for e in (1, 2)
        for f in (*by_hand(1), "best_place")  # runs ... p, and the final best's rung place
    }
    for epoch in (1, 2):
        want = by_hand(epoch)
        for field, value in want.items():
            assert metrics[f"rung_{epoch}/{field}"] == pytest.approx(value, rel=1e-9), field
        judgement = rungs.AGREES if want["p"] <= rungs.ALPHA else rungs.CHANCE
        assert tags[f"rung_{epoch}/judgement"] == judgement
    # the curves were chosen so: epoch 1 scrambled, epoch 2 nearly in the last epoch's order
    assert tags["rung_1/judgement"] == tags["rung_check"] == rungs.CHANCE
    assert tags["rung_2/judgement"] == rungs.AGREES
    assert by_hand(1)["runs"] == 10 and by_hand(2)["tau"] > 0.8
    best = max(full_runs().values(), key=lambda c: c[-1])  # cccc0003's 0.66: third at epoch 1
    assert metrics["rung_1/best_place"] == 1 + sum(c[0] > best[0] for c in full_runs().values())


def test_the_sweep_prints_a_line_per_rung_and_the_advice(logged):
    """``log_rungs`` returns what ``sweep._run`` prints; it says what the parent holds."""
    first, second, advice = logged.lines
    one, two = by_hand(1), by_hand(2)
    assert first.startswith("rung check, epoch 1 against epoch 4, 10 runs: Kendall tau ")
    assert f"tau {one['tau']:+.2f}, {one['concordant']} of {one['pairs']} untied" in first
    assert f"p {one['p']:.2g} (exact)" in first and first.endswith("no better than chance")
    assert f"tau {two['tau']:+.2f}" in second
    assert second.endswith("the rung's order agrees with the final one better than chance")
    assert advice.startswith("rung check: at ASHA's first rung (epoch 1) the order of 10 full")
    assert f"at epoch 2 the order agrees, tau {two['tau']:+.2f}" in advice
    assert "schedule.asha.grace (now 1;" in advice and "schedule.asha.reduction (now 2;" in advice
    # read back from MLflow alone (no journal left), the report's lines are the same
    data = read_sweep(logged.uri, "rung-checked", "--tracking-uri")
    assert rungs.sweep_lines(data) == logged.lines
    # and outside a sweep (no journal) log_rungs writes at once and says the same
    assert tracking.log_rungs(logged.uri, logged.parent_id) == logged.lines


def test_confirm_runs_come_back_with_their_curves(logged):
    data = read_sweep(logged.uri, "rung-checked", "--tracking-uri")
    assert {s.label: (s.group, s.seed) for s in data.seeds} == logged.confirm_ids
    for s in data.seeds:
        assert s.curve == list(enumerate(CONFIRM[(s.group, s.seed)], 1))
    assert set(rungs.full_curves(data)) == {
        "aaaa0001",
        "bbbb0002",
        "cccc0003",
        "dddd0004",
        *logged.confirm_ids,
    }


class Rungs(html.parser.HTMLParser):
    """The items of the report's ``<ul class='rungs'>``."""

    def __init__(self):
        super().__init__()
        self.items: list[str] = []
        self._in, self._li = False, False

    def handle_starttag(self, tag, attrs):
        if tag == "ul" and dict(attrs).get("class") == "rungs":
            self._in = True
        elif tag == "li" and self._in:
            self._li = True
            self.items.append("")

    def handle_endtag(self, tag):
        if tag == "ul":
            self._in = False
        elif tag == "li":
            self._li = False

    def handle_data(self, data):
        if self._li:
            self.items[-1] += data


def test_the_report_shows_the_check_and_what_asha_stopped(logged, tmp_path):
    out = tmp_path / "report"
    args = ["--experiment", "rung-checked", "--tracking-uri", logged.uri, "--out", str(out)]
    proc = smotune("report", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (out / "index.html").read_text()
    found = Rungs()
    found.feed(page)
    assert found.items == logged.lines
    for name in ("rung_check.png", "asha_stops.png"):
        assert f"<img src='plots/{name}'" in page
        check_png(out / "plots" / name)


def svg_texts(draw, data: plots.SweepData, path: Path) -> list[str]:
    """The text a plot draws (an SVG with its text kept as text)."""
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        draw(data, path)
    texts = []
    for el in ET.parse(path).iter():
        if el.tag.endswith("text"):
            texts.append("".join(el.itertext()))
    return texts


def test_the_plots_say_the_checks_numbers_and_colour_by_the_searched_values(logged, tmp_path):
    data = read_sweep(logged.uri, "rung-checked", "--tracking-uri")
    drawn = svg_texts(rung_check, data, tmp_path / "rung_check.svg")
    for epoch in (1, 2):
        want = by_hand(epoch)
        assert f"rung {epoch}: epoch {epoch} against epoch {EPOCHS}" in drawn
        assert (
            f"10 runs: tau {want['tau']:+.2f}, p {want['p']:.2g}, "
            f"{want['concordant']}/{want['pairs']} concordant"
        ) in drawn
    assert drawn.count("no better than chance") == 1
    assert drawn.count("agrees better than chance") == 1

    drawn = svg_texts(asha_stops, data, tmp_path / "asha_stops.svg")
    # both stopped trials had more smoothing than every completed trial: 8 of 8 pairs
    assert "stopped > completed in 100% of 8 pairs" in drawn
    # weight decay: 0.2 beats 0.1 and 0.05 of (0.1, 0.3, 0.05, 0.6); 0.02 beats none
    assert "stopped > completed in 25% of 8 pairs" in drawn
    assert {"loss.label_smoothing", "optim.weight_decay"} <= set(drawn)  # the colour bars
    assert "stopped by ASHA (2)" in drawn and "completed (4)" in drawn


def test_with_the_store_down_the_sweep_says_the_check_waits(tmp_path, monkeypatch):
    """The sweep's end does not compute the check from a store that has not taken its runs: it
    says the check waits and how to write them (the ``rungs`` op stays in the journal)."""
    monkeypatch.setenv("SMOTUNE_TRACKING_DRAIN_S", "1")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    text = SWEEP_YAML.format(name="down", uri=uri, storage=tmp_path / "runs", epochs=EPOCHS)
    sweep = SweepConfig.model_validate(yaml.safe_load(text))
    callback = tracking.MlflowSweepCallback(sweep, text)
    trials: list = []
    s, wd, curve, _ = SEARCH["aaaa0001"]
    config = {"loss.label_smoothing": s, "optim.weight_decay": wd}
    run(callback, trials, tune_trial("aaaa0001", config), curve)
    callback.on_experiment_end(trials)
    journal = tracking.sweep_journal_path(sweep)
    parent = tracking.sweep_parent_id(uri, "down", str(journal.parent))  # a journal key
    try:
        waits, status = tracking.log_rungs(uri, parent)
        ops = live(journal).snapshot().unwritten
    finally:
        close_journal(live(journal))
    assert waits.startswith("rung check: waits for the tracking store")
    assert status.startswith("tracking: ") and f"smotune sync {journal}" in status
    assert ops[-1]["op"] == "rungs" and ops[-1]["parent"] == parent
