"""The sweep as people look at it: plots on the parent run, `smotune report`, the MLflow REST API.

The MLflow store is filled by smotune's own tracking code (the Tune callback, its journal and
writer, ``log_verdict``) driven with real Tune ``Trial`` objects, so it holds exactly what a
sweep writes; no Ray cluster is started.
"""

from __future__ import annotations

import html.parser
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from PIL import Image

from smotune import confirm, optuna_study, plots, tracking
from smotune import search as smotune_search
from smotune.config import SweepConfig
from smotune.tracking.history import read_sweep
from smotune.tracking.journal import live
from smotune.tracking.writer import close_journal

EPOCHS = 3
PNGS = {  # no param_importances.png: 2 completed trials are too few to say anything
    "learning_curves.png",
    "optimization_history.png",
    "parallel_coordinates.png",
    "slice.png",
    "rung_check.png",
    "asha_stops.png",
    "seed_paired.png",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINE = {"loss.label_smoothing": 0.1, "optim.weight_decay": 0.1}
# trial id -> (label smoothing, weight decay, epochs it runs, NaN loss), in start order; the
# sweep's own ASHA (grace 1, reduction 2) stops bbbb at epoch 1, below cccc's and aaaa's values
SEARCH = {
    "cccc0003": (0.1, 0.03, EPOCHS, False),
    "aaaa0001": (0.05, 0.3, EPOCHS, False),
    "bbbb0002": (0.25, 0.5, 1, False),
    "dddd0004": (0.2, 0.02, 1, True),
}
STATUS = {"aaaa0001": "completed", "bbbb0002": "early_stopped", "cccc0003": "completed"}
STATUS["dddd0004"] = "failed"

SWEEP_YAML = """\
name: {name}
train:
  data: {{train: "data/synth/train-{{0000..0003}}.tar", zeroshot: data/synth/zeroshot}}
  loss: {{label_smoothing: 0.1}}
  optim: {{weight_decay: 0.1}}
  epochs: 3
  workers: {{num: 2, cpus: 0}}
space:
  loss.label_smoothing: {{uniform: [0.0, 0.3]}}
  optim.weight_decay: {{loguniform: [0.01, 1.0]}}
  model.text_dropout: {{fixed: 0.1}}
search: {{algo: random, samples: 4, concurrent: 1, seed: 0, confirm: {{top: 1, seeds: 2}}}}
schedule: {{asha: {{grace: 1, reduction: 2}}}}
tracking: {{uri: "{uri}"}}
storage: {{path: "{storage}"}}
"""


def top1(smoothing: float, weight_decay: float, epoch: int, seed: int = 0) -> float:
    return round(0.6 - smoothing - 0.1 * weight_decay + 0.02 * epoch + 0.013 * seed, 6)


def result(config: dict, epoch: int, nan: bool = False) -> dict:
    s, wd = config["loss.label_smoothing"], config["optim.weight_decay"]
    return {
        "epoch": epoch,
        "zeroshot_top1": top1(s, wd, epoch, config.get("seed", 0)),
        "zeroshot_top5": 0.9,
        "train_loss": float("nan") if nan else 2.0 - 0.1 * epoch,
        "lr": 1e-3,
    }


def tune_trial(trial_id: str, config: dict):
    """A real Tune ``Trial`` (never run: the callback's hooks are called as Tune would)."""
    from ray import tune
    from ray.tune.experiment import Trial

    tune.register_trainable("smotune_report_trainable", lambda config: None)
    return Trial("smotune_report_trainable", config=config, trial_id=trial_id)


def run_trial(callback, trials: list, trial, epochs: int, nan: bool = False, asha=None) -> None:
    """The trial's events as Tune calls them; ``asha`` (the sweep's scheduler) judges each
    result first, as Tune's controller does, and must stop the trial where ``epochs`` ends
    (ASHA stops every trial at its last epoch, max_t)."""
    trials.append(trial)
    if asha is not None:
        asha.on_trial_add(None, trial)
    callback.on_trial_start(0, trials, trial)
    for epoch in range(1, epochs + 1):
        res = result(trial.config, epoch, nan)
        decision = asha.on_trial_result(None, trial, res) if asha is not None else None
        callback.on_trial_result(0, trials, trial, res)
        if asha is not None and not nan:
            assert (decision == "STOP") == (epoch == epochs), (trial, epoch)  # or at max_t
    callback.on_trial_complete(0, trials, trial)


class Logged:
    """A sweep logged to MLflow by smotune's own tracking code, and what it should show."""

    def __init__(self, uri: str, name: str, storage: Path, after_first_trial=None):
        text = SWEEP_YAML.format(name=name, uri=uri, storage=storage)
        self.uri, self.name = uri, name
        self.sweep = SweepConfig.model_validate(yaml.safe_load(text))
        asha = smotune_search.make_scheduler(self.sweep, optuna_study.storage_url(self.sweep))
        search = tracking.MlflowSweepCallback(self.sweep, text, scheduler=asha)
        trials: list = []
        for n, (trial_id, (s, wd, epochs, nan)) in enumerate(SEARCH.items()):
            config = {"loss.label_smoothing": s, "optim.weight_decay": wd}
            run_trial(search, trials, tune_trial(trial_id, config), epochs, nan, asha)
            if n == 0 and after_first_trial is not None:
                assert search.flush(60) and tracking.wait_for_plots() is None  # drawn apart
                after_first_trial(search.parent_run_id)
        search.on_experiment_end(trials)
        journal = tracking.sweep_journal_path(self.sweep)
        self.parent_id = tracking.sweep_parent_id(uri, name, str(journal.parent))

        # the confirm phase as confirm_run.run runs it: one round, baseline + the best config
        best = {"loss.label_smoothing": 0.05, "optim.weight_decay": 0.3}
        self.groups = [confirm.Group("baseline", BASELINE), confirm.Group("aaaa0001", best)]
        callback = tracking.MlflowSweepCallback(
            self.sweep,
            text,
            phase="confirm",
            parent_run_id=self.parent_id,
            confirm_labels=lambda config: confirm.group_of(self.groups, config).label,
        )
        trials, finished = [], []
        for point in confirm.points(self.groups, [1, 2]):
            trial_id = f"conf{len(trials):04d}"
            run_trial(callback, trials, tune_trial(trial_id, point), EPOCHS)
            finished.append((point, result(point, EPOCHS)))
        callback.on_experiment_end(trials)
        confirm.collect(self.groups, finished, self.sweep)
        self.verdict = confirm.judge(self.groups, confirm.Plan.of(self.sweep))
        tracking.log_verdict(uri, self.parent_id, self.verdict, "zeroshot_top1")
        writer, deadline = live(journal), time.monotonic() + 900
        while not writer.drain(30):
            assert time.monotonic() < deadline, writer.status_line()
        assert tracking.wait_for_plots() is None  # as a sweep's end waits for its drawer
        close_journal(writer)


@pytest.fixture(scope="module")
def logged(tmp_path_factory, migrated_db) -> Logged:
    """A sweep in a sqlite store, and nothing else left of it: Tune's folder and the journal
    are gone, as for a sweep that ran on another machine."""
    root = tmp_path_factory.mktemp("report-store")
    shutil.copy(migrated_db, root / "mlflow.db")
    sweep = Logged(f"sqlite:///{root}/mlflow.db", "reported", root / "runs")
    shutil.rmtree(root / "runs")
    return sweep


class Page(html.parser.HTMLParser):
    """What the report's HTML references, and its text by element class and table."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, src/href)
        self.tables: list[list[list[str]]] = []
        self.classed: dict[str, str] = {}
        self._cls: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.refs.append((tag, attrs[key]))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if "class" in attrs and tag == "p":
            self._cls = attrs["class"]
            self.classed[self._cls] = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "p":
            self._cls = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._cls is not None:
            self.classed[self._cls] += data


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 200, (path, img.size)


def smotune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smotune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_report_rebuilds_plots_and_page_from_mlflow_alone(logged, tmp_path):
    out = tmp_path / "report"
    proc = smotune(
        "report",
        "--experiment",
        "reported",
        "--tracking-uri",
        logged.uri,
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == (
        f"wrote {out}/index.html: 4 search trials, 4 confirm runs, 8 plots in {out}/plots; "
        "not drawn: param_importances.png"
    )
    text = (out / "index.html").read_text()
    page = Page()
    page.feed(text)
    # the space as the sweep file says it, in words
    searched = "searched: loss.label_smoothing uniform 0-0.3; optim.weight_decay loguniform 0.01-1"
    assert f"{searched}</p>" in text
    # importances over 2 completed trials are not drawn: the page and optuna.html say why
    assert (
        "Parameter importances: 2 completed trials; fANOVA&#x27;s importances need at least 10"
        in text
    )
    assert not (out / "plots" / "param_importances.png").exists()

    # every image the page references is there and is a PNG; nothing is fetched from elsewhere
    images = [src for tag, src in page.refs if tag == "img"]
    assert sorted(images) == sorted(f"plots/{name}" for name in PNGS)
    for _, ref in page.refs:
        assert "://" not in ref and not ref.startswith("/"), ref
        assert (out / ref).is_file(), ref
    for src in images:
        check_png(out / src)
    (link,) = [href for tag, href in page.refs if tag == "a"]
    optuna_page = (out / link).read_text()
    assert link == "plots/optuna.html" and "Plotly.newPlot" in optuna_page
    assert "<p>parameter importances: not drawn (2 completed trials;" in optuna_page
    assert "<script src=" not in optuna_page.replace(" ", "").replace("<scriptsrc", "<script src")

    # the verdict as the sweep printed it, from the confirm runs
    assert page.classed["verdict"] == logged.verdict.words("zeroshot_top1")
    assert logged.verdict.verdict is not None

    # the summary: one row per search trial, its values, epochs, final top-1 and status
    summary, confirmed = page.tables
    head, *rows = summary
    assert head == [
        "#",
        "trial",
        "loss.label_smoothing",
        "optim.weight_decay",
        "epochs",
        "zeroshot_top1",
        "status",
        "reason",
    ]
    # trials numbered as in the PNGs and optuna.html: start order from 0
    assert [row[:2] for row in rows] == [[f"#{i}", t] for i, t in enumerate(SEARCH)]
    by_trial = {row[1]: row[1:] for row in rows}
    # the epoch-1 rung held cccc's and aaaa's values when bbbb reached it; ASHA's cutoff at
    # reduction 2 is their median
    cutoff = (top1(0.1, 0.03, 1) + top1(0.05, 0.3, 1)) / 2
    stopped = (
        f"stopped by ASHA at epoch 1/{EPOCHS}: zeroshot_top1 {top1(0.25, 0.5, 1):.4f} below "
        f"the epoch-1 rung's cutoff {cutoff:.4f}"
    )
    reasons = {"bbbb0002": stopped, "dddd0004": "nan loss"}
    for trial_id, (s, wd, epochs, _) in SEARCH.items():
        row = by_trial[trial_id]
        assert row[1:4] == [f"{s:.4g}", f"{wd:.4g}", f"{epochs}/{EPOCHS}"]
        assert row[4] == f"{top1(s, wd, epochs):.4f}"
        best = " (best)" if trial_id == "aaaa0001" else ""
        assert row[5] == STATUS[trial_id] + best
        assert row[6] == reasons.get(trial_id, "")

    # the confirm table: each config's seeds, mean and std over the new seeds only
    head, *rows = confirmed
    assert [row[0] for row in rows] == ["baseline", "aaaa0001"]
    for row, group in zip(rows, logged.groups, strict=True):
        assert row[3:6] == [str(group.n), f"{group.mean:.4f}", f"{group.std:.4f}"]
    assert rows[1][6] == f"{top1(0.05, 0.3, EPOCHS):.4f}"  # its score at the search seed

    # a table too wide for the page scrolls by itself (seen at 1400 px: the confirm table
    # pushed the page sideways), and a dotted train path may break after its dots
    assert text.count("<div class='wide'><table>") == len(page.tables) == 2
    assert ".wide { overflow-x: auto; }" in text
    assert "<th>loss.<wbr>label_smoothing</th>" in text


def test_report_user_mistakes_are_one_line(logged, tmp_path):
    cases = [
        (["--experiment", "nope", "--tracking-uri", logged.uri], "no experiment named 'nope'"),
        (
            ["--experiment", "reported", "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
            "cannot reach the MLflow server",
        ),
        (
            ["--experiment", "reported", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
            "no MLflow database at",
        ),
    ]
    for args, problem in cases:
        proc = smotune("report", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and problem in lines[0] and "; fix: " in lines[0], proc.stderr
    assert not list(tmp_path.glob("*-report"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(uri: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One call of MLflow's REST API, as the UI makes it (JSON in, JSON out)."""
    url = f"{uri}/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query, doseq=True)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def artifact_files(uri: str, run_id: str, path: str) -> dict[str, int]:
    listed = rest(uri, "api/2.0/mlflow/artifacts/list", run_id=run_id, path=path)
    return {f["path"]: int(f.get("file_size", 0)) for f in listed.get("files", [])}


def artifact_bytes(uri: str, run_id: str, path: str) -> bytes:
    query = urllib.parse.urlencode({"run_uuid": run_id, "path": path})
    with urllib.request.urlopen(f"{uri}/get-artifact?{query}", timeout=30) as resp:
        return resp.read()


def test_the_mlflow_ui_reads_the_sweep_over_rest(mlflow_server):
    uri = mlflow_server
    seen: dict[str, bytes] = {}

    def after_first_trial(parent_id: str) -> None:  # plots are on the parent as trials end
        files = artifact_files(uri, parent_id, "plots")
        assert "plots/learning_curves.png" in files, files
        assert "plots/seed_paired.png" not in files
        seen["curves"] = artifact_bytes(uri, parent_id, "plots/learning_curves.png")

    with tempfile.TemporaryDirectory() as storage:
        logged = Logged(uri, "reported-http", Path(storage) / "runs", after_first_trial)

    exp = rest(uri, "api/2.0/mlflow/experiments/get-by-name", experiment_name="reported-http")
    exp_id = exp["experiment"]["experiment_id"]
    runs = rest(
        uri,
        "api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp_id], "max_results": 1000, "order_by": ["attributes.start_time"]},
    )["runs"]

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    def params(run):
        return {p["key"]: p["value"] for p in run["data"].get("params", [])}

    (parent,) = [r for r in runs if tags(r).get("kind") == "sweep"]
    children = [r for r in runs if tags(r).get("kind") == "trial"]
    parent_id = parent["info"]["run_id"]
    assert parent_id == logged.parent_id and len(children) == len(SEARCH) + 4
    assert tags(parent)["verdict"] == logged.verdict.verdict
    assert params(parent)["space.loss.label_smoothing"] == "{uniform: [0.0, 0.3]}"
    search = {tags(c)["trial_id"]: c for c in children if tags(c)["phase"] == "search"}
    assert set(search) == set(SEARCH)
    for child in children:  # nested under the parent, params named like the YAML
        assert tags(child)["mlflow.parentRunId"] == parent_id
        assert {"loss.label_smoothing", "optim.weight_decay", "model.text_dropout"} <= set(
            params(child)
        )
        assert params(child)["model.text_dropout"] == "0.1"

    # the compare view's charts: each metric's history per run, one point per epoch
    ids = [search[t]["info"]["run_id"] for t in SEARCH]
    bulk = rest(
        uri,
        "ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
        run_ids=ids,
        metric_key="zeroshot_top1",
        max_results=100,
    )["metrics"]
    for trial_id, (s, wd, epochs, _) in SEARCH.items():
        run_id = search[trial_id]["info"]["run_id"]
        points = sorted((int(m["step"]), m["value"]) for m in bulk if m["run_id"] == run_id)
        assert points == [(e, pytest.approx(top1(s, wd, e))) for e in range(1, epochs + 1)]
        history = rest(
            uri, "api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="zeroshot_top1"
        )["metrics"]
        assert sorted(int(m["step"]) for m in history) == list(range(1, epochs + 1))

    # the artifact view of the parent: every plot, refreshed since the first trial ended
    files = artifact_files(uri, parent_id, "plots")
    assert set(files) == {f"plots/{n}" for n in PNGS | {"optuna.html"}}, files
    assert all(size > 1000 for size in files.values()), files
    for name in PNGS:
        assert artifact_bytes(uri, parent_id, f"plots/{name}")[:8] == PNG_MAGIC, name
    assert artifact_bytes(uri, parent_id, "plots/learning_curves.png") != seen["curves"]
    assert {"sweep.yaml", "best.yaml", "plots"} <= {
        Path(p).name for p in artifact_files(uri, parent_id, "")
    }


def test_a_plot_that_fails_is_a_warning_and_the_writes_go_on(sqlite_uri, tmp_path, caplog):
    """A parent whose space cannot be read back breaks every plot refresh: each one is a logged
    warning, the sweep's other writes all land, and nothing is refused."""
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri)

    def break_space(parent_id: str) -> None:
        client.log_param(parent_id, "space.optim.lr", "{uniform: [0.3, 0.0]}")

    with caplog.at_level("WARNING", logger="smotune.tracking.history"):
        logged = Logged(sqlite_uri, "broken", tmp_path / "runs", after_first_trial=break_space)
    warnings = [r.getMessage() for r in caplog.records if "not drawn" in r.getMessage()]
    assert warnings and all(f"plots of run {logged.parent_id} not drawn" in w for w in warnings)
    runs = client.search_runs([client.get_experiment_by_name("broken").experiment_id])
    assert len(runs) == 1 + len(SEARCH) + 4
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"}
    parent = client.get_run(logged.parent_id)
    assert parent.data.tags["verdict"] == logged.verdict.verdict
    # the first trial's plots were drawn before the space broke; none since
    names = {Path(a.path).name for a in client.list_artifacts(logged.parent_id, "plots")}
    assert "seed_paired.png" not in names and "learning_curves.png" in names


def test_the_plots_data_is_what_the_sweep_logged(logged):
    data = read_sweep(logged.uri, "reported", "--tracking-uri")
    assert data.metric == "zeroshot_top1" and data.mode == "max" and data.epochs == EPOCHS
    assert data.asha == (1, 2.0)
    assert data.space == {
        "loss.label_smoothing": {"uniform": [0.0, 0.3]},
        "optim.weight_decay": {"loguniform": [0.01, 1.0]},
    }
    assert [t.label for t in data.trials] == list(SEARCH)
    for t in data.trials:
        s, wd, epochs, _ = SEARCH[t.label]
        assert t.status == STATUS[t.label]
        assert t.params == {"loss.label_smoothing": s, "optim.weight_decay": wd}
        assert t.curve == [(e, top1(s, wd, e)) for e in range(1, epochs + 1)]
    assert plots.seed_groups(data) == {g.label: g.values for g in logged.groups}
    assert data.verdict == logged.verdict.verdict and data.best_trial == logged.verdict.chosen.label


def test_mlflow_opens_on_the_runs_named_described_with_their_damage(mlflow_server, tmp_path):
    """What MLflow's UI shows of a sweep, read over REST as the UI reads it: runs named for what
    they are, the baseline marked, each run's description saying how it ended, the damaged
    shards on the trial that met them and their count on the parent, and the saved view (the
    experiment tag the printed URL opens: columns, the objective's sort and charts)."""
    uri = mlflow_server
    text = SWEEP_YAML.format(name="ui-view", uri=uri, storage=tmp_path / "runs")
    text = text.replace("seed: 0,", "seed: 0, include_default: true,")
    sweep = SweepConfig.model_validate(yaml.safe_load(text))
    cut = "/d/train-0000.tar: ends at byte 4096 of 4096: truncated inside 000001251.jpg"
    garbled = "/d/train-0001.tar: bytes 6380032-6445568 of 9000000 unreadable: invalid tar header"
    other = "/d/train-0002.tar: unreadable: ReadError: not a tar file"

    search = tracking.MlflowSweepCallback(sweep, text)
    base = tune_trial("base0001", dict(BASELINE))
    rival = tune_trial("rival002", {"loss.label_smoothing": 0.25, "optim.weight_decay": 0.5})
    trials = [base, rival]
    search.on_trial_start(0, trials, base)
    for epoch, damage in ((1, cut), (2, f"{cut}\n{garbled}"), (3, f"{cut}\n{garbled}")):
        search.on_trial_result(
            0, trials, base, {**result(base.config, epoch), "data_damage": damage}
        )
    search.on_trial_complete(0, trials, base)
    search.on_trial_start(0, trials, rival)
    search.on_trial_result(0, trials, rival, {**result(rival.config, 1), "data_damage": other})
    search.on_trial_complete(0, trials, rival)  # one epoch of 3: ASHA stopped it
    search.on_experiment_end(trials)
    parent_id = search.parent_run_id

    groups = [confirm.Group("baseline", dict(BASELINE)), confirm.Group("rival002", rival.config)]
    confirming = tracking.MlflowSweepCallback(
        sweep,
        text,
        phase="confirm",
        parent_run_id=parent_id,
        confirm_labels=lambda config: confirm.group_of(groups, config).label,
    )
    ran: list = []  # run_trial adds each trial as Tune lists it
    for i, point in enumerate(confirm.points(groups, [1])):
        run_trial(confirming, ran, tune_trial(f"conf{i:04d}", point), EPOCHS)
    confirming.on_experiment_end(ran)

    exp = rest(uri, "api/2.0/mlflow/experiments/get-by-name", experiment_name="ui-view")
    exp_id = exp["experiment"]["experiment_id"]
    found = rest(uri, "api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    by_name = {r["info"]["run_name"]: r for r in found}
    assert set(by_name) == {
        "sweep ui-view",
        "search #0 baseline ls=0.1 wd=0.1",
        "search #1 ls=0.25 wd=0.5",
        "confirm baseline seed 1",
        "confirm #1 seed 1 ls=0.25 wd=0.5",
    }
    marked = {n for n, r in by_name.items() if tags(r).get("baseline") == "true"}
    assert marked == {"search #0 baseline ls=0.1 wd=0.1", "confirm baseline seed 1"}
    described = {n: tags(r)["mlflow.note.content"] for n, r in by_name.items()}
    best = top1(0.1, 0.1, EPOCHS)
    assert described["search #0 baseline ls=0.1 wd=0.1"] == (
        f"completed 3/3 epochs: zeroshot_top1 {best:.4f}"
    )
    assert described["search #1 ls=0.25 wd=0.5"] == (
        f"stopped by ASHA at epoch 1/3: zeroshot_top1 {top1(0.25, 0.5, 1):.4f}"
    )
    assert described["sweep ui-view"].startswith(
        f"best searched config: search #0 baseline ls=0.1 wd=0.1, zeroshot_top1 {best:.4f} "
        "at its last epoch, the best of 1 completed of 2 search trials, each at one seed; "
        "not confirmed over new seeds"
    )
    # an ASHA stop is no failure: FINISHED (a KILLED run shows a failed run's red cross)
    assert by_name["search #1 ls=0.25 wd=0.5"]["info"]["status"] == "FINISHED"

    # the damage: each trial's shards as the console said them, the sweep's count on the parent
    assert tags(by_name["search #0 baseline ls=0.1 wd=0.1"])["data_damage"] == f"{cut}\n{garbled}"
    assert tags(by_name["search #1 ls=0.25 wd=0.5"])["data_damage"] == other
    counted = rest(
        uri,
        "api/2.0/mlflow/metrics/get-history",
        run_id=parent_id,
        metric_key="data_damaged_shards",
    )["metrics"]
    assert sorted(m["value"] for m in counted) == [1, 2, 3]  # as each new shard was met
    latest = {m["key"]: m["value"] for m in by_name["sweep ui-view"]["data"]["metrics"]}
    assert latest["data_damaged_shards"] == 3

    # the saved view, as the UI reads it from the experiment's tags
    exp_tags = {t["key"]: t["value"] for t in exp["experiment"].get("tags", [])}
    envelope = json.loads(exp_tags["mlflow.sharedViewState.smotune-ui-view"])
    assert envelope["name"] == "smotune: ui-view" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`zeroshot_top1`", False)
    assert {
        "attributes.`Description`",
        "metrics.`zeroshot_top1`",
        "tags.`status`",
        "tags.`baseline`",
        "params.`loss.label_smoothing`",
        "params.`optim.weight_decay`",
    } <= set(state["selectedColumns"])
    assert state["runsHiddenMode"] == "SHOW_ALL"
    charts = {c["type"]: c for c in state["compareRunCharts"]}
    assert charts["PARALLEL"]["selectedParams"] == ["loss.label_smoothing", "optim.weight_decay"]
    assert charts["PARALLEL"]["selectedMetrics"] == ["zeroshot_top1"]
    assert charts["LINE"]["metricKey"] == charts["BAR"]["metricKey"] == "zeroshot_top1"

    # the line the sweep ends with: the URL of that view, served by the tracking server
    line = tracking.where_to_look(sweep)
    url = f"{uri}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert line.startswith(f"compare the trials: {url}&viewStateShareKey=smotune-ui-view\n")
    with urllib.request.urlopen(url.split("#")[0], timeout=30) as page:
        assert page.status == 200 and b'<div id="root"' in page.read()
