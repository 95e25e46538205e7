"""A tracking store that goes away mid-sweep: a real `mlflow server` killed (SIGKILL) under a real
`smotune sweep` on the local Ray. The sweep never waits for it, and no epoch is lost: what the
store could not take is written when it is back, or by `smotune sync`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow_server import MlflowServer

pytestmark = pytest.mark.ray

# the console's line for each epoch a trial reported (smotune/console.py)
EPOCH_LINE = re.compile(r"^\[search\] trial (\S+) epoch (\d+)/\d+\s+zeroshot_top1 (\d+\.\d+)")


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "mlflow-server"
    root.mkdir()
    srv = MlflowServer(root)
    srv.start()
    yield srv
    srv.kill()


def sweep_file(tmp_path: Path, synth_data: Path, name: str, samples: int, uri: str) -> Path:
    """A tiny sweep: ``samples`` trials of 2 epochs, no early stop (every printed epoch is
    reported: ASHA could stop a trial after its worker printed an epoch Tune never saw)."""
    data = {
        "name": name,
        "train": {
            "model": {"arch": "tiny-vit"},
            "data": {
                "train": str(synth_data / "train-{0000..0003}.tar"),
                "zeroshot": str(synth_data / "zeroshot"),
                "samples_per_epoch": 320,
                "loader_workers": 0,
            },
            "optim": {"lr": 1e-3, "warmup_steps": 2, "batch_size": 64},
            "epochs": 2,
            "workers": {"num": 1, "cpus": 1},  # what is tested is the store, not DDP
        },
        "space": {"loss.label_smoothing": {"uniform": [0.0, 0.3]}},
        "search": {"algo": "random", "samples": samples, "concurrent": 1, "seed": 0},
        "schedule": {"asha": None},
        "tracking": {"uri": uri, "experiment": name},
        "storage": {"path": str(tmp_path / "runs")},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_sweep(path: Path, tmp_path: Path, ray_cluster, **env: str):
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    out = (tmp_path / "sweep.out").open("w")
    err = (tmp_path / "sweep.err").open("w")
    cmd = [sys.executable, "-m", "smotune", "sweep", str(path)]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=err)


def children(uri: str, name: str) -> list:
    """The sweep's trial runs, oldest first (empty while the store is down or holds none)."""
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    except mlflow.exceptions.MlflowException:
        return []
    return [r for r in runs if r.data.tags.get("kind") == "trial"]


def wait_for_first_epoch(uri: str, name: str, proc, tmp_path: Path) -> None:
    deadline = time.monotonic() + 600
    while not any("epoch" in c.data.metrics for c in children(uri, name)):
        assert proc.poll() is None, (tmp_path / "sweep.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no epoch logged"
        time.sleep(1)


def finish(proc, tmp_path: Path, timeout: float) -> list[str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out = (tmp_path / "sweep.out").read_text()
    assert proc.returncode == 0, out[-3000:] + (tmp_path / "sweep.err").read_text()[-3000:]
    return out.splitlines()


def printed_epochs(lines: list[str]) -> dict[str, list[tuple[int, float]]]:
    """The epoch lines the sweep printed, by trial id, in the order printed."""
    trials: dict[str, list[tuple[int, float]]] = {}
    for line in lines:
        if m := EPOCH_LINE.search(line):
            trials.setdefault(m.group(1), []).append((int(m.group(2)), float(m.group(3))))
    return trials


def check_every_epoch(uri: str, name: str, lines: list[str], samples: int) -> None:
    """Every epoch a trial printed is in its run's history, once; no run is RUNNING."""
    printed = printed_epochs(lines)
    runs = children(uri, name)
    assert len(printed) == len(runs) == samples, (printed, len(runs))
    client = mlflow.MlflowClient(tracking_uri=uri)
    for run in runs:
        epochs = printed[run.data.tags["trial_id"]]
        history = client.get_metric_history(run.info.run_id, "zeroshot_top1")
        assert [(m.step, round(m.value, 4)) for m in history] == epochs, run.data.tags
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    exp = client.get_experiment_by_name(name)
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def tracking_line(lines: list[str]) -> tuple[int, str]:
    (found,) = [(i, ln) for i, ln in enumerate(lines) if ln.startswith("tracking:")]
    return found


def test_store_killed_and_back_mid_sweep(ray_cluster, synth_data, server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this test's own reads
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    samples = 2
    path = sweep_file(tmp_path, synth_data, "outage", samples, server.uri)
    started = time.monotonic()
    proc = start_sweep(path, tmp_path, ray_cluster)
    wait_for_first_epoch(server.uri, "outage", proc, tmp_path)
    server.kill()
    killed = time.monotonic()
    time.sleep(40)
    server.start()
    print(f"store down {time.monotonic() - killed:.0f} s")
    lines = finish(proc, tmp_path, timeout=900)
    print(f"sweep took {time.monotonic() - started:.0f} s")

    check_every_epoch(server.uri, "outage", lines, samples)
    at, line = tracking_line(lines)
    print(line)
    delayed = int(re.fullmatch(r"tracking: (\d+) writes delayed, all written", line).group(1))
    assert delayed > 0
    assert at >= len(lines) - 12  # among the sweep's last lines, before its summary
    assert any(ln.startswith("wrote best.yaml") for ln in lines[at:])


def test_store_never_back_then_sync(ray_cluster, synth_data, server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    samples = 1  # the store dies during the trial: its last epoch and its end wait for sync
    path = sweep_file(tmp_path, synth_data, "gone", samples, server.uri)
    proc = start_sweep(path, tmp_path, ray_cluster, SMOTUNE_TRACKING_DRAIN_S="5")
    wait_for_first_epoch(server.uri, "gone", proc, tmp_path)
    server.kill()
    lines = finish(proc, tmp_path, timeout=900)

    journal = tmp_path / "runs" / "gone" / "mlflow-journal.jsonl"
    at, line = tracking_line(lines)
    print(line)
    assert re.fullmatch(
        rf"tracking: \d+ writes not yet written \(store unreachable\): "
        rf"run `smotune sync {re.escape(str(journal))}`",
        line,
    )
    tail = "\n".join(lines[at:])
    assert tail.count("completed") == samples  # the summary, from the journal
    (no_best,) = [ln for ln in lines[at:] if ln.startswith("no best.yaml")]
    assert "not yet written" in no_best and f"smotune sync {journal}" in no_best

    server.start()
    sync = subprocess.run(
        [sys.executable, "-m", "smotune", "sync", str(journal)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert re.fullmatch(r"tracking: \d+ writes delayed, all written", sync.stdout.strip())
    check_every_epoch(server.uri, "gone", lines, samples)
