"""The plots are drawn off the writer's thread (issue 26 item 4): no MLflow write waits for a
drawing, a redraw uploads only the files that changed, and a drawing a killed process never
finished is drawn when the journal is opened again. Real MLflow stores, read back over the
client; no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_tracking import log_trials, make_sweep, runs_of, trial

from smotune import cli, plots, tracking
from smotune.tracking.journal import live
from smotune.tracking.writer import close_journal

PLOTS = ("learning_curves.png", "optuna.html")


def stored_plots(uri: str, experiment: str) -> dict[str, int]:
    """The parent's plots as the store holds them: file name -> its mtime (ns)."""
    _, (parent,), _ = runs_of(uri, experiment)
    root = Path(urlparse(parent.info.artifact_uri).path) / "plots"
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir()} if root.is_dir() else {}


@pytest.fixture
def held_drawing(monkeypatch):
    """plots.render waits (drawing = entered, release = go on) while the test holds it."""
    entered, release = threading.Event(), threading.Event()
    render = plots.render

    def held(data, out):
        entered.set()
        assert release.wait(120)
        return render(data, out)

    monkeypatch.setattr(plots, "render", held)
    return entered, release


def test_writes_go_on_while_the_plots_are_drawn(sqlite_uri, tmp_path, monkeypatch, held_drawing):
    monkeypatch.chdir(tmp_path)
    entered, release = held_drawing
    sweep, text = make_sweep(sqlite_uri)
    callback = tracking.MlflowSweepCallback(sweep, text)
    path = tracking.sweep_journal_path(sweep)
    try:
        log_trials(callback, [(trial("aaaa0001", 0.1), 0.1)], end=False)
        assert entered.wait(60)  # the drawer took the plots op of a's end and is drawing
        log_trials(callback, [(trial("bbbb0002", 0.0), 0.0)], end=False)
        assert callback.flush(30)  # b's writes did not wait for the drawing
        client, _, children = runs_of(sqlite_uri, sweep.experiment)
        (b,) = [c for c in children if c.data.tags["trial_id"] == "bbbb0002"]
        assert b.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(b.info.run_id, "zeroshot_top1")]
        assert steps == [1, 2, 3]
        assert stored_plots(sqlite_uri, sweep.experiment) == {}  # the drawing still waits
        release.set()
        assert live(path).drawn_all(120)
        first = stored_plots(sqlite_uri, sweep.experiment)
        assert set(PLOTS) <= set(first)

        # nothing new: a redraw uploads nothing
        time.sleep(0.05)
        live(path).append("plots", parent=live(path).state.parent_key)
        assert callback.flush(30) and live(path).drawn_all(120)
        assert stored_plots(sqlite_uri, sweep.experiment) == first
        # one more trial: the plots that show it are uploaded again
        log_trials(callback, [(trial("cccc0003", 0.05), 0.05)], end=False)
        assert callback.flush(30) and live(path).drawn_all(120)
        now = stored_plots(sqlite_uri, sweep.experiment)
        assert all(now[name] != first[name] for name in PLOTS)
        records = [json.loads(ln) for ln in path.read_text().splitlines()]
        drawn = [r["n"] for r in records if r["t"] == "drawn"]
        plots_ops = [r["n"] for r in records if r.get("op") == "plots"]
        assert drawn and max(drawn) == max(plots_ops)
    finally:
        release.set()
        close_journal(live(path))


KILLED_DRAWER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_tracking import log_trials, make_sweep, trial
from smotune import plots, tracking

def held(data, out):
    print("drawing", flush=True)
    time.sleep(600)

plots.render = held
sweep, text = make_sweep({uri!r})
callback = tracking.MlflowSweepCallback(sweep, text)
log_trials(callback, [(trial("aaaa0001", 0.1), 0.1)])
time.sleep(600)
"""


def test_a_drawing_a_killed_sweep_never_finished_is_drawn_by_sync(sqlite_uri, tmp_path, capsys):
    sweep, _ = make_sweep(sqlite_uri)
    script = KILLED_DRAWER.format(tests=str(Path(__file__).parent), uri=sqlite_uri)
    log = tmp_path / "drawer.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], cwd=tmp_path, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 120
            # every write done and the drawing held (its thread may say so after the writes)
            while not {"tracking:", "drawing"} <= set(log.read_text().split()):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait()
    assert "drawing" in log.read_text()
    assert "tracking: 0 writes delayed, all written" in log.read_text()
    assert stored_plots(sqlite_uri, sweep.experiment) == {}
    path = tmp_path / "runs" / sweep.name / tracking.JOURNAL_FILE
    assert cli.main(["sync", str(path)]) == 0
    assert set(PLOTS) <= set(stored_plots(sqlite_uri, sweep.experiment))
    records = [json.loads(ln) for ln in path.read_text().splitlines()]
    last_plots = max(r["n"] for r in records if r.get("op") == "plots")
    assert {"t": "drawn", "n": last_plots} in records
    assert os.path.getsize(path) > 0
