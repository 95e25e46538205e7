"""GPU-hours of a sweep file at an assumed training throughput per GPU.

    python cluster/budget.py search_spaces/rocket-cc3m.yaml --per-gpu 600

The arithmetic, printed line by line: global samples per epoch
(``data.samples_per_epoch`` x ``workers.num``), seconds per epoch on the
trial's GPUs (plus a zero-shot eval on rank 0 while the other ranks wait),
GPU-hours of one trial that runs every epoch, of the whole sweep without early
stopping, and with ASHA. ASHA's saving is simulated with Ray's rule
(``_Bracket.on_result``: at each rung a trial goes on only if its score reaches
the (1 - 1/reduction) quantile of the scores already recorded there), the
sweep's trial count and concurrency, and trials whose score is a fixed quality
plus epoch noise that shrinks as 1/sqrt(epoch). The throughput is an
assumption: measure it with a one-epoch ``smotune train`` on one GPU node
(its ``samples_per_s`` divided by the GPUs) and run this again.
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from smotune.config import SweepConfig, load_sweep  # noqa: E402
from smotune.errors import EXIT_USER_ERROR, UserError  # noqa: E402


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


def budget(sweep: SweepConfig, per_gpu: float, eval_s: float, startup_s: float) -> list[str]:
    """The cost of ``sweep`` as lines of arithmetic (see the module docstring)."""
    t = sweep.train
    if t.data.samples_per_epoch is None:
        raise UserError(
            sweep.name, "train.data.samples_per_epoch", "is not set", "set the epoch length"
        )
    if t.workers.gpus <= 0:
        raise UserError(
            sweep.name, "train.workers.gpus", "is 0: this counts GPU-hours", "set it above 0"
        )
    gpus = t.workers.num * t.workers.gpus
    samples = t.data.samples_per_epoch * t.workers.num
    epoch_s = samples / (per_gpu * gpus) + eval_s
    epoch_h = epoch_s * gpus / 3600
    start_h = startup_s * gpus / 3600
    trial_h = t.epochs * epoch_h + start_h
    n = sweep.search.samples
    lines = [
        f"samples/epoch: {t.data.samples_per_epoch:,} per worker x {t.workers.num} workers"
        f" = {samples:,}",
        f"epoch: {samples:,} / ({per_gpu:g} samples/s/GPU x {gpus:g} GPUs) + {eval_s:g} s"
        f" zero-shot eval = {epoch_s:,.0f} s = {epoch_h:.2f} GPU-h",
        f"one trial, all {t.epochs} epochs: {t.epochs} x {epoch_h:.2f} + {start_h:.2f} start-up"
        f" ({startup_s:g} s) = {trial_h:.1f} GPU-h",
        f"{n} trials without early stopping: {n * trial_h:,.0f} GPU-h",
    ]
    asha = sweep.schedule.asha
    if asha is None:
        lines.append(f"total: {n * trial_h:,.0f} GPU-h")
        total = n * trial_h
    else:
        grace = min(asha.grace, t.epochs)
        rungs = asha_rungs(t.epochs, grace, asha.reduction)
        mean = simulate_asha(n, sweep.search.concurrent, t.epochs, grace, asha.reduction)
        total = n * (mean * epoch_h + start_h)
        lines += [
            f"ASHA (rungs at epochs {', '.join(map(str, rungs))}; reduction {asha.reduction:g};"
            f" {sweep.search.concurrent} at a time): {mean:.2f} epochs/trial on average",
            f"total with ASHA: {n} x ({mean:.2f} x {epoch_h:.2f} + {start_h:.2f})"
            f" = {total:,.0f} GPU-h ({100 * (1 - total / (n * trial_h)):.0f}% saved)",
        ]
    confirm = sweep.search.confirm
    if confirm is not None:
        runs = (confirm.top + 1) * confirm.seeds
        total += runs * trial_h
        lines.append(
            f"confirm: (baseline + top {confirm.top}) x {confirm.seeds} seeds = {runs} full"
            f" trials x {trial_h:.1f} = {runs * trial_h:,.0f} GPU-h; sweep total {total:,.0f} GPU-h"
        )
    slots = sweep.search.concurrent * gpus
    lines.append(
        f"wall clock on {slots:g} GPUs ({sweep.search.concurrent} trials x {gpus:g}):"
        f" about {total / slots:.1f} h"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file")
    parser.add_argument("--per-gpu", type=float, required=True, help="training samples/s per GPU")
    parser.add_argument("--eval-s", type=float, default=30.0, help="zero-shot eval per epoch")
    parser.add_argument("--startup-s", type=float, default=120.0, help="start-up per trial")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_file, check_paths=False)
        lines = budget(sweep, args.per_gpu, args.eval_s, args.startup_s)
    except UserError as err:
        print(f"budget: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
