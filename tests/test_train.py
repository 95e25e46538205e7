"""One CLIP run on Ray Train: 2 DDP CPU workers learn; open_clip loads the checkpoint; a run is
its config (named after it, resumed only with it, its checkpoints carrying it)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from smotune import checkpoints, cli, engine, trial
from smotune import model as model_mod
from smotune.config import TrainConfig
from smotune.data import zeroshot
from smotune.errors import UserError
from smotune.evaluate import zero_shot

pytestmark = pytest.mark.ray


def _cfg(synth_data, epochs: int) -> TrainConfig:
    return TrainConfig(
        model={"arch": "tiny-vit", "text_dropout": 0.1},
        data={
            "train": str(synth_data / "train-{0000..0003}.tar"),
            "zeroshot": str(synth_data / "zeroshot"),
            "rewrite_prob": 0.3,
            "loader_workers": 1,
        },
        loss={"label_smoothing": 0.1},
        optim={"lr": 1e-3, "warmup_steps": 5, "batch_size": 64},
        epochs=epochs,
        workers={"num": 2, "cpus": 1},
        seed=0,
    )


def _initial_top1(cfg: TrainConfig) -> float:
    """Zero-shot top-1 of the epoch-0 weights (the engine seeds model init with cfg.seed)."""
    model = model_mod.create(cfg.model, seed=cfg.seed)
    evalset = zeroshot.load(cfg.data.zeroshot, transform=model_mod.transforms(model, train=False))
    tok = model_mod.tokenizer(cfg.model.arch)
    return zero_shot(model, tok, evalset, torch.device("cpu"))["zeroshot_top1"]


def _checkpoint_config(checkpoint: str) -> TrainConfig:
    return TrainConfig.model_validate(
        yaml.safe_load((Path(checkpoint) / checkpoints.CONFIG_FILE).read_text())
    )


def _checkpoints(storage: Path, name: str) -> list[str]:
    return sorted(p.name for p in (storage / name).glob("checkpoint_*") if p.is_dir())


def _small(synth_data, lr: float, smoothing: float, workers: int = 2) -> dict:
    """A train config small enough to run in seconds (as a dict, to write as YAML)."""
    return {
        "model": {"arch": "tiny-vit"},
        "data": {
            "train": str(synth_data / "train-{0000..0003}.tar"),
            "zeroshot": str(synth_data / "zeroshot"),
            "samples_per_epoch": 128,
            "loader_workers": 0,
        },
        "loss": {"label_smoothing": smoothing},
        "optim": {"lr": lr, "warmup_steps": 1, "batch_size": 64},
        "epochs": 1,
        "workers": {"num": workers, "cpus": 1},
        "eval": {"max_samples": 96},
    }


def test_default_run_name_is_config_stem_and_config_hash():
    cfg = TrainConfig(data={"train": "x.tar", "zeroshot": "zs"}, epochs=2)
    digest = hashlib.sha256(
        json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    assert trial.default_run_name(cfg, "configs/best.yaml") == f"best-{digest[:8]}"
    assert trial.default_run_name(cfg) == f"train-{digest[:8]}"
    longer = cfg.model_copy(update={"epochs": 3})
    assert trial.default_run_name(longer, "best.yaml") != trial.default_run_name(cfg, "best.yaml")
    # and `smotune train --help` says so
    train_parser = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    name_help = next(a.help for a in train_parser._actions if "--name" in a.option_strings)
    words = " ".join(name_help.split())  # the rule in words: the name, and what is hashed
    assert "the config file's name without .yaml, a dash, and the first 8 hex digits" in words
    assert "SHA-256" in words and "sorted keys" in words and "after --epochs/--workers" in words


def test_run_config_is_stored_with_pyarrow_and_compared(tmp_path):
    """The stored config round-trips through a URI (file:// here, s3:// alike); a run that
    Ray would resume but whose config was never stored is refused, not guessed."""
    cfg = TrainConfig(data={"train": "x.tar", "zeroshot": "zs"}, epochs=2)
    storage = f"file://{tmp_path}/runs"
    assert trial.check_run(cfg, storage, "r", "c.yaml") is False
    trial.record_run(cfg, storage, "r")
    stored = json.loads((tmp_path / "runs" / "r" / trial.RUN_CONFIG_FILE).read_text())
    assert stored == cfg.model_dump(mode="json")
    assert trial.check_run(cfg, storage, "r", "c.yaml") is True
    other = cfg.model_copy(update={"seed": 3})
    with pytest.raises(UserError, match=r"^c.yaml: seed: differs .* \(seed: 0 there, 3 here\)"):
        trial.check_run(other, storage, "r", "c.yaml")

    legacy = tmp_path / "runs" / "old"
    legacy.mkdir()
    (legacy / trial.RAY_SNAPSHOT_FILE).write_text("{}")
    with pytest.raises(UserError, match=f"--name: run old .* no {trial.RUN_CONFIG_FILE}"):
        trial.check_run(cfg, storage, "old", "c.yaml")


def test_a_run_is_its_config(ray_cluster, synth_data, tmp_path, capsys):
    storage = tmp_path / "runs"
    a_yaml, b_yaml = tmp_path / "a.yaml", tmp_path / "b.yaml"
    # one worker each: what is tested is a run's name, config and resume, not DDP
    a_yaml.write_text(yaml.safe_dump(_small(synth_data, lr=1e-3, smoothing=0.0, workers=1)))
    b_yaml.write_text(yaml.safe_dump(_small(synth_data, lr=3e-3, smoothing=0.2, workers=1)))
    a_cfg = TrainConfig.model_validate(yaml.safe_load(a_yaml.read_text()))
    b_cfg = TrainConfig.model_validate(yaml.safe_load(b_yaml.read_text()))
    a_name = trial.default_run_name(a_cfg, str(a_yaml))
    b_name = trial.default_run_name(b_cfg, str(b_yaml))
    assert a_name.startswith("a-") and b_name.startswith("b-")

    t0 = time.perf_counter()
    a = trial.run_train(a_cfg, storage=str(storage), config_file=str(a_yaml))
    t1 = time.perf_counter()
    assert a["run"] == a_name and a["epoch"] == 1 and a["step"] == 2
    a_files = sorted(p.name for p in (storage / a_name).rglob("*"))

    # B under A's name, as a user would type it: one line, exit 2, before any Ray work (the
    # RAY_ADDRESS points at a closed port: reaching ray.init would fail otherwise)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_ADDRESS"] = f"127.0.0.1:{closed}"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "smotune", "train", str(b_yaml), "--storage", str(storage)]
            + ["--name", a_name],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"not refused before Ray: still waiting for {env['RAY_ADDRESS']}"
        ) from err
    t2 = time.perf_counter()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"smotune: {b_yaml}: loss.label_smoothing, optim.lr: differ from")
    assert "(loss.label_smoothing: 0.0 there, 0.2 here)" in lines[0]
    assert f"omit --name to train this config as its own run {b_name}" in lines[0]

    # More epochs for A under A's name: refused too (the name hashes the config after
    # --epochs, and a run cannot be extended); one line, exit 2
    capsys.readouterr()
    rc = cli.main(
        ["train", str(a_yaml), "--storage", str(storage), "--name", a_name, "--epochs", "2"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"smotune: {a_yaml}: epochs: differs" in err and "cannot be extended" in err
    assert sorted(p.name for p in (storage / a_name).rglob("*")) == a_files  # A untouched

    # B on its own: a run of its own, with its own name, checkpoint and metrics
    t3 = time.perf_counter()
    b = trial.run_train(b_cfg, storage=str(storage), config_file=str(b_yaml))
    t4 = time.perf_counter()
    assert b["run"] == b_name and b["epoch"] == 1 and b["step"] == 2
    assert b["checkpoint"] != a["checkpoint"]
    assert Path(b["checkpoint"]).is_relative_to(storage / b_name)
    assert b["train_loss"] != a["train_loss"]
    # each run stores its config, and each checkpoint the config it was trained with
    for final, cfg in ((a, a_cfg), (b, b_cfg)):
        stored = json.loads((storage / final["run"] / trial.RUN_CONFIG_FILE).read_text())
        assert stored == cfg.model_dump(mode="json")
        assert _checkpoint_config(final["checkpoint"]) == cfg
        assert open_clip.create_model("tiny-vit", pretrained=f"{final['checkpoint']}/model.pt")

    # A again: the same run resumes; finished, it trains nothing and ends as before
    capsys.readouterr()
    again = trial.run_train(a_cfg, storage=str(storage), config_file=str(a_yaml))
    t5 = time.perf_counter()
    assert f"run {a_name} in {storage} (same config as stored: resuming)" in capsys.readouterr().out
    assert again == a
    assert _checkpoints(storage, a_name) == [Path(a["checkpoint"]).name]
    print(
        f"\nrun A {t1 - t0:.1f} s, B under A's name refused (subprocess) {t2 - t1:.1f} s, "
        f"run B {t4 - t3:.1f} s, A again (resumed) {t5 - t4:.1f} s"
    )


def test_a_resumed_run_reports_its_checkpoints_epoch_again(ray_cluster, synth_data, tmp_path):
    """A sweep's driver killed after Ray Train registered epoch k's checkpoint but before Tune
    received epoch k's result: the resumed trial continues from that checkpoint, so unless it
    reports epoch k again, that epoch never reaches MLflow, the study or ASHA's rungs. Built
    here as the same Train run twice: 1 epoch trained, then resumed to 2 epochs."""
    from ray.util.queue import Empty, Queue

    from smotune.console import ReportToQueue

    cfg = TrainConfig.model_validate(_small(synth_data, lr=1e-3, smoothing=0.1, workers=1))
    queue = Queue(actor_options={"num_cpus": 0})

    def reported(epochs: int) -> list[dict]:
        run = cfg.model_copy(update={"epochs": epochs})
        trial.fit(trial.build_trainer(run, str(tmp_path), "lost", [ReportToQueue(queue)]))
        said = []
        while True:
            try:
                said.append(queue.get_nowait())
            except Empty:
                return said

    first = reported(1)
    resumed = reported(2)
    queue.shutdown()
    assert [m["epoch"] for m in first] == [1]
    assert [m["epoch"] for m in resumed] == [1, 2]
    assert resumed[0] == first[0]  # the checkpoint's epoch, as it was reported
    assert resumed[1]["step"] == 2 * resumed[0]["step"]  # trained on from its step


def _final(out: str) -> dict[str, str]:
    """The ``final: k=v  k=v`` line ``smotune train`` prints, as a dict."""
    line = next(ln for ln in out.splitlines() if ln.startswith("final:"))
    return dict(item.split("=", 1) for item in line.removeprefix("final:").split())


def test_two_workers_learn_and_survive_a_killed_worker(ray_cluster, synth_data, tmp_path):
    """Two DDP CPU workers learn; one SIGKILLed mid-epoch, the group restarts from the last
    checkpoint, no epoch reported twice; the checkpoint is an open_clip state dict that gives
    the same accuracy and carries the config it was trained with."""
    from ray.util.state import list_actors

    cfg = _cfg(synth_data, epochs=3).model_copy(deep=True)
    cfg.data.samples_per_epoch = 1280  # 20 steps of 64 per worker: seconds, not milliseconds
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    address = ray_cluster.get_runtime_context().gcs_address
    log = tmp_path / "train.log"
    run = subprocess.Popen(
        [sys.executable, "-m", "smotune", "train", str(path), "--storage", str(tmp_path / "runs")],
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": address},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 600
    while not [p for p in tmp_path.glob("runs/*/checkpoint_*") if p.is_dir()]:  # epoch 1 saved
        assert run.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(2)  # Train registers the checkpoint it persisted; epoch 2 (20 steps) goes on
    workers = list_actors(
        address=address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        detail=True,
    )
    assert len(workers) == 2
    os.kill(workers[1].pid, 9)
    assert run.wait(timeout=400) == 0, log.read_text()[-3000:]
    out = log.read_text()
    epochs = [
        line.split("epoch ", 1)[1].split()[0]
        for line in out.splitlines()
        if "epoch " in line and "/3 " in line
    ]
    assert epochs == ["1/3", "2/3", "3/3"], out[-3000:]  # each epoch once: epoch 2 was not reported
    final = _final(out)
    steps = engine.steps_per_epoch(cfg, world_size=2)
    assert steps == 1280 // 64 and int(final["step"]) == 3 * steps, final
    assert final["epoch"] == "3" and final["restarts"] == "1", final
    assert final["data_skipped"] == "0" and int(final["zeroshot_samples"]) == 8 * 48, final

    top1, start, chance = float(final["zeroshot_top1"]), _initial_top1(cfg), 1 / 48
    print(f"zero-shot top-1: start {start:.4f}, after 3 epochs (one restart) {top1:.4f}")
    assert top1 > max(start, chance) + 0.03, (start, final)

    # The checkpoint is an open_clip state dict that gives the same accuracy.
    checkpoint = final["checkpoint"]
    loaded = open_clip.create_model("tiny-vit", pretrained=f"{checkpoint}/model.pt")
    state = torch.load(f"{checkpoint}/{checkpoints.STATE_FILE}", weights_only=True)
    assert state["epoch"] == 3 and state["step"] == 3 * steps
    evalset = zeroshot.load(
        str(synth_data / "zeroshot"), transform=model_mod.transforms(loaded, train=False)
    )
    again = zero_shot(loaded, model_mod.tokenizer("tiny-vit"), evalset, torch.device("cpu"))
    assert again["zeroshot_top1"] == pytest.approx(top1, abs=5e-5)  # final prints 4 digits
    # ... and carries the train config it was trained with.
    assert _checkpoint_config(checkpoint) == cfg


def test_a_diverging_run_fails_and_says_why(ray_cluster, synth_data, tmp_path):
    """A non-finite loss stops the run (never trained on, never reported as a result),
    and the failure names the workers' own error, not Train's wrapper."""
    cfg = TrainConfig.model_validate(_small(synth_data, lr=1e4, smoothing=0.0))
    cfg.optim.warmup_steps = 0
    cfg.data.samples_per_epoch = 5 * cfg.optim.batch_size
    cfg.workers.max_failures = 0
    with pytest.raises(trial.WorkerError) as failed:
        trial.run_train(cfg, storage=str(tmp_path / "runs"), name="diverge")
    reason = str(failed.value)
    # both ranks diverge at the same step (DDP keeps their weights equal); Train names the ranks
    # whose errors it had when it stopped the group: both, or the first to raise (seen once in
    # a fresh clone: "rank 0: ..."). Grouping ranks with one error: test_trial
    assert re.fullmatch(
        r"rank (0|1|0,1): FloatingPointError: loss is (nan|inf) at epoch 1, step \d+", reason
    ), reason
    assert not _checkpoints(tmp_path / "runs", "diverge")


def test_damaged_shards_are_named_on_the_console(ray_cluster, tmp_path):
    """`smotune train` on shards with one truncated and one garbled tar, one on each of its two
    ranks, says in its own output which shards and why, one line a shard (the workers' log is
    not shown without --verbose), and counts them in its final line."""
    import random

    from smotune.data import synth

    data = tmp_path / "data"
    synth.generate(data, train_samples=512, shards=4, eval_per_class=1, seed=0)
    cut, garbled = data / "train-0000.tar", data / "train-0001.tar"  # rank 0's, rank 1's
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2 + 700)  # inside a member
    with open(garbled, "r+b") as f:
        f.seek(garbled.stat().st_size // 2)
        f.write(random.Random(1).randbytes(65536))
    cfg = {
        "model": {"arch": "tiny-vit"},
        "data": {
            "train": str(data / "train-{0000..0003}.tar"),
            "zeroshot": str(data / "zeroshot"),
            "loader_workers": 0,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1, "batch_size": 32},
        "epochs": 1,
        "workers": {"num": 2, "cpus": 1},
        "eval": {"max_samples": 48},
    }
    path = tmp_path / "damaged.yaml"
    path.write_text(yaml.safe_dump(cfg))
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "smotune", "train", str(path), "--storage", str(tmp_path / "runs")],
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    damaged = [ln for ln in out.splitlines() if ln.startswith("damaged shard ")]
    size = cut.stat().st_size
    assert len(damaged) == 2, out[-3000:]
    assert damaged[0].startswith(
        f"damaged shard {cut}: ends at byte {size} of {size}: truncated inside "
    ), damaged
    assert re.match(
        rf"damaged shard {garbled}: bytes \d+-\d+ of \d+ unreadable: invalid tar header", damaged[1]
    ), damaged
    assert all("samples sizes.json lists lost" in ln for ln in damaged), damaged
    final = _final(out)
    assert final["data_damaged_shards"] == "2" and int(final["data_skipped"]) > 0, final
    assert "data_damage=" not in out
