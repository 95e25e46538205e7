"""One Tune trial (or one plain run): a TorchTrainer over ``engine.train_worker``.

A trial is a plain function, as Ray Train V2 wants it: it turns its sampled
values into a full train config, builds a ``TorchTrainer`` whose
``TuneReportCallback`` forwards rank 0's per-epoch metrics to Tune (so ASHA
sees them while the run goes on), and calls ``fit()``. The trial function
itself asks for no CPU, only one unit of the custom ``trial_driver``
resource; the Train workers alone ask for CPUs and GPUs (see FIELD-NOTES:
this is what keeps a 2-core machine from deadlocking). ``smotune train``
runs the very same trainer without Tune. This module knows nothing of MLflow.

A run is its config. Ray Train loads whatever snapshot a run name has in
storage, whatever the config, so ``run_train`` names a run after its config
(``<config file stem>-<first 8 hex digits of the sha256 of the config's JSON>``),
keeps that config beside the run (``<storage>/<name>/smotune-train.json``) and
resumes a run only when the config given equals the stored one.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from smotune import runtime
from smotune.config import DAMAGE_KEY, SweepConfig, TrainConfig, absolute_paths, flatten
from smotune.errors import UserError
from smotune.ray_cluster import TRIAL_DRIVER, check_fits, connect
from smotune.space import trial_config

TRIAL_RESOURCES = {"cpu": 0, TRIAL_DRIVER: 1}
RUN_CONFIG_FILE = "smotune-train.json"  # beside Ray Train's files in <storage>/<name>/
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # what makes Ray Train resume a run


def storage_uri(path: str) -> str:
    """A storage path Ray accepts: URIs as they are, local paths made absolute."""
    return path if "://" in path else str(Path(path).resolve())


def train_loop(config: dict[str, Any]) -> None:
    """Each Train worker's function: ``engine.train_worker``, imported in the worker only
    (the trial driver needs none of torch's models, open_clip or the data pipeline)."""
    from smotune import engine

    engine.train_worker(config)


def build_trainer(
    cfg: TrainConfig,
    storage: str,
    name: str,
    callbacks: list[Any] | None = None,
):
    """The ``TorchTrainer`` of one run; its checkpoints live at ``storage/name``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    on_gpu = cfg.workers.gpus > 0
    # fp16 on CPU workers is refused here, before any worker starts (each worker checks
    # CUDA itself); the process-group backend is TorchTrainer's own choice (nccl on GPUs)
    runtime.choose_runtime(cfg.workers.gpus, cfg.precision, cuda_available=on_gpu)
    resources = {"CPU": cfg.workers.cpus}
    if on_gpu:
        resources["GPU"] = cfg.workers.gpus
    return TorchTrainer(
        train_loop,
        train_loop_config={"train": cfg.model_dump(mode="json")},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers.num, use_gpu=on_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_uri(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=cfg.workers.max_failures),
            callbacks=callbacks or [],
        ),
    )


def config_json(cfg: TrainConfig) -> str:
    """The canonical JSON of a train config: ``json.dumps(model_dump(mode="json"), sort_keys)``."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def default_run_name(cfg: TrainConfig, config_file: str | None = None) -> str:
    """``<config file stem>-<first 8 hex digits of sha256(config_json(cfg))>``; stem ``train``
    without a file. Different configs get different runs, the same config the same run."""
    stem = Path(config_file).stem if config_file else "train"
    return f"{stem}-{hashlib.sha256(config_json(cfg).encode()).hexdigest()[:8]}"


def _run_dir(storage: str, name: str):
    """The filesystem (pyarrow, so s3:// and other URIs work) and path of a run's directory."""
    import pyarrow.fs

    uri = storage_uri(storage)
    try:
        fs, base = pyarrow.fs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as err:
        raise UserError(
            "--storage",
            "",
            f"cannot open {uri}: {str(err).splitlines()[0]}",
            "give a local path or a URI that pyarrow opens (file://, s3://, gs://)",
        ) from None
    return fs, f"{base.rstrip('/')}/{name}"


def _differences(given: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """The dotted paths whose values differ, in config order."""
    flat_given, flat_stored = flatten(given), flatten(stored)
    paths = list(flat_given) + [k for k in flat_stored if k not in flat_given]
    missing = object()
    return [k for k in paths if flat_given.get(k, missing) != flat_stored.get(k, missing)]


def check_run(
    cfg: TrainConfig, storage: str, name: str, where: str, default: str | None = None
) -> bool:
    """Whether ``storage/name`` holds a run of exactly ``cfg`` (True: ``fit`` resumes it).

    A run started with another config, or one that Ray Train would resume but whose
    config was never stored, is a :class:`UserError` naming the differing paths.
    """
    import pyarrow.fs

    fs, run_dir = _run_dir(storage, name)
    stored_file = f"{run_dir}/{RUN_CONFIG_FILE}"
    try:
        if fs.get_file_info(stored_file).type == pyarrow.fs.FileType.NotFound:
            snapshot = fs.get_file_info(f"{run_dir}/{RAY_SNAPSHOT_FILE}")
            if snapshot.type == pyarrow.fs.FileType.NotFound:
                return False
            raise UserError(
                where,
                "--name",
                f"run {name} in {storage_uri(storage)} holds checkpoints but no "
                f"{RUN_CONFIG_FILE}, so its config is unknown and Ray would resume it as it is",
                "pass another --name, or delete that run directory",
            )
        with fs.open_input_stream(stored_file) as f:
            stored = json.loads(f.read().decode())
    except OSError as err:
        raise UserError(
            "--storage", "", f"cannot read {stored_file}: {err}", "check the storage and access"
        ) from None
    given = json.loads(config_json(cfg))
    diff = _differences(given, stored)
    if not diff:
        return True
    first = diff[0]
    shown = ", ".join(diff[:3]) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")
    other = f"omit --name to train this config as its own run {default}, or " if default else ""
    why = (
        " (a run's lr schedule spans its epochs, so a run cannot be extended)"
        if "epochs" in diff
        else ""
    )
    raise UserError(
        where,
        shown,
        f"{'differs' if len(diff) == 1 else 'differ'} from the config run {name} in "
        f"{storage_uri(storage)} was started with "
        f"({first}: {flatten(stored).get(first)!r} there, {flatten(given).get(first)!r} here)"
        + why,
        f"{other}pass a new --name",
    )


def record_run(cfg: TrainConfig, storage: str, name: str) -> str:
    """Store ``cfg`` as the config of run ``storage/name``; returns the file's path."""
    fs, run_dir = _run_dir(storage, name)
    path = f"{run_dir}/{RUN_CONFIG_FILE}"
    try:
        fs.create_dir(run_dir, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(json.loads(config_json(cfg)), indent=2, sort_keys=True).encode())
    except OSError as err:
        raise UserError(
            "--storage", "", f"cannot write {path}: {err}", "check the storage and access"
        ) from None
    return path


def run_train(
    cfg: TrainConfig,
    storage: str = "runs",
    name: str | None = None,
    config_file: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """``smotune train``: one run of ``cfg`` on the local Ray (or RAY_ADDRESS).

    ``cfg`` is the config as given (after command-line overrides, data paths as
    written); it names the run (default: :func:`default_run_name`) and is stored
    beside it. A run of the same name and config resumes from its last checkpoint
    (a finished one trains nothing and reports its end again); the same name with
    another config is a :class:`UserError`, raised before Ray is touched.
    It prints one line per epoch; Ray's own logs go to ``<storage>/<name>/smotune-ray.log``
    (or also to the terminal with ``verbose``).
    Returns the final metrics, the checkpoint path under ``checkpoint`` and the run
    name under ``run``.
    """
    from smotune import console
    from smotune.ray_cluster import worker_logs

    where = config_file or "config"
    default = default_run_name(cfg, config_file)
    name = name or default
    resume = check_run(cfg, storage, name, where, default if name != default else None)
    run_cfg = absolute_paths(cfg)
    log, under_storage = console.log_file(storage, name)
    with console.ray_logs_to(log, verbose):
        check_fits(run_cfg, connect(verbose=verbose))
        print(console.where_logs_go(log, under_storage, worker_logs()), flush=True)
        if not resume:
            record_run(cfg, storage, name)
        state = "same config as stored: resuming" if resume else "new run"
        print(f"run {name} in {storage_uri(storage)} ({state})", flush=True)
        feed = console.EpochFeed(cfg.epochs)
        with feed.printing():
            result = fit(build_trainer(run_cfg, storage, name, callbacks=[feed.callback()]))
    final = dict(result.metrics or {})
    final["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    final["run"] = name
    print(
        "final: "
        + "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in final.items()
            if k != DAMAGE_KEY  # its lines were printed as the epochs came
        )
    )
    return final


def trial_run_config(sweep: SweepConfig, sample: dict[str, Any], base_dir: str) -> TrainConfig:
    """What a trial trains, and MLflow logs as its ``train.yaml``: ``space.trial_config`` with
    its relative data paths made absolute from ``base_dir``, where the sweep started."""
    return absolute_paths(trial_config(sweep, sample), Path(base_dir))


def trial_fn(config: dict[str, Any], sweep: SweepConfig, base_dir: str, storage: str) -> None:
    """The Tune trainable: ``config`` holds the sampled dotted paths, ``sweep`` the sweep config."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_run_config(sweep, config, base_dir)
    trial_id = tune.get_context().get_trial_id()
    fit(build_trainer(cfg, storage, f"train-{trial_id}", callbacks=[TuneReportCallback()]))


class WorkerError(RuntimeError):
    """Training failed on its workers; the message names each failing rank's own error."""


def fit(trainer: Any) -> Any:
    """``trainer.fit()``, its failure re-raised as a :class:`WorkerError` naming the cause.

    Ray Train's ``WorkerGroupError`` starts "Training failed due to worker errors:"
    and buries the worker's own error in a traceback; the trial's reason (MLflow's
    ``reason`` tag, the summary) is the last error line, so it is made to be that.
    """
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as err:
        raise WorkerError(failure_reason(err)) from err


def failure_reason(err: BaseException) -> str:
    """One line: each failing rank's own error (ranks with the same error grouped).

    A worker that died (SIGKILL, OOM) fails its health check; its reason is the
    exit detail Ray gives for the dead actor.
    """
    failures: dict[int, BaseException] = getattr(err, "worker_failures", None) or {}
    if not failures:
        return _first_line(err)
    ranks_of: dict[str, list[str]] = {}
    for rank, exc in sorted(failures.items()):
        died = getattr(exc, "health_check_failure", None)
        text = f"worker died: {_exit_detail(died)}" if died is not None else _first_line(exc)
        ranks_of.setdefault(text, []).append(str(rank))
    return "; ".join(f"rank {','.join(r)}: {text}" for text, r in ranks_of.items())


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _exit_detail(exc: BaseException) -> str:
    """Ray's ``Worker exit detail: ...`` sentence for a dead actor, else its first line."""
    found = re.search(r"Worker exit detail: ([^.]*)", str(exc))
    return found.group(1).strip()[:300] if found else _first_line(exc)
