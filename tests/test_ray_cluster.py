"""The cluster plumbing: fitting the cluster, freeing orphaned worker groups."""

from __future__ import annotations

import time

import pytest
import ray
from ray.tune import Callback
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from smotune.config import TrainConfig
from smotune.errors import UserError
from smotune.ray_cluster import ReleaseOrphanedWorkers, check_fits


@ray.remote(num_cpus=1)
class _Worker:
    def ping(self) -> str:
        return "pong"


def _state(pg) -> str:
    return ray.util.placement_group_table(pg)["state"]


@pytest.mark.ray
def test_orphaned_worker_groups_are_freed_and_used_ones_kept(ray_cluster):
    orphan = placement_group([{"CPU": 1}])
    used = placement_group([{"CPU": 1}])
    driver = placement_group([{"trial_driver": 1}])
    ray.get([orphan.ready(), used.ready(), driver.ready()])
    worker = _Worker.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=used)
    ).remote()
    assert ray.get(worker.ping.remote()) == "pong"

    release = ReleaseOrphanedWorkers(grace_s=1.0)
    assert type(release).on_step_end is not Callback.on_step_end  # Tune calls it every step
    assert release.release() == []  # first sighting: only suspected
    time.sleep(1.2)
    assert release.release() == [orphan.id.hex()]
    assert _state(orphan) == "REMOVED"
    assert _state(used) == "CREATED" and _state(driver) == "CREATED"

    ray.kill(worker)
    remove_placement_group(used)
    remove_placement_group(driver)


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
