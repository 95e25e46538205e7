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


def trial_runs(uri: str, name: str) -> dict[str, object]:
    """The sweep's trial runs by trial id, as MLflow holds them now."""
    return {r.data.tags["trial_id"]: r for r in children(uri, name)}


def wait_for(what: str, ready, proc, tmp_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, (tmp_path / "sweep.err").read_text()[-3000:]
        assert time.monotonic() < deadline, what
        time.sleep(1)


def test_store_killed_back_then_killed_for_good_then_sync(
    ray_cluster, synth_data, server, tmp_path, monkeypatch
):
    """One sweep of 2 trials, one after the other. The store is killed during trial 1 and comes
    back mid-sweep: what waited is written by the sweep itself, each epoch once. It is killed
    again during trial 2 and is still down when the sweep ends: the sweep's last lines say so
    and name `smotune sync <journal>`, no best.yaml; `smotune sync` then writes the rest."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this test's own reads
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    samples, name = 2, "outage"
    path = sweep_file(tmp_path, synth_data, name, samples, server.uri)
    out = tmp_path / "sweep.out"
    started = time.monotonic()
    proc = start_sweep(path, tmp_path, ray_cluster, SMOTUNE_TRACKING_DRAIN_S="5")

    # 1. killed during trial 1, once its first epoch is in MLflow; back once the sweep has
    # printed trial 1's last epoch (that epoch and trial 1's end waited for the store)
    wait_for_first_epoch(server.uri, name, proc, tmp_path)
    (first,) = trial_runs(server.uri, name)
    server.kill()
    killed = time.monotonic()

    def trial_1_done_printed() -> bool:
        epochs = printed_epochs(out.read_text().splitlines()).get(first, [])
        return 2 in [e for e, _ in epochs]

    wait_for("trial 1's last epoch printed", trial_1_done_printed, proc, tmp_path)
    server.start()
    print(f"store down {time.monotonic() - killed:.0f} s")

    # 2. the sweep wrote what waited, by itself: trial 1 ended in MLflow, then trial 2 began
    # there; killed again (for good) once trial 2's first epoch is in MLflow
    def trial_2_first_epoch() -> bool:
        runs = trial_runs(server.uri, name)
        return len(runs) == 2 and all("epoch" in r.data.metrics for r in runs.values())

    wait_for("trial 2's first epoch in MLflow", trial_2_first_epoch, proc, tmp_path)
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    run_1 = trial_runs(server.uri, name)[first]
    history_1 = client.get_metric_history(run_1.info.run_id, "zeroshot_top1")
    written_back = [(m.step, round(m.value, 4)) for m in history_1]
    server.kill()
    lines = finish(proc, tmp_path, timeout=900)
    print(f"sweep took {time.monotonic() - started:.0f} s")

    printed = printed_epochs(lines)
    assert written_back == printed[first]  # every epoch of trial 1, once, before the second kill
    assert [e for e, _ in printed[first]] == [1, 2]
    assert run_1.info.status == "FINISHED" and run_1.data.tags["status"] == "completed"
    # the sweep's writer said so: its writes failed, then the store was back, then failed again
    said = [
        ln for ln in (tmp_path / "sweep.err").read_text().splitlines() if ln.startswith("MLflow")
    ]
    assert "write failed" in said[0] and "write failed" in said[-1], said
    assert any("is back; writing what waited" in ln for ln in said[1:-1]), said

    # 3. the sweep's last lines: the store is unreachable, `smotune sync <journal>`, no best.yaml
    journal = tmp_path / "runs" / name / "mlflow-journal.jsonl"
    at, line = tracking_line(lines)
    print(line)
    assert re.fullmatch(
        rf"tracking: \d+ writes not yet written \(store unreachable\): "
        rf"run `smotune sync {re.escape(str(journal))}`",
        line,
    )
    assert at >= len(lines) - 12  # among the sweep's last lines, before its summary
    tail = "\n".join(lines[at:])
    assert tail.count("completed") == samples  # the summary, from the journal
    (no_best,) = [ln for ln in lines[at:] if ln.startswith("no best.yaml")]
    assert "not yet written" in no_best and f"smotune sync {journal}" in no_best
    assert not any(ln.startswith("wrote best.yaml") for ln in lines)

    # 4. the store back for good: `smotune sync` writes the rest; every epoch is in MLflow, once
    server.start()
    sync = subprocess.run(
        [sys.executable, "-m", "smotune", "sync", str(journal)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    synced = re.fullmatch(r"tracking: (\d+) writes delayed, all written", sync.stdout.strip())
    assert synced and int(synced.group(1)) > 0
    check_every_epoch(server.uri, name, lines, samples)

    # 5. with every write written, best.yaml follows from the store
    best = subprocess.run(
        [
            sys.executable,
            "-m",
            "smotune",
            "best",
            "--experiment",
            name,
            "--tracking-uri",
            server.uri,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert best.returncode == 0, best.stdout + best.stderr
    assert best.stdout.startswith("wrote best.yaml"), best.stdout
