"""Search efficiency, measured: grid / random search against TPE+ASHA on a tabular benchmark.

Method (three phases, each cached as JSON in ``bench/results/``):

1. ``table``: every point of a small grid (``optim.lr`` over two decades and the
   three regularisers ``loss.label_smoothing``, ``optim.weight_decay``,
   ``model.text_dropout``) is trained once, all epochs, on the synthetic set with
   smotune's real code path: one Ray Tune run of ``smotune.trial.trial_fn``,
   wrapped as ``smotune.sweep`` wraps it, on a local Ray with a ``trial_driver``
   slot. Each point's per-epoch zero-shot top-1 curve goes to
   ``search_table.json`` (written after every trial; a rerun trains only what is
   missing).
2. ``search``: each method runs as a real Ray Tune run, with smotune's own
   searcher and scheduler (``make_searcher`` / ``make_scheduler``) over ``choice``
   distributions on the grid values, against a trainable that trains nothing:
   it looks its config up in the table and reports the stored curve epoch by
   epoch. Methods: ``random`` (random search at the grid's trial-epoch budget,
   no early stopping), ``tpe_asha`` (the demo's TPE + ASHA), and two ablations
   (``tpe`` alone, ``random_asha``). Three search seeds each. The exhaustive
   grid's cost to reach the target depends on the order it visits the points;
   its expected value over random orders is computed exactly.
3. ``confirm``: every config a method picked as its best is re-trained (real
   code path) at extra training seeds; picks are compared on those seeds only,
   so the winner's curse of the table's seed does not flatter them.

Measures, in percentage points of zero-shot top-1 (48 classes, chance 2.08):
trial-epochs (the sum over trials of the epochs each actually ran) until a
completed trial is within 1 point of the grid's best, and each method's
confirmed best (mean and std over the extra seeds). The goal under test: TPE+ASHA
within 1 point using at most 1/3 of the grid's trial-epochs.

Caveats: a tabular benchmark measures a searcher on grid points only (TPE over
``choice`` values, not over the continuous space a real sweep searches), and
each curve comes from one training seed, so "the grid's best" is itself a noisy
number; phase 3 says how noisy.

    nice -n 19 .venv/bin/python bench/search_efficiency.py [--phase table|search|confirm|all]
        [--quick]

``--quick`` runs a 2-point grid for 1 short epoch into a temporary directory (proves the
code path; writes nothing to the repository). The full run appends a section to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
METRIC = "zeroshot_top1"
CHANCE = 100.0 / 48
TOLERANCE = 1.0  # points of top-1: "within 1 point of the grid's best"

GRID = {  # trained in this order, first key outermost: the text_dropout=0 half comes first
    "model.text_dropout": [0.0, 0.3],
    "loss.label_smoothing": [0.0, 0.3],
    "optim.weight_decay": [0.01, 1.0],
    "optim.lr": [1.0e-4, 4.6e-4, 2.2e-3, 1.0e-2],
}
QUICK_GRID = {
    "model.text_dropout": [0.0],
    "loss.label_smoothing": [0.0],
    "optim.weight_decay": [0.1],
    "optim.lr": [1.0e-3, 1.0e-2],
}
METHODS = {  # name -> (search.algo, ASHA on)
    "random": ("random", False),
    "tpe_asha": ("tpe", True),
    "tpe": ("tpe", False),
    "random_asha": ("random", True),
}
SEARCH_SEEDS = (0, 1, 2)
CONFIRM_SEEDS = (1, 2)  # the table was trained at seed 0
CONFIRMED = ("grid", "random", "tpe_asha", "tpe_asha@third")  # the ablations' picks are not


# ---------------------------------------------------------------- grid and table


def grid_points(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def point_key(point: dict[str, Any], paths: list[str]) -> str:
    return "|".join(f"{p}={float(point[p]):.6g}" for p in paths)


def run_key(point: dict[str, Any], paths: list[str], seed: int) -> str:
    return f"{point_key(point, paths)}|seed={seed}"


# The table's own schedule, over the demo's train config: the table outlives demo changes
# (the demo went to 3 epochs of 1536 samples at batch 64 per worker after it was started).
SCHEDULE = {"epochs": 4, "samples_per_epoch": 2048, "batch_size": 128}


def base_train(quick: bool):
    """The demo sweep's train config on the table's schedule, data paths made absolute
    (quick: one short epoch)."""
    from smotune.config import TrainConfig, absolute_paths

    data = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())["train"]
    cfg = absolute_paths(TrainConfig.model_validate(data), base=ROOT)
    cfg.epochs = SCHEDULE["epochs"]
    cfg.data.samples_per_epoch = SCHEDULE["samples_per_epoch"]
    cfg.optim.batch_size = SCHEDULE["batch_size"]
    if quick:
        cfg.epochs = 1
        cfg.data.samples_per_epoch = 256
    return cfg


def _differences(stored: dict, now: dict, searched: set[str]) -> list[str]:
    """Dotted fields whose value differs between two configs, searched fields aside
    (compared flat, as ``sweep`` compares a resumed sweep file with its record)."""
    from smotune.config import flatten

    old, new = flatten(stored), flatten(now)
    ignored = searched | {"workers.max_failures"}  # restarts only: not what a run learns
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return [f"{k} ({old.get(k)} -> {new.get(k)})" for k in changed if k not in ignored]


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _code_info() -> dict[str, Any]:
    """Which smotune trained (the driver's and a Ray worker's import path) and its commit."""
    import ray

    import smotune

    @ray.remote(num_cpus=0)
    def where() -> str:
        import smotune as s

        return s.__file__

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    source = Path(smotune.__file__).resolve().parent.parent
    stamp = source / "COMMIT"  # a snapshot of the package (git archive) may carry its commit
    return {
        "smotune_commit": stamp.read_text().strip()[:12] if stamp.exists() else None,
        "smotune_driver": smotune.__file__,
        "smotune_worker": ray.get(where.options(resources={"trial_driver": 0.01}).remote()),
        "repo_head": git("rev-parse", "--short", "HEAD"),
        "repo_dirty_smotune": git("status", "--porcelain", "smotune").splitlines(),
    }


def _start_ray() -> None:
    import ray

    from smotune.ray_cluster import TRIAL_DRIVER, start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, resources={TRIAL_DRIVER: 1}, log_to_driver=True)


def _recorder(on_done):
    """A driver-side Tune callback keeping each trial's per-epoch metrics, in start order."""
    from ray.tune import Callback

    class Recorder(Callback):
        def __init__(self):
            self.trials: dict[str, dict[str, Any]] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.trials[trial.trial_id] = {
                "config": dict(trial.config),
                "epochs": [],
                "top1": [],
                "top5": [],
                "t0": time.monotonic(),
            }

        def on_trial_result(self, iteration, trials, trial, result, **info):
            rec = self.trials[trial.trial_id]
            if METRIC in result and int(result["epoch"]) not in rec["epochs"]:
                rec["epochs"].append(int(result["epoch"]))
                rec["top1"].append(float(result[METRIC]))
                rec["top5"].append(float(result.get("zeroshot_top5", math.nan)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            rec = self.trials[trial.trial_id]
            rec["wall_s"] = round(time.monotonic() - rec.pop("t0"), 1)
            on_done(rec)

        def on_trial_error(self, iteration, trials, trial, **info):
            rec = self.trials[trial.trial_id]
            rec["wall_s"] = round(time.monotonic() - rec.pop("t0"), 1)
            try:
                text = Path(trial.error_file).read_text()
            except (OSError, TypeError):
                text = "unknown error"
            rec["error"] = text.strip().splitlines()[-1][:300] if text.strip() else "error"
            on_done(rec)

    return Recorder()


def train_runs(
    points: list[dict[str, Any]], paths: list[str], cfg, path: Path, name: str
) -> dict[str, Any]:
    """Train each point (its ``seed`` key included) once with smotune's trial function.

    Results are added to the JSON at ``path`` after each trial; points already
    there are not trained again.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from smotune import trial
    from smotune.config import SweepConfig

    store = _read(path) or {"epochs": cfg.epochs, "base_train": cfg.model_dump(mode="json")}
    store.setdefault("runs", {})
    if store["epochs"] != cfg.epochs:
        raise SystemExit(f"{path} holds {store['epochs']}-epoch runs, this config {cfg.epochs}")
    changed = _differences(store["base_train"], cfg.model_dump(mode="json"), set(paths))
    if changed:
        raise SystemExit(f"{path} was trained with another base config: {', '.join(changed)}")
    todo = [p for p in points if run_key(p, paths, p["seed"]) not in store["runs"]]
    print(f"{name}: {len(points) - len(todo)} of {len(points)} runs cached, training {len(todo)}")
    if not todo:
        return store
    _start_ray()
    code = _code_info()
    store.setdefault("code", code)  # what trained the first runs; later runs record their own
    print(f"{name}: smotune from {code}", flush=True)

    def done(rec: dict[str, Any]) -> None:
        point = {k: rec["config"][k] for k in [*paths, "seed"]}
        diverged = "FloatingPointError" in rec.get("error", "")  # a NaN loss: a result
        if rec["epochs"] != list(range(1, cfg.epochs + 1)) and not diverged:
            print(f"run {point} incomplete ({rec.get('error')}): left for a rerun", flush=True)
            return
        store["runs"][run_key(point, paths, point["seed"])] = {
            "point": point,
            "top1": [round(100 * v, 3) for v in rec["top1"]],
            "top5": [round(100 * v, 3) for v in rec["top5"]],
            "wall_s": rec["wall_s"],
            **(
                {"code": code["smotune_commit"] or code["repo_head"]}
                if code != store["code"]
                else {}
            ),
            **({"error": rec["error"]} if diverged else {}),
        }
        _write(path, store)
        print(
            f"{name} [{len(store['runs'])}] {point_key(point, paths)} seed={point['seed']}: "
            f"top1 {store['runs'][run_key(point, paths, point['seed'])]['top1']} "
            f"({rec['wall_s']:.0f} s)",
            flush=True,
        )

    work = tempfile.mkdtemp(prefix="smotune-seb-")
    trainable = tune.with_resources(
        tune.with_parameters(
            trial.trial_fn,
            sweep=SweepConfig(name=name, train=cfg),
            base_dir=str(ROOT),
            storage=f"{work}/train",
        ),
        trial.TRIAL_RESOURCES,
    )
    keys = [*paths, "seed"]
    try:
        tune.Tuner(
            trainable,
            param_space={k: tune.choice(sorted({p[k] for p in todo})) for k in keys},
            tune_config=tune.TuneConfig(
                search_alg=BasicVariantGenerator(
                    points_to_evaluate=[dict(p) for p in todo], max_concurrent=1
                ),
                num_samples=len(todo),
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=work,
                callbacks=[_recorder(done)],
                verbose=0,
            ),
        ).fit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _write(path, store)
    missing = [p for p in points if run_key(p, paths, p["seed"]) not in store["runs"]]
    if missing:
        raise SystemExit(f"{len(missing)} runs did not finish (rerun to train them): {missing}")
    return store


def phase_table(grid: dict[str, list[float]], cfg, out: Path) -> dict[str, Any]:
    points = [{**p, "seed": cfg.seed} for p in grid_points(grid)]
    store = train_runs(points, list(grid), cfg, out / "search_table.json", "table")
    store["grid"] = grid
    _write(out / "search_table.json", store)
    return store


def table_finals(table: dict[str, Any], grid: dict[str, list[float]]) -> dict[str, list[float]]:
    """point_key -> top-1 curve (points) of the table's training seed."""
    paths = list(grid)
    return {point_key(r["point"], paths): r["top1"] for r in table["runs"].values()}


# ---------------------------------------------------------------- phase 2: search


def _search_module():
    try:
        from smotune import search as module
    except ImportError:
        from smotune import sweep as module
    return module


def make_sweep(grid, cfg, algo: str, asha: bool, seed: int, samples: int, work: str, name: str):
    from smotune.config import SearchConfig, SweepConfig

    search = {"algo": algo, "samples": samples, "concurrent": 1, "seed": seed}
    if "storage" in SearchConfig.model_fields:
        search["storage"] = f"sqlite:///{work}/optuna.db"
    return SweepConfig.model_validate(
        {
            "name": name,
            "train": cfg.model_dump(mode="json"),
            "space": {p: {"choice": list(v)} for p, v in grid.items()},
            "search": search,
            "schedule": {"asha": {"grace": 1, "reduction": 3} if asha else None},
            "storage": {"path": work},
        }
    )


def searcher_and_scheduler(sweep):
    """smotune's searcher and scheduler, whichever signature they have today."""
    module = _search_module()
    try:  # the study's own module since 2026-12-05
        from smotune import optuna_study as study_module
    except ImportError:
        study_module = module
    url = storage = None
    if hasattr(study_module, "prepare_study"):
        url, storage = study_module.prepare_study(sweep, resume=False, where="bench")

    def extra(fn) -> list[Any]:
        args = []
        for name, p in list(inspect.signature(fn).parameters.items())[1:]:
            if p.default is not p.empty:
                continue
            if "url" in name:
                args.append(url)
            elif "storage" in name:
                args.append(storage)
            else:
                raise TypeError(f"{fn.__qualname__} needs {name}: update this benchmark")
        return args

    searcher = module.make_searcher(sweep, *extra(module.make_searcher))
    scheduler = module.make_scheduler(sweep, *extra(module.make_scheduler))
    return module.__name__, searcher, scheduler


def replay(config: dict[str, Any], curves: dict[str, list[float]], paths: list[str], epochs: int):
    """The table trainable: report the stored curve of ``config``, epoch by epoch.

    A run that diverged in the table (a NaN loss) fails here after its last good epoch.
    """
    from ray import tune

    curve = curves[point_key(config, paths)]
    for epoch, value in enumerate(curve, start=1):
        tune.report({"epoch": epoch, METRIC: value / 100})
    if len(curve) < epochs:
        raise FloatingPointError(f"diverged at epoch {len(curve) + 1} in the table")


def search_run(grid, cfg, curves, epochs, method: str, seed: int, samples: int) -> dict:
    """One Tune run of ``method`` against the table; its trials in start order."""
    from ray import tune

    from smotune import trial

    algo, asha = METHODS[method]
    paths = list(grid)
    work = tempfile.mkdtemp(prefix="smotune-seb-")
    try:
        sweep = make_sweep(grid, cfg, algo, asha, seed, samples, work, f"seb-{method}-{seed}")
        module, searcher, scheduler = searcher_and_scheduler(sweep)
        recorder = _recorder(lambda rec: None)
        trainable = tune.with_resources(
            tune.with_parameters(replay, curves=curves, paths=paths, epochs=epochs),
            trial.TRIAL_RESOURCES,
        )
        t0 = time.monotonic()
        tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=samples,
                max_concurrent_trials=1,
                reuse_actors=True,  # the trainable trains nothing; reuse saves actor start-ups
            ),
            run_config=tune.RunConfig(
                name=sweep.name, storage_path=work, callbacks=[recorder], verbose=0
            ),
        ).fit()
        wall = time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    trials = [
        {
            "point": point_key(rec["config"], paths),
            "epochs_run": max(rec["epochs"], default=0),
            "top1": round(100 * rec["top1"][-1], 3) if rec["top1"] else None,
            "failed": "error" in rec,
        }
        for rec in recorder.trials.values()
    ]
    return {"module": module, "wall_s": round(wall, 1), "trials": trials}


def analyse_run(trials: list[dict[str, Any]], epochs: int, target: float, third: float):
    """Cost to reach ``target`` and the picks of one search run (trials in order).

    A trial counts as reaching the target only if it ran all ``epochs`` (only
    completed trials are exported); a pick is the best completed trial.
    """
    spent, to_target, pick, pick_third = 0, None, None, None
    for t in trials:
        spent += t["epochs_run"] + t.get("failed", False)  # a diverged trial paid that epoch
        if t["epochs_run"] < epochs or t["top1"] is None or t.get("failed"):
            continue
        if to_target is None and t["top1"] >= target:
            to_target = spent
        if pick is None or t["top1"] > pick["top1"]:
            pick = t
        if spent <= third and (pick_third is None or t["top1"] > pick_third["top1"]):
            pick_third = t
    return {
        "n_trials": len(trials),
        "distinct_points": len({t["point"] for t in trials}),
        "completed": sum(t["epochs_run"] == epochs for t in trials),
        "trial_epochs": spent,
        "trial_epochs_to_target": to_target,
        "pick": pick and {"point": pick["point"], "table_top1": pick["top1"]},
        "pick_within_third": pick_third
        and {"point": pick_third["point"], "table_top1": pick_third["top1"]},
    }


def grid_expectation(finals: list[float], epochs: int, target: float) -> dict[str, Any]:
    """The exhaustive grid in a random order: expected trial-epochs until a point >= target.

    With N points of which K reach it, the first such point's expected position
    in a uniformly random order is (N + 1) / (K + 1).
    """
    n, k = len(finals), sum(v >= target for v in finals)
    first = next(i for i, v in enumerate(finals, start=1) if v >= target)
    return {
        "points": n,
        "points_within_tolerance": k,
        "trial_epochs": n * epochs,
        "expected_trial_epochs_to_target": round(epochs * (n + 1) / (k + 1), 2),
        "trial_epochs_to_target_in_listed_order": epochs * first,
    }


def phase_search(grid, cfg, out: Path, methods: list[str], samples: int | None):
    table = _read(out / "search_table.json")
    if not table:
        raise SystemExit(f"no table at {out / 'search_table.json'}: run --phase table first")
    curves = table_finals(table, grid)
    points = [point_key(p, list(grid)) for p in grid_points(grid)]
    missing = [p for p in points if p not in curves]
    if missing:
        raise SystemExit(f"the table lacks {len(missing)} grid points: run --phase table")
    epochs = table["epochs"]
    finals = {p: curves[p][-1] if len(curves[p]) == epochs else -math.inf for p in points}
    best = max(finals, key=finals.get)
    target = finals[best] - TOLERANCE
    grid_cost = len(points) * epochs
    samples = samples or len(points)
    _start_ray()
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        runs[method] = []
        for seed in SEARCH_SEEDS:
            run = search_run(grid, cfg, curves, epochs, method, seed, samples)
            stats = analyse_run(run["trials"], epochs, target, grid_cost / 3)
            runs[method].append({"seed": seed, **stats, **run})
            print(
                f"search {method} seed {seed}: {stats['trial_epochs']} trial-epochs, "
                f"to target {stats['trial_epochs_to_target']}, pick {stats['pick']} "
                f"({run['wall_s']:.0f} s, {run['module']})",
                flush=True,
            )
    result = {
        "space": grid,
        "table_diverged": [p for p in points if finals[p] == -math.inf],
        "table_final_top1": {p: v for p, v in finals.items() if v != -math.inf},
        "epochs": epochs,
        "samples_per_run": samples,
        "table_best": {"point": best, "top1": finals[best]},
        "target_top1": round(target, 3),
        "budget_third": round(grid_cost / 3, 2),
        "grid": grid_expectation([finals[p] for p in points], epochs, target) | {"pick": best},
        "runs": runs,
        "seconds": round(time.monotonic() - started),
    }
    _write(out / "search_results.json", result)
    return result


# ---------------------------------------------------------------- phase 3: confirm


def picks(search: dict[str, Any]) -> dict[str, list[str]]:
    """Each method's picked points: the grid's best, every run's best completed trial, and
    for TPE+ASHA also its best within a third of the grid's trial-epochs."""
    out = {"grid": [search["grid"]["pick"]]}
    for method, runs in search["runs"].items():
        out[method] = [r["pick"]["point"] for r in runs if r["pick"]]
        if method == "tpe_asha":
            out["tpe_asha@third"] = [
                r["pick_within_third"]["point"] for r in runs if r["pick_within_third"]
            ]
    return out


def _mean_std(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
        "n": len(values),
    }


def phase_confirm(grid, cfg, out: Path) -> dict[str, Any]:
    search = _read(out / "search_results.json")
    table = _read(out / "search_table.json")
    if not search:
        raise SystemExit("no search results: run --phase search first")
    paths = list(grid)
    by_key = {point_key(p, paths): p for p in grid_points(grid)}
    chosen = {m: keys for m, keys in picks(search).items() if m in CONFIRMED}
    todo = sorted({k for keys in chosen.values() for k in keys})
    runs = [{**by_key[k], "seed": s} for k in todo for s in CONFIRM_SEEDS]
    store = train_runs(runs, paths, cfg, out / "confirm_runs.json", "confirm")
    table_top1 = table_finals(table, grid)
    per_point = {}
    for k in todo:
        extra = [store["runs"][run_key(by_key[k], paths, s)]["top1"][-1] for s in CONFIRM_SEEDS]
        per_point[k] = {
            "table_seed": table_top1[k][-1],
            "extra_seeds": extra,
            **_mean_std(extra),
        }
    # seed noise: pooled std of one config's final top-1 over all its training seeds
    variances = [
        statistics.variance([v["table_seed"], *v["extra_seeds"]]) for v in per_point.values()
    ]
    pooled = math.sqrt(statistics.fmean(variances))
    per_method = {
        m: _mean_std([v for k in keys for v in per_point[k]["extra_seeds"]])
        | {"picks": keys, "distinct": len(set(keys))}
        for m, keys in chosen.items()
    }
    result = {
        "confirm_seeds": list(CONFIRM_SEEDS),
        "points": per_point,
        "methods": per_method,
        "seed_std_pooled": round(pooled, 2),
        "seconds": round(sum(r["wall_s"] for r in store["runs"].values())),
    }
    _write(out / "confirm_results.json", result)
    return result


# ---------------------------------------------------------------- summary and report


def summary(out: Path) -> dict[str, Any]:
    table, search = _read(out / "search_table.json"), _read(out / "search_results.json")
    confirm = _read(out / "confirm_results.json")
    finals = list(search["table_final_top1"].values())
    methods = {}
    for method, runs in search["runs"].items():
        reached = [r["trial_epochs_to_target"] for r in runs]
        methods[method] = {
            "trial_epochs": [r["trial_epochs"] for r in runs],
            "trial_epochs_to_target": reached,
            "reached": f"{sum(v is not None for v in reached)}/{len(runs)}",
            "within_third": f"{sum(v is not None and v <= search['budget_third'] for v in reached)}"
            f"/{len(runs)}",
            "table_top1_of_pick": [r["pick"] and r["pick"]["table_top1"] for r in runs],
        }
    tpe = methods.get("tpe_asha", {})
    out_summary = {
        "bench": "search_efficiency",
        "space": search["space"],
        "points": search["grid"]["points"],
        "diverged": search["table_diverged"],
        "epochs": search["epochs"],
        "table_top1": {
            "best": max(finals),
            "median": statistics.median(finals),
            "worst": min(finals),
            "chance": round(CHANCE, 2),
        },
        "target_top1": search["target_top1"],
        "grid": search["grid"],
        "budget_third": search["budget_third"],
        "methods": methods,
        "goal_met_tpe_asha": tpe.get("within_third") == f"{len(SEARCH_SEEDS)}/{len(SEARCH_SEEDS)}",
        "seconds": {  # training phases: the sum of their trials' wall times
            "table": round(sum(r["wall_s"] for r in table["runs"].values())),
            "search": search.get("seconds"),
            "confirm": confirm.get("seconds"),
        },
    }
    if confirm:
        out_summary["confirmed"] = {
            m: {k: v[k] for k in ("mean", "std", "n", "distinct")}
            for m, v in confirm["methods"].items()
        }
        out_summary["seed_std_pooled"] = confirm["seed_std_pooled"]
    return out_summary


def machine() -> dict[str, str]:
    import optuna
    import ray
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def append_benchmarks(result: dict[str, Any], notes: str = "") -> None:
    m = machine()
    lines = [
        "",
        f"## Search efficiency ({m['date']}, bench/search_efficiency.py)",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), no GPU; torch {m['torch']}, ray {m['ray']}, "
        f"optuna {m['optuna']}. Tabular benchmark: {result['points']} grid points x "
        f"{result['epochs']} epochs trained once (seed 0) with smotune's trial function; "
        "methods replayed against the table in real Tune runs with smotune's searcher and "
        "scheduler; top-1 in points.",
        "",
        "| method | trial-epochs per run | trial-epochs to within 1 pt (per search seed) "
        "| reached | within 1/3 budget | confirmed top-1 (extra seeds) |",
        "|---|---|---|---|---|---|",
    ]
    grid = result["grid"]
    conf = result.get("confirmed", {})

    def c(name: str) -> str:
        v = conf.get(name)
        return "-" if not v else f"{v['mean']} ± {v['std']} (n={v['n']}, {v['distinct']} configs)"

    lines.append(
        f"| grid (random order, expected) | {grid['trial_epochs']} | "
        f"{grid['expected_trial_epochs_to_target']} | - | - | {c('grid')} |"
    )
    for name, v in result["methods"].items():
        lines.append(
            f"| {name} | {v['trial_epochs']} | {v['trial_epochs_to_target']} | {v['reached']} | "
            f"{v['within_third']} | {c(name)} |"
        )
    if "tpe_asha@third" in conf:
        lines.append(
            f"| tpe_asha, pick within 1/3 budget | - | - | - | - | {c('tpe_asha@third')} |"
        )
    lines += ["", notes.strip(), "", f"`{json.dumps(result)}`", ""]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(line for line in lines if line is not None) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase", choices=["table", "search", "confirm", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="2-point grid, 1 short epoch, temp dir")
    ap.add_argument("--out", type=Path, default=None, help="results dir (default bench/results)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    ap.add_argument("--samples", type=int, default=None, help="trials per search (default: N)")
    ap.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    ap.add_argument("--grid", type=json.loads, default=None, help="JSON {path: [values]}")
    ap.add_argument("--note", default="", help="a paragraph for the BENCHMARKS.md section")
    args = ap.parse_args()
    grid = args.grid or (QUICK_GRID if args.quick else GRID)
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="smotune-seb-quick-")) if args.quick else RESULTS
    )
    methods = args.methods.split(",")
    cfg = base_train(args.quick)
    if args.phase in ("table", "all"):
        phase_table(grid, cfg, out)
    if args.phase in ("search", "all"):
        phase_search(grid, cfg, out, methods, args.samples)
    if args.phase in ("confirm", "all"):
        phase_confirm(grid, cfg, out)
    if (out / "search_results.json").exists():
        result = summary(out)
        _write(out / "summary.json", result)
        print(json.dumps(result))
        if args.phase in ("confirm", "all") and not args.quick and not args.no_append:
            append_benchmarks(result, args.note)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
