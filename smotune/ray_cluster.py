"""The Ray cluster smotune runs on: joining or starting it, what it must hold, its cleanup.

``connect`` joins the cluster at RAY_ADDRESS or starts a local one
(``start_local_ray``) declaring ``trial_driver`` slots, the custom resource
each trial's driver asks for instead of a CPU (see ``trial.TRIAL_RESOURCES``);
``check_fits`` refuses a run whose workers the cluster can never hold;
``ReleaseOrphanedWorkers`` is the Tune callback that frees the worker groups a
stopped trial left behind. Nothing here knows of Tune trials, MLflow or the engine.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from ray.tune import Callback

from smotune.config import TrainConfig
from smotune.errors import UserError

TRIAL_DRIVER = "trial_driver"  # the custom resource a trial's driver asks for (no CPU)

log = logging.getLogger(__name__)


def start_local_ray(**init_kwargs: Any) -> None:
    """``ray.init`` a new local cluster whose own processes know its address.

    Ray Train's placement-group cleaner (a detached actor) looks the cluster
    up without an address; with another Ray running on the same machine it
    fails ("Found multiple active Ray instances") and leaves a stopped
    trial's worker group holding its CPUs. Fixing the GCS port and handing
    ``RAY_ADDRESS`` to every worker of this job avoids that.
    """
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Local trials are short: Train's controller polls its workers every 0.5 s, not 2 s, so a
    # finished trial is seen ~2.5 s sooner (measured: empty TorchTrainer trials under Tune,
    # start of the loop to the end of Tuner.fit 4.5 s -> 1.9 s). Its processes inherit this.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(
            address="local",
            runtime_env={"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}},
            **init_kwargs,
        )
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)


def connect(trial_drivers: int = 1) -> dict[str, float]:
    """Join the Ray cluster at RAY_ADDRESS, or start a local one with ``trial_driver`` slots.

    Returns the cluster's resources. A cluster without the ``trial_driver``
    resource is a user error that names the ``ray start`` flag adding it.
    """
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=True)
        else:
            start_local_ray(resources={TRIAL_DRIVER: trial_drivers}, log_to_driver=True)
    resources = ray.cluster_resources()
    if resources.get(TRIAL_DRIVER, 0) < 1:
        raise UserError(
            "ray cluster",
            TRIAL_DRIVER,
            "the cluster declares no trial_driver resource for trial drivers",
            f'start the head with ray start --head --resources \'{{"{TRIAL_DRIVER}": '
            f"{trial_drivers}}}' (see cluster/README.md)",
        )
    return resources


def check_fits(cfg: TrainConfig, resources: dict[str, float]) -> None:
    """The workers of one run must fit the cluster, or Ray would wait forever."""
    need_cpu = cfg.workers.num * cfg.workers.cpus
    need_gpu = cfg.workers.num * cfg.workers.gpus
    if need_cpu > resources.get("CPU", 0) or need_gpu > resources.get("GPU", 0):
        raise UserError(
            "config",
            "workers",
            f"{cfg.workers.num} workers x ({cfg.workers.cpus} CPU, {cfg.workers.gpus} GPU) do not "
            f"fit the cluster ({resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU)",
            "lower workers.num, workers.cpus or workers.gpus, or add nodes",
        )


class ReleaseOrphanedWorkers(Callback):
    """Free the worker placement groups that a stopped trial's Train run left behind.

    When ASHA stops a trial, Tune kills its driver and with it the Train
    controller; Ray Train's own cleaner then removes the workers' placement
    group, but not always (seen here: a stopped trial's 2-CPU group stayed
    CREATED with no actor in it, and the next trial's workers waited for
    CPUs forever). This driver-side callback removes such groups: created
    by this job, asking no ``trial_driver``, holding no live or starting
    actor, seen so on two checks at least ``grace_s`` apart.
    """

    def __init__(self, grace_s: float = 10.0):
        self.grace_s = grace_s
        self._suspects: dict[str, float] = {}
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"grace_s": self.grace_s, "_suspects": {}, "_last": 0.0}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last >= self.grace_s:
            self.release()

    def release(self) -> list[str]:
        """One check; returns the ids of the groups removed now."""
        import ray
        from ray.util.placement_group import PlacementGroup, remove_placement_group
        from ray.util.state import list_actors, list_placement_groups

        self._last = now = time.monotonic()
        context = ray.get_runtime_context()
        job, address = context.get_job_id(), context.gcs_address
        try:
            groups = list_placement_groups(
                address=address,
                filters=[("state", "=", "CREATED")],
                detail=True,
                raise_on_missing_output=False,
            )
            actors = list_actors(
                address=address,
                filters=[("state", "!=", "DEAD")],
                detail=True,
                raise_on_missing_output=False,
            )
        except Exception as err:  # the State API needs the dashboard; without it, do nothing
            log.debug("cannot list placement groups: %s", err)
            return []
        in_use = {a.placement_group_id for a in actors if a.placement_group_id}
        suspects = {
            g.placement_group_id
            for g in groups
            if g.creator_job_id == job
            and g.placement_group_id not in in_use
            and not any(TRIAL_DRIVER in b.get("unit_resources", {}) for b in g.bundles)
        }
        removed = []
        for pg_id in suspects:
            first_seen = self._suspects.setdefault(pg_id, now)
            if now - first_seen >= self.grace_s:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
                log.warning("freed placement group %s left behind by a stopped trial", pg_id)
                removed.append(pg_id)
        self._suspects = {k: v for k, v in self._suspects.items() if k in suspects}
        for pg_id in removed:
            self._suspects.pop(pg_id, None)
        return removed
