"""Trials: storage paths, a sweep's storage on a cluster, failure reasons."""

from __future__ import annotations

import pickle

import pytest

from smotune import runtime, trial
from smotune.errors import UserError

pytestmark = pytest.mark.ray


def test_storage_uri():
    assert trial.storage_uri("s3://bucket/runs") == "s3://bucket/runs"
    assert trial.storage_uri("runs").startswith("/")


def test_relative_storage_on_a_cluster_is_refused(tmp_path, monkeypatch):
    from smotune import sweep
    from smotune.config import SweepConfig

    cfg = SweepConfig.model_validate(
        {
            "name": "s",
            "train": {"data": {"train": "s3://b/x-{0..3}.tar", "zeroshot": "s3://b/zs"}},
            "space": {"loss.label_smoothing": {"uniform": [0.0, 0.2]}},
            "storage": {"path": "runs"},
        }
    )
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(UserError, match="storage.path"):
        sweep.run_sweep(cfg, tmp_path / "s.yaml")


def test_failure_reason_names_each_ranks_own_error():
    """The reason is the workers' errors, not Train's "Training failed due to worker errors:"."""
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    nan = FloatingPointError("loss is nan at epoch 2, step 13\nmore detail")
    died = ActorDiedError()
    err = WorkerGroupError(
        "rank 0 ... rank 1 ... rank 2 ...",
        {
            2: FloatingPointError("loss is nan at epoch 2, step 13"),
            0: nan,
            1: WorkerHealthCheckFailedError("Worker health check failed.", died),
        },
    )
    assert str(err).splitlines()[0] == "Training failed due to worker errors:"
    assert trial.failure_reason(err) == (
        "rank 0,2: FloatingPointError: loss is nan at epoch 2, step 13; "
        "rank 1: worker died: ActorDiedError: "
        "The actor died unexpectedly before finishing this task."
    )


def test_failure_reason_reads_the_exit_detail_of_a_dead_worker():
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    gcs = RuntimeError(
        "The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker\n"
        "The actor is dead because its worker process has died. Worker exit type: "
        "UNEXPECTED_SYSTEM_EXIT Worker exit detail: Worker unexpectedly exits with a connection "
        "error code 2. End of file. There are some potential root causes."
    )
    dead = WorkerHealthCheckFailedError("Worker health check failed.", gcs)
    err = WorkerGroupError("x", {1: dead})
    assert trial.failure_reason(err) == (
        "rank 1: worker died: Worker unexpectedly exits with a connection error code 2"
    )
    assert trial.failure_reason(ValueError("no workers\nat all")) == "ValueError: no workers"


@pytest.mark.parametrize("gpus", [0, 1])
def test_torch_trainer_picks_the_backend_the_engine_runs_on(gpus):
    """build_trainer leaves the process-group backend to TorchTrainer: gloo on CPU, nccl on GPU."""
    from smotune.config import TrainConfig

    cfg = TrainConfig(data={"train": "x.tar", "zeroshot": "zs"}, workers={"gpus": gpus})
    trainer = trial.build_trainer(cfg, "runs", "backend")
    expected = runtime.choose_runtime(gpus, cfg.precision, cuda_available=True).backend
    assert trainer.backend_config.backend == expected == ("nccl" if gpus else "gloo")


def test_fp16_on_cpu_workers_is_refused_before_any_worker_starts():
    from smotune.config import TrainConfig

    cfg = TrainConfig(data={"train": "x.tar", "zeroshot": "zs"}, precision="fp16")
    with pytest.raises(UserError, match="fp16 needs GPUs"):
        trial.build_trainer(cfg, "runs", "fp16")


def test_a_trial_trains_the_config_mlflow_logs_with_absolute_paths(tmp_path):
    """One composition (train:, fixed values, sample) for the run and for MLflow's train.yaml."""
    from smotune import space
    from smotune.config import SweepConfig, absolute_paths

    sweep = SweepConfig.model_validate(
        {
            "name": "s",
            "train": {"data": {"train": "shards/x-{0..3}.tar", "zeroshot": "zs"}},
            "space": {
                "loss.label_smoothing": {"uniform": [0.0, 0.2]},
                "optim.lr": {"fixed": 0.004},
            },
        }
    )
    sample = {"loss.label_smoothing": 0.15}
    logged = space.trial_config(sweep, sample)
    sent = pickle.loads(pickle.dumps(sweep))  # as tune.with_parameters hands it to the trial
    trained = trial.trial_run_config(sent, sample, str(tmp_path))
    assert (logged.loss.label_smoothing, logged.optim.lr) == (0.15, 0.004)
    assert logged.data.zeroshot == "zs"
    assert trained == absolute_paths(logged, tmp_path)
    assert trained.data.zeroshot == str(tmp_path / "zs")


def test_the_trial_driver_never_imports_open_clip(tmp_path):
    """Building a run's TorchTrainer loads neither the engine nor open_clip (seconds a trial):
    the workers import them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from smotune import trial\n"
        "from smotune.config import TrainConfig\n"
        "cfg = TrainConfig(data={'train': 'x.tar', 'zeroshot': 'zs'})\n"
        f"trial.build_trainer(cfg, {str(tmp_path)!r}, 'run')\n"
        "print(sorted(m for m in ('open_clip', 'smotune.engine') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
