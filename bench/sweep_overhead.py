"""Where a short trial's time goes: each phase of one smotune trial beside an empty TorchTrainer.

One local Ray, one run: an empty ``TorchTrainer`` (the same workers, CPUs and
Tune wrapping as a trial, a loop that only reports once: Ray's own floor) and a
real trial (``smotune.trial.trial_fn`` over the demo's train config on freshly
generated synthetic data, called as the sweep calls it), alternated
``--repeats`` times so both see the same machine load. Phase times come from
three clocks on one machine, nothing estimated:

- the bench's wall clock: ``Tuner.fit`` start and end, and a driver-side Tune
  callback stamping each result as Tune receives it;
- the trial driver's entry (a wrapper around the trainable stamps it);
- Ray Train's controller log (``logs/train/ray-train-sys-controller-*.log``,
  DEBUG lines Ray writes itself): placement group, worker actors created,
  Train context, the process group (``BackendSetupCallback``), train function
  launched;
- the engine's own ``phase/*`` report keys (``SMOTUNE_PHASE_TIMES=1``, see
  ``smotune/engine.py``): entering the worker, model build, epoch plan and
  zero-shot set, per epoch the loader's first batch, the training steps, the
  zero-shot eval, the checkpoint write and its size, and the ``report`` call.

Derived, per trial: the fixed cost (wall minus every epoch's loader, steps,
eval, checkpoint and report) against the empty trainer's whole wall (the goal:
<= 1.2x), the share of the wall in training steps (>= 70%), eval over an
epoch's time (<= 5%), and checkpoint bytes written per trial (every epoch's
checkpoint; Ray copies each into the storage path, so the disk sees them
twice) and kept at the end. The same phases give the training share of a trial
that ASHA stops after k epochs.

    flock /tmp/smotune-ray.lock .venv/bin/python bench/sweep_overhead.py [--quick] [--repeats 2]

Prints JSON; the full run writes ``bench/results/sweep_overhead.json`` (which
``cluster/budget.py`` reads) and appends a row to BENCHMARKS.md. ``--quick``
(one short epoch, once) writes nothing to the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import machine  # noqa: E402  (bench/machine.py)

from smotune import engine, trial  # noqa: E402
from smotune.config import SweepConfig, TrainConfig, load_sweep  # noqa: E402

RESULT = ROOT / "bench" / "results" / "sweep_overhead.json"
GOALS = {"train_share_min": 0.70, "fixed_over_empty_max": 1.2, "eval_over_epoch_max": 0.05}
EPOCH_PARTS = ("loader_s", "steps_s", "eval_s", "checkpoint_s", "report_s")
RAY_LINES = {  # Ray Train controller's DEBUG lines: seconds it states
    "placement_group_s": r"Placement group ready in ([\d.]+)s",
    "actors_s": r"worker actors created in ([\d.]+)s",
    "train_context_s": r"Train context initialized on workers in ([\d.]+)s",
    "process_group_s": r"BackendSetupCallback: ([\d.]+)s",
    "ray_worker_group_total_s": r"Worker group startup completed in ([\d.]+)s total",
}


def _mark(path: str, what: str) -> None:
    from ray import tune

    line = {"what": what, "t": time.time(), "trial_id": tune.get_context().get_trial_id()}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def timed_trial(config: dict[str, Any], marks: str, **kw: Any) -> None:
    """``trial.trial_fn`` as the sweep calls it, its entry and exit stamped."""
    _mark(marks, "driver_enter")
    try:
        trial.trial_fn(config, **kw)
    finally:
        _mark(marks, "driver_exit")


def empty_loop(config: dict[str, Any]) -> None:
    """Ray's floor: a worker that only reports, with the stamps the engine's reports carry."""
    import ray.train

    entered = time.time()
    ray.train.report({"epoch": 1, "phase/enter_wall": entered, "phase/report_wall": time.time()})


def empty_trial(config: dict[str, Any], marks: str, cfg: TrainConfig, storage: str) -> None:
    """A trial as ``trial.build_trainer`` makes one (same scaling, run and Tune wrapping)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    _mark(marks, "driver_enter")
    trainer = TorchTrainer(
        empty_loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers.num, resources_per_worker={"CPU": cfg.workers.cpus}
        ),
        run_config=ray.train.RunConfig(
            name=f"empty-{tune.get_context().get_trial_id()}",
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        trial.fit(trainer)
    finally:
        _mark(marks, "driver_exit")


def _recorder():
    from ray.tune import Callback

    class Recorder(Callback):
        def __init__(self):
            self.results: list[tuple[float, dict[str, Any]]] = []
            self.trial_id: str | None = None

        def on_trial_start(self, iteration, trials, trial, **info):
            self.trial_id = trial.trial_id

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append((time.time(), dict(result)))

    return Recorder()


def run_one(kind: str, cfg: TrainConfig, work: Path, marks: Path) -> dict[str, Any]:
    """One Tuner with one trial (``kind`` empty or smotune); the raw stamps it produced."""
    from ray import tune

    storage = str(work / kind / "train")
    if kind == "empty":
        trainable = tune.with_parameters(empty_trial, marks=str(marks), cfg=cfg, storage=storage)
    else:
        trainable = tune.with_parameters(
            timed_trial,
            marks=str(marks),
            sweep=SweepConfig(name="overhead", train=cfg),
            base_dir=str(work),
            storage=storage,
        )
    recorder = _recorder()
    start = time.time()
    grid = tune.Tuner(
        tune.with_resources(trainable, trial.TRIAL_RESOURCES),
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False),
        run_config=tune.RunConfig(
            name=kind, storage_path=str(work / kind), callbacks=[recorder], verbose=0
        ),
    ).fit()
    end = time.time()
    if grid.errors:
        raise SystemExit(f"{kind} trial failed: {grid.errors[0]}")
    tid = recorder.trial_id
    stamps = {
        m["what"]: m["t"]
        for m in map(json.loads, marks.read_text().splitlines())
        if m["trial_id"] == tid
    }
    run_dir = Path(storage) / (f"empty-{tid}" if kind == "empty" else f"train-{tid}")
    kept = sum(f.stat().st_size for f in run_dir.glob("checkpoint_*/**/*") if f.is_file())
    return {
        "kind": kind,
        "run_name": run_dir.name,
        "fit_start": start,
        "fit_end": end,
        "stamps": stamps,
        "results": recorder.results,
        "checkpoint_bytes_kept": kept,
    }


def controller_log(session: Path, run_name: str) -> dict[str, float]:
    """Ray Train's controller log lines for ``run_name``: stated seconds and a few stamps."""
    out: dict[str, float] = {}
    for path in sorted((session / "logs" / "train").glob("ray-train-sys-controller-*.log")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("run_name") != run_name:
                continue
            msg, t = rec.get("message", ""), rec.get("timestamp_ns", 0) / 1e9
            for key, pattern in RAY_LINES.items():
                found = re.search(pattern, msg)
                if found and key not in out:
                    out[key] = float(found.group(1))
            if msg.startswith("Attempting to start training worker group"):
                out.setdefault("worker_group_requested_wall", t)
            if "Train function launched on workers" in msg:
                out.setdefault("train_fn_launched_wall", t)
    return out


def phases(raw: dict[str, Any], session: Path) -> dict[str, Any]:
    """The phase times of one trial (seconds), from its raw stamps and Ray's log."""
    ray_log = controller_log(session, raw["run_name"])
    epochs = [r for _, r in raw["results"] if "phase/enter_wall" in r]
    if not epochs:
        raise SystemExit(f"{raw['kind']}: no phase/* keys in the reports (SMOTUNE_PHASE_TIMES?)")
    received = [t for t, r in raw["results"] if "phase/enter_wall" in r]
    first = epochs[0]
    driver = raw["stamps"]["driver_enter"]
    requested = ray_log.get("worker_group_requested_wall", driver)
    launched = ray_log.get("train_fn_launched_wall", first["phase/enter_wall"])
    out: dict[str, Any] = {
        "wall_s": raw["fit_end"] - raw["fit_start"],
        "tune_trial_start_s": driver - raw["fit_start"],
        "train_controller_s": requested - driver,  # TrainController actor up, run set up
        "worker_group_s": launched - requested,  # Ray: placement group .. train fn launched
        **{k: v for k, v in ray_log.items() if not k.endswith("_wall")},
        "worker_import_s": first["phase/enter_wall"] - launched,  # the loop imports its code
        "model_build_s": first.get("phase/setup_s", 0.0),
        "plan_and_evalset_s": first.get("phase/plan_s", 0.0),
        "end_s": raw["fit_end"] - received[-1],  # last result in Tune .. Tuner.fit returns
        "epochs": [],
        "checkpoint_bytes": [int(r.get("phase/checkpoint_bytes", 0)) for r in epochs],
        "checkpoint_bytes_kept": raw["checkpoint_bytes_kept"],
    }
    for t, r in zip(received, epochs, strict=True):
        ep = {k: r.get(f"phase/{k}", 0.0) for k in EPOCH_PARTS if k != "report_s"}
        ep["report_s"] = t - r["phase/report_wall"]  # checkpoint persisted, result to Tune
        out["epochs"].append({k: round(v, 3) for k, v in ep.items()})
    per_epoch = sum(sum(e.values()) for e in out["epochs"])
    out["fixed_s"] = out["wall_s"] - per_epoch
    out["steps_s"] = sum(e["steps_s"] for e in out["epochs"])
    return out


def derive(real: dict[str, Any], empty: dict[str, Any], params: int) -> dict[str, Any]:
    """The issue's ratios from one real trial and the empty trainer measured beside it."""
    eps = real["epochs"]
    epoch_s = [sum(e.values()) for e in eps]
    written = sum(real["checkpoint_bytes"])
    # before: every epoch's checkpoint held the optimizer, as the first epoch's still does
    every_epoch = real["checkpoint_bytes"][0] * len(eps) if len(eps) > 1 else None
    shares = {}
    for k in range(1, len(eps) + 1):  # a trial ASHA stops after k epochs
        shares[k] = round(
            sum(e["steps_s"] for e in eps[:k]) / (real["fixed_s"] + sum(epoch_s[:k])), 3
        )
    return {
        "train_share": round(real["steps_s"] / real["wall_s"], 3),
        "train_share_if_stopped_after": shares,
        "fixed_over_empty": round(real["fixed_s"] / empty["wall_s"], 3),
        "eval_over_epoch": round(
            statistics.mean(e["eval_s"] / s for e, s in zip(eps, epoch_s, strict=True)), 4
        ),
        "checkpoint_bytes_written": written,
        "checkpoint_bytes_written_if_optimizer_every_epoch": every_epoch,
        "checkpoint_bytes_per_param": round(real["checkpoint_bytes"][0] / params, 3),
        "checkpoint_bytes_per_param_last_epoch": round(real["checkpoint_bytes"][-1] / params, 3),
    }


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 2)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one short epoch, once; no files")
    ap.add_argument("--repeats", type=int, default=None, help="empty + real pairs (default 2)")
    ap.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)

    import ray

    from smotune import model as model_mod
    from smotune.data import synth
    from smotune.ray_cluster import TRIAL_DRIVER, start_local_ray

    cfg = load_sweep(ROOT / "search_spaces" / "demo.yaml", check_paths=False).train
    work = Path(tempfile.mkdtemp(prefix="smotune-overhead-"))
    data = work / "synth"
    if args.quick:
        cfg.epochs, cfg.data.samples_per_epoch = 1, 2 * cfg.optim.batch_size
    # the demo's data set (`smotune data synth` defaults) but only the samples two epochs read
    synth.generate(data, train_samples=2 * cfg.data.samples_per_epoch, shards=8, seed=0)
    cfg.data.train, cfg.data.zeroshot = f"{data}/train-{{0000..0007}}.tar", str(data / "zeroshot")
    params = sum(p.numel() for p in model_mod.create(cfg.model).parameters())

    os.environ[engine.PHASE_TIMES_ENV] = "1"  # the local Ray's workers inherit it
    start_local_ray(num_cpus=2, resources={TRIAL_DRIVER: 1}, log_to_driver=False)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    marks = work / "marks.jsonl"
    marks.touch()
    pairs = []
    for i in range(repeats):
        empty = phases(run_one("empty", cfg, work / f"r{i}", marks), session)
        real = phases(run_one("smotune", cfg, work / f"r{i}", marks), session)
        pairs.append({"empty": empty, "smotune": real, "ratios": derive(real, empty, params)})
        print(json.dumps(pairs[-1]["ratios"]), flush=True)
    ray.shutdown()

    def median(key: str) -> float:
        return round(statistics.median(p["ratios"][key] for p in pairs), 3)

    result = {
        "bench": "sweep_overhead",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine.describe(),
        "config": "search_spaces/demo.yaml train"
        + (" (quick: 1 epoch of 2 steps)" if args.quick else ""),
        "arch": cfg.model.arch,
        "params": params,
        "epochs": cfg.epochs,
        "steps_per_epoch": cfg.data.samples_per_epoch // cfg.optim.batch_size,
        "workers": cfg.workers.num,
        "repeats": repeats,
        "goals": GOALS,
        "median": {k: median(k) for k in ("train_share", "fixed_over_empty", "eval_over_epoch")},
        "fixed_s": round(statistics.median(p["smotune"]["fixed_s"] for p in pairs), 1),
        "empty_wall_s": round(statistics.median(p["empty"]["wall_s"] for p in pairs), 1),
        "pairs": [{**_round(p), "ratios": p["ratios"]} for p in pairs],  # ratios: as derived
    }
    print(json.dumps(result))
    if not args.quick:
        RESULT.parent.mkdir(exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=1) + "\n")
        if not args.no_append:
            _append(result)


PHASE_ROWS = (  # (label, key in a trial's phases; None: the sum of its epochs' key)
    ("Tune trial start (Tuner.fit to the trial's driver)", "tune_trial_start_s"),
    ("Train controller (driver to worker group requested)", "train_controller_s"),
    ("worker group (Ray: placement group to train fn launched)", "worker_group_s"),
    ("  of which worker actors created", "actors_s"),
    ("  of which Train context on the workers", "train_context_s"),
    ("  of which process group (BackendSetupCallback)", "process_group_s"),
    ("worker imports its loop (smotune.engine: torch, open_clip)", "worker_import_s"),
    ("model build, DDP wrap, AdamW", "model_build_s"),
    ("epoch plan and zero-shot set", "plan_and_evalset_s"),
    ("loader start (to the first batch), all epochs", "loader_s"),
    ("training steps, all epochs", "steps_s"),
    ("zero-shot eval, all epochs", "eval_s"),
    ("checkpoint write, all epochs", "checkpoint_s"),
    ("checkpoint persist + report to Tune, all epochs", "report_s"),
    ("end (last result to Tuner.fit returning)", "end_s"),
    ("wall (Tuner.fit)", "wall_s"),
    ("fixed cost (wall minus the epochs' rows above)", "fixed_s"),
)


def _phase(trial: dict[str, Any], key: str) -> float | None:
    if key in trial and not isinstance(trial[key], list):
        return trial[key]
    if trial["epochs"] and key in trial["epochs"][0]:
        return sum(e[key] for e in trial["epochs"])
    return None


def _append(result: dict[str, Any]) -> None:
    """A section of BENCHMARKS.md: the phases of each pair and the goals against the medians."""
    pairs, med, goals = result["pairs"], result["median"], result["goals"]
    head = " | ".join(f"empty #{i + 1} | smotune #{i + 1}" for i in range(len(pairs)))
    lines = [
        "",
        f"## Sweep overhead ({result['date']}, bench/sweep_overhead.py)",
        "",
        f"Machine: {result['machine']}. One run: an empty TorchTrainer and a smotune trial"
        f" ({result['config']}: {result['arch']}, {result['params']:,} parameters,"
        f" {result['epochs']} epochs of {result['steps_per_epoch']} steps, {result['workers']}"
        f" workers), alternated {result['repeats']} times on one local Ray. Seconds.",
        "",
        f"| phase | {head} |",
        "|---" * (1 + 2 * len(pairs)) + "|",
    ]
    for label, key in PHASE_ROWS:
        cells = []
        for pair in pairs:
            for kind in ("empty", "smotune"):
                value = _phase(pair[kind], key)
                cells.append("-" if value is None else f"{value:.2f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    ckpt = [p["ratios"] for p in pairs]
    lines += [
        "",
        f"| goal | target | measured (median of {len(pairs)}; each pair) | met |",
        "|---|---|---|---|",
        _goal_row(
            "wall time in training steps",
            ">=",
            goals["train_share_min"],
            ckpt,
            med,
            "train_share",
            "{:.1%}",
        ),
        _goal_row(
            "fixed cost / empty TorchTrainer's wall",
            "<=",
            goals["fixed_over_empty_max"],
            ckpt,
            med,
            "fixed_over_empty",
            "{:.2f}x",
        ),
        _goal_row(
            "zero-shot eval / epoch",
            "<=",
            goals["eval_over_epoch_max"],
            ckpt,
            med,
            "eval_over_epoch",
            "{:.1%}",
        ),
        "",
        f"Checkpoints per trial: {_mb(ckpt[0]['checkpoint_bytes_written'])} written (epochs:"
        f" {', '.join(_mb(b) for b in pairs[0]['smotune']['checkpoint_bytes'])}; Ray copies each"
        f" into the storage path, so the disk sees them twice),"
        f" {_mb(pairs[0]['smotune']['checkpoint_bytes_kept'])} kept;"
        f" {ckpt[0]['checkpoint_bytes_per_param']} B/param with AdamW's state,"
        f" {ckpt[0]['checkpoint_bytes_per_param_last_epoch']} B/param in the last epoch's.",
        f"Training share of a trial ASHA stops after k epochs (pair 1):"
        f" {ckpt[0]['train_share_if_stopped_after']}.",
        "",
    ]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(lines))


def _goal_row(label, op, target, ratios, med, key, fmt) -> str:
    each = ", ".join(fmt.format(r[key]) for r in ratios)
    met = med[key] >= target if op == ">=" else med[key] <= target
    return (
        f"| {label} | {op} {fmt.format(target)} | {fmt.format(med[key])} ({each}) |"
        f" {'yes' if met else 'no'} |"
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


if __name__ == "__main__":
    main()
