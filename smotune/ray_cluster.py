"""The Ray cluster smotune runs on: joining or starting it, what it must hold.

``connect`` joins the cluster at RAY_ADDRESS or starts a local one
(``start_local_ray``) declaring ``trial_driver`` slots, the custom resource
each trial's driver asks for instead of a CPU (see ``trial.TRIAL_RESOURCES``);
``check_fits`` refuses a run whose workers the cluster can never hold;
``release`` removes the placement groups no one else will (a stopped sweep's,
and any a finished job left behind).
Nothing here knows of Tune trials, MLflow or the engine.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from smotune.config import TrainConfig
from smotune.errors import UserError

TRIAL_DRIVER = "trial_driver"  # the custom resource a trial's driver asks for (no CPU)


def start_local_ray(**init_kwargs: Any) -> None:
    """``ray.init`` a new local cluster whose own processes know its address.

    Ray Train's placement-group cleaner (a detached actor) looks the cluster
    up without an address; with another Ray running on the same machine it
    fails ("Found multiple active Ray instances") and leaves a trial's worker
    group holding its CPUs. Fixing the GCS port and handing ``RAY_ADDRESS`` to
    every worker of this job avoids that. Measured (Ray 2.60, a second Ray
    instance up, 4 trials of 2-worker TorchTrainers, ASHA stopping 3 after
    epoch 1): without ``RAY_ADDRESS`` 1 worker group (2 CPUs) and 2 cleaner
    actors outlived their trials and only 2 trials started in 6 min; with it
    all 4 ran in 110 s and nothing was left, so Tune needs no callback freeing
    orphaned groups (smotune had one, ``ReleaseOrphanedWorkers``: it freed none).
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


def connect(trial_drivers: int = 1, verbose: bool = False) -> dict[str, float]:
    """Join the Ray cluster at RAY_ADDRESS, or start a local one with ``trial_driver`` slots.

    Returns the cluster's resources. A cluster without the ``trial_driver``
    resource is a user error that names the ``ray start`` flag adding it. The Ray
    workers' output reaches this terminal only when ``verbose`` (else it stays in
    the session's logs, :func:`worker_logs`).
    """
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=verbose)
        else:
            start_local_ray(resources={TRIAL_DRIVER: trial_drivers}, log_to_driver=verbose)
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


def worker_logs() -> str:
    """The folder of this node's Ray session logs (the workers' stdout and stderr)."""
    import ray

    context = ray.get_runtime_context()
    return os.path.join(context.get_temp_dir(), context.get_session_name(), "logs")


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


RELEASE_WAIT_S = 10.0  # how long ``release`` waits for this job's actors to die


def _placement_groups() -> list[Any]:
    """The GCS's placement-group table rows (Ray 2.60's ``PlacementGroupTableData``: id,
    state, creator job and actor, detached, bundles): the public table leaves the creator out."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    return [
        gcs_pb2.PlacementGroupTableData.FromString(r) for r in accessor.get_placement_group_table()
    ]


def left_behind(own_job: str | None = None) -> list[Any]:
    """The placement groups that nothing will remove: not removed, not detached, and either
    created by ``own_job`` (this driver's job, hex, at its end: it needs none any more) or
    created for a job that has finished by an actor that is dead. Ray removes a group when
    its job and its creating actor have both ended (``IsPlacementGroupLifetimeDone`` in the
    GCS), but only if the group existed when the job ended: a group Ray Train's controller
    asked for in the last instant of a stopped job (a Ctrl-C while a trial's worker group
    starts) stays, holding its CPUs and GPUs, until someone removes it."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    removed = gcs_pb2.PlacementGroupTableData.REMOVED
    dead_jobs = {j["JobID"] for j in state.job_table() if j["IsDead"]}
    live_actors = {a for a, row in state.actor_table(None).items() if row["State"] != "DEAD"}
    out = []
    for pg in _placement_groups():
        if pg.state == removed or pg.is_detached:
            continue
        job, actor = pg.creator_job_id.hex(), pg.creator_actor_id.hex()
        if job == own_job or (job in dead_jobs and actor not in live_actors):
            out.append(pg)
    return out


def _own_actors_alive(job: str) -> int:
    from ray._private.state import state

    return sum(
        1
        for row in state.actor_table(None).values()
        if row["JobID"] == job and row["State"] != "DEAD" and not row["IsDetached"]
    )


def release(at_exit: bool = False) -> str | None:
    """Remove the placement groups :func:`left_behind` names; the line saying so, if any.

    ``at_exit`` (a sweep's end, normal or stopped): this driver's own job's groups too,
    after its actors have died (at most :data:`RELEASE_WAIT_S`), so no trial's controller
    can ask for one after the last look. Removing a group ends the actors placed in it.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    own = ray.get_runtime_context().get_job_id() if at_exit else None
    deadline = time.monotonic() + RELEASE_WAIT_S  # for its actors to die, at exit
    found: dict[bytes, Any] = {}

    def remove_new() -> None:
        for pg in left_behind(own):
            if pg.placement_group_id not in found:
                found[pg.placement_group_id] = pg
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))

    remove_new()
    if own is not None:  # until its actors are gone, then one more look: a group asked for
        while _own_actors_alive(own) and time.monotonic() <= deadline:  # as the last one died
            time.sleep(0.5)
            remove_new()
        remove_new()
    if not found:
        return None
    held: dict[str, float] = {}
    for pg in found.values():
        for bundle in pg.bundles:
            for name, amount in bundle.unit_resources.items():
                held[name] = held.get(name, 0.0) + amount
    what = ", ".join(f"{v:g} {k}" for k, v in sorted(held.items()) if k in ("CPU", "GPU"))
    ids = ", ".join(pg.placement_group_id.hex()[:8] for pg in found.values())
    return (
        f"ray: removed {len(found)} placement group{'s' if len(found) != 1 else ''} left behind "
        f"by stopped runs ({what or 'no CPU or GPU'}; {ids})"
    )
