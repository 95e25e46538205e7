"""The cluster plumbing: fitting the cluster, what a local cluster's processes are handed."""

from __future__ import annotations

import pytest
import ray

from smotune.config import TrainConfig
from smotune.errors import UserError
from smotune.ray_cluster import check_fits


def test_workers_must_fit_the_cluster():
    cfg = TrainConfig(data={"train": "x.tar", "zeroshot": "zs"}, workers={"num": 3, "cpus": 1})
    with pytest.raises(UserError, match="workers"):
        check_fits(cfg, {"CPU": 2.0, "trial_driver": 1.0})
    check_fits(
        cfg.model_copy(update={"workers": cfg.workers.model_copy(update={"num": 2})}), {"CPU": 2.0}
    )


def test_a_local_clusters_train_controllers_poll_every_half_second(ray_cluster):
    """start_local_ray hands its processes Train's 0.5 s health-check poll (a short trial's
    end is seen ~2.5 s sooner): every worker process of the cluster, Train's controllers too."""

    @ray.remote(num_cpus=0)
    def seen() -> str | None:
        import os

        return os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")

    assert ray.get(seen.remote()) == "0.5"


def test_a_local_clusters_processes_know_its_address(ray_cluster):
    """Train's placement-group cleaner finds the cluster by RAY_ADDRESS: without it, another Ray
    on the machine left a stopped trial's worker group holding its CPUs (start_local_ray)."""

    @ray.remote(num_cpus=0)
    def address() -> str | None:
        import os

        return os.environ.get("RAY_ADDRESS")

    port = ray_cluster.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    assert ray.get(address.remote()) == f"127.0.0.1:{port}"
