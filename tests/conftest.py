"""Shared fixtures: one local Ray cluster for the whole session, synthetic data made once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray (2 CPUs, a `trial_driver` resource for trial drivers) for all tests."""
    import ray

    from smotune.trial import start_local_ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        start_local_ray(
            num_cpus=2,
            resources={"trial_driver": 2},
            include_dashboard=True,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic data set (train shards + zero-shot set), generated once per session."""
    from smotune.data import synth

    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, train_samples=3072, shards=4, eval_per_class=8, seed=0)
    return out


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite database, made once: MLflow's migrations of a new one take seconds."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def sqlite_uri(migrated_db, tmp_path) -> str:
    """A fresh MLflow sqlite store in ``tmp_path`` (a copy of the migrated empty one)."""
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"
