"""GPU-hours of a sweep file at an assumed training throughput per GPU.

    python cluster/budget.py search_spaces/rocket-cc3m.yaml --per-gpu 600

The arithmetic, printed line by line: global samples per epoch
(``data.samples_per_epoch`` x ``workers.num``), seconds per epoch on the
trial's GPUs (plus a zero-shot eval on rank 0 while the other ranks wait),
GPU-hours of one trial that runs every epoch, of the whole sweep without early
stopping, and with ASHA, and the checkpoint bytes they write. ASHA's saving is
simulated with Ray's rule (``_Bracket.on_result``: at each rung a trial goes on
only if its score reaches the (1 - 1/reduction) quantile of the scores already
recorded there), the sweep's trial count and concurrency, and trials whose score is a fixed quality
plus epoch noise that shrinks as 1/sqrt(epoch). The confirm phase's runs are full trials;
the transfer phase's (``search.transfer``) are full trials of ``train:`` with its
overrides applied (their epochs, samples per epoch, workers and model). The throughput is an
assumption: measure it with a one-epoch ``smotune train`` on one GPU node
(its ``samples_per_s`` divided by the GPUs) and run this again.

Two costs come from ``bench/sweep_overhead.py``'s measured run
(``bench/results/sweep_overhead.json``): a trial's fixed cost (Ray's trial and
worker-group start, imports, model build, the end: everything but its epochs),
charged on every trial's GPUs unless ``--startup-s`` is given, and a
checkpoint's bytes per model parameter (fp32 model + AdamW's two moments; the
last epoch's holds the model only), scaled to the sweep's architecture by its
parameter count. Rank 0 writes each epoch's checkpoint while the other ranks
wait, at an assumed ``--write-mb-s``, so its time joins every epoch's.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from smotune.config import (  # noqa: E402
    ModelConfig,
    SweepConfig,
    TrainConfig,
    load_sweep,
    transfer_train,
)
from smotune.errors import EXIT_USER_ERROR, UserError  # noqa: E402

OVERHEAD_FILE = ROOT / "bench" / "results" / "sweep_overhead.json"


class Overhead(NamedTuple):
    """What a trial costs besides its epochs' training and eval (``bench/sweep_overhead.py``)."""

    fixed_s: float  # per trial, on its GPUs: start-up and end
    bytes_per_param: float  # a checkpoint with the optimizer state (every epoch but the last)
    last_bytes_per_param: float  # the last epoch's checkpoint (the model only)
    source: str = "bench/sweep_overhead.py"


def measured_overhead(path: Path = OVERHEAD_FILE) -> Overhead:
    """The fixed cost and checkpoint bytes per parameter of ``bench/sweep_overhead.py``'s run
    (medians over its repeats)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            str(path),
            "",
            f"cannot read the measured overhead: {err}",
            "run bench/sweep_overhead.py, or pass --startup-s and --bytes-per-param",
        ) from None
    ratios = [pair["ratios"] for pair in result["pairs"]]
    return Overhead(
        fixed_s=float(result["fixed_s"]),
        bytes_per_param=_median([r["checkpoint_bytes_per_param"] for r in ratios]),
        last_bytes_per_param=_median([r["checkpoint_bytes_per_param_last_epoch"] for r in ratios]),
        source=f"bench/sweep_overhead.py, {result.get('date', 'undated')}",
    )


def _median(values: list[float]) -> float:
    return float(np.median(values))


def count_params(arch: str) -> int:
    """Parameters of the open_clip model ``arch`` (built on the CPU, randomly initialised)."""
    import logging

    from smotune import model

    logging.disable(logging.WARNING)  # open_clip: "No pretrained weights loaded" (none wanted)
    try:
        return sum(p.numel() for p in model.create(ModelConfig(arch=arch)).parameters())
    finally:
        logging.disable(logging.NOTSET)


def asha_rungs(max_t: int, grace: int, reduction: float) -> list[int]:
    """The epochs at which Ray's ASHA compares trials (one bracket)."""
    count = int(math.log(max_t / grace) / math.log(reduction) + 1)
    return [int(grace * reduction**k) for k in range(count)]


def simulate_asha(
    trials: int,
    concurrent: int,
    max_t: int,
    grace: int,
    reduction: float,
    runs: int = 1000,
    noise: float = 0.3,
    seed: int = 0,
) -> float:
    """Mean epochs one trial runs under asynchronous ASHA (``max_t`` without stopping)."""
    rng = np.random.default_rng(seed)
    rungs = asha_rungs(max_t, grace, reduction)
    quantile = (1 - 1 / reduction) * 100
    means = []
    for _ in range(runs):
        quality = rng.normal(size=trials)
        recorded: dict[int, list[float]] = {r: [] for r in rungs}
        epochs = [0] * trials
        events = [(1.0, i) for i in range(min(concurrent, trials))]
        started = len(events)
        while events:
            t, i = heapq.heappop(events)
            epochs[i] += 1
            e = epochs[i]
            score = quality[i] + noise * rng.normal() / math.sqrt(e)
            stop = e >= max_t
            if e in recorded:
                seen = recorded[e]
                if seen and score < np.percentile(seen, quantile):
                    stop = True
                seen.append(score)
            if not stop:
                heapq.heappush(events, (t + 1, i))
            elif started < trials:
                heapq.heappush(events, (t + 1, started))
                started += 1
        means.append(sum(epochs) / trials)
    return float(np.mean(means))


class TrialCost(NamedTuple):
    """What one run of a train config costs (see :func:`trial_cost`)."""

    gpus: float
    samples: int  # global samples per epoch
    ckpt: float  # bytes of a checkpoint with AdamW's state
    last: float  # bytes of the last epoch's (the model only)
    write_s: float
    epoch_s: float
    epoch_h: float  # GPU-hours of an epoch
    start_h: float  # GPU-hours of the fixed cost
    trial_h: float  # GPU-hours of a run of every epoch
    full_bytes: float  # bytes a run of every epoch writes


def trial_cost(
    t: TrainConfig,
    per_gpu: float,
    eval_s: float,
    overhead: Overhead,
    params: int,
    write_mb_s: float,
    field: str = "train.",
) -> TrialCost:
    """The cost of one run of ``t`` (``field``: where ``t`` is in the sweep file, for errors)."""
    if t.data.samples_per_epoch is None:
        raise UserError(
            "sweep", f"{field}data.samples_per_epoch", "is not set", "set the epoch length"
        )
    if t.workers.gpus <= 0:
        raise UserError(
            "sweep", f"{field}workers.gpus", "is 0: this counts GPU-hours", "set it above 0"
        )
    gpus = t.workers.num * t.workers.gpus
    samples = t.data.samples_per_epoch * t.workers.num
    ckpt = params * overhead.bytes_per_param  # every epoch but a finished run's last
    last = params * overhead.last_bytes_per_param
    write_s = ckpt / (write_mb_s * 1e6)
    epoch_s = samples / (per_gpu * gpus) + eval_s + write_s
    epoch_h = epoch_s * gpus / 3600
    start_h = overhead.fixed_s * gpus / 3600
    trial_h = t.epochs * epoch_h + start_h
    full_bytes = (t.epochs - 1) * ckpt + last  # one run of every epoch writes
    return TrialCost(
        gpus, samples, ckpt, last, write_s, epoch_s, epoch_h, start_h, trial_h, full_bytes
    )


def estimate(
    sweep: SweepConfig,
    per_gpu: float,
    eval_s: float,
    overhead: Overhead,
    params: int,
    write_mb_s: float,
    transfer_params: int | None = None,
) -> dict:
    """The cost of ``sweep``: ``lines`` of arithmetic (see the module docstring) and the
    numbers they print (``total_gpu_h``, ``written_bytes``, ...). ``transfer_params``: the
    parameters of the transfer phase's model (default: ``params``, the same arch)."""
    t = sweep.train
    try:
        c = trial_cost(t, per_gpu, eval_s, overhead, params, write_mb_s)
    except UserError as err:
        raise UserError(sweep.name, err.field, err.problem, err.fix) from None
    gpus, samples, ckpt, last, write_s = c.gpus, c.samples, c.ckpt, c.last, c.write_s
    epoch_s, epoch_h, start_h, trial_h = c.epoch_s, c.epoch_h, c.start_h, c.trial_h
    n = sweep.search.samples
    lines = [
        f"samples/epoch: {t.data.samples_per_epoch:,} per worker x {t.workers.num} workers"
        f" = {samples:,}",
        f"checkpoint: {params / 1e6:.1f} M params x {overhead.bytes_per_param:.2f} B"
        f" = {ckpt / 1e9:.2f} GB (model + AdamW's 2 moments; the last epoch's"
        f" {last / 1e9:.2f} GB), {write_s:.0f} s at {write_mb_s:g} MB/s",
        f"epoch: {samples:,} / ({per_gpu:g} samples/s/GPU x {gpus:g} GPUs) + {eval_s:g} s"
        f" zero-shot eval + {write_s:.0f} s checkpoint = {epoch_s:,.0f} s = {epoch_h:.2f} GPU-h",
        f"one trial, all {t.epochs} epochs: {t.epochs} x {epoch_h:.2f} + {start_h:.2f} fixed"
        f" ({overhead.fixed_s:g} s a trial) = {trial_h:.1f} GPU-h",
        f"{n} trials without early stopping: {n * trial_h:,.0f} GPU-h",
    ]
    full_bytes = c.full_bytes
    asha = sweep.schedule.asha
    if asha is None:
        lines.append(f"total: {n * trial_h:,.0f} GPU-h")
        total = n * trial_h
        written = n * full_bytes
        trial_epochs = n * t.epochs
    else:
        grace = min(asha.grace, t.epochs)
        rungs = asha_rungs(t.epochs, grace, asha.reduction)
        mean = simulate_asha(n, sweep.search.concurrent, t.epochs, grace, asha.reduction)
        total = n * (mean * epoch_h + start_h)
        written = n * mean * ckpt  # an upper bound: a trial that completes writes less last
        trial_epochs = n * mean
        lines += [
            f"ASHA (rungs at epochs {', '.join(map(str, rungs))}; reduction {asha.reduction:g};"
            f" {sweep.search.concurrent} at a time): {mean:.2f} epochs/trial on average",
            f"total with ASHA: {n} x ({mean:.2f} x {epoch_h:.2f} + {start_h:.2f})"
            f" = {total:,.0f} GPU-h ({100 * (1 - total / (n * trial_h)):.0f}% saved)",
        ]
    kept = n * ckpt  # Ray keeps each trial's latest checkpoint (at most one with AdamW's state)
    confirm = sweep.search.confirm
    if confirm is not None:
        runs = (confirm.top + 1) * confirm.seeds
        total += runs * trial_h
        written += runs * full_bytes
        kept += runs * last
        trial_epochs += runs * t.epochs
        lines.append(
            f"confirm: (baseline + top {confirm.top}) x {confirm.seeds} seeds = {runs} full"
            f" trials x {trial_h:.1f} = {runs * trial_h:,.0f} GPU-h; sweep total {total:,.0f} GPU-h"
        )
    transfer = sweep.search.transfer
    if transfer is not None:
        high = transfer_train(sweep, sweep.name)
        h_params = params if transfer_params is None else transfer_params
        try:
            hc = trial_cost(
                high, per_gpu, eval_s, overhead, h_params, write_mb_s, "search.transfer.overrides."
            )
        except UserError as err:
            raise UserError(sweep.name, err.field, err.problem, err.fix) from None
        runs = (transfer.top + 1) * transfer.seeds
        total += runs * hc.trial_h
        written += runs * hc.full_bytes
        kept += runs * hc.last
        trial_epochs += runs * high.epochs
        changed = ", ".join(f"{p} {v}" for p, v in transfer.overrides.items())
        lines += [
            f"transfer fidelity ({changed}): {hc.samples:,} samples/epoch, {hc.epoch_h:.2f}"
            f" GPU-h an epoch, all {high.epochs} epochs + fixed = {hc.trial_h:.1f} GPU-h a run",
            f"transfer: (baseline + top {transfer.top}) x {transfer.seeds} seeds = {runs} runs"
            f" x {hc.trial_h:.1f} = {runs * hc.trial_h:,.0f} GPU-h; sweep total"
            f" {total:,.0f} GPU-h",
        ]
    lines.append(
        f"checkpoints written: {written / 1e12:.2f} TB (a full trial {full_bytes / 1e9:.0f} GB);"
        f" kept in storage.path at the end: at most {kept / 1e9:,.0f} GB"
    )
    slots = sweep.search.concurrent * gpus
    lines.append(
        f"wall clock on {slots:g} GPUs ({sweep.search.concurrent} trials x {gpus:g}):"
        f" about {total / slots:.1f} h"
    )
    return {
        "lines": lines,
        "total_gpu_h": total,
        "trial_epochs": trial_epochs,  # epochs trained by all runs, confirm and transfer included
        "written_bytes": written,
        "kept_bytes": kept,
    }


def budget(
    sweep: SweepConfig,
    per_gpu: float,
    eval_s: float,
    overhead: Overhead,
    params: int,
    write_mb_s: float,
) -> list[str]:
    """The cost of ``sweep`` as lines of arithmetic (:func:`estimate`)."""
    return estimate(sweep, per_gpu, eval_s, overhead, params, write_mb_s)["lines"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file")
    parser.add_argument("--per-gpu", type=float, required=True, help="training samples/s per GPU")
    parser.add_argument("--eval-s", type=float, default=30.0, help="zero-shot eval per epoch")
    parser.add_argument(
        "--startup-s", type=float, default=None, help="fixed cost per trial (default: measured)"
    )
    parser.add_argument(
        "--write-mb-s", type=float, default=100.0, help="checkpoint write speed to storage.path"
    )
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_file, check_paths=False)
        overhead = measured_overhead()
        if args.startup_s is not None:
            overhead = Overhead(
                args.startup_s, overhead.bytes_per_param, overhead.last_bytes_per_param, "given"
            )
        params = count_params(sweep.train.model.arch)
        transfer_params = None
        if sweep.search.transfer is not None:  # model.arch may be one of its overrides
            arch = transfer_train(sweep, args.sweep_file).model.arch
            transfer_params = params if arch == sweep.train.model.arch else count_params(arch)
        lines = estimate(
            sweep, args.per_gpu, args.eval_s, overhead, params, args.write_mb_s, transfer_params
        )["lines"]
    except UserError as err:
        print(f"budget: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
