"""How much of a finished sweep's wall time trained: the demo's, read back from MLflow.

Issue 15's first goal is about ``make demo`` as a whole, not one trial: the
share of the sweep's wall time its trials spent in their training loops. This
reads the latest sweep of a sweep file's experiment from the file's own
tracking store (``smotune.tracking.sweep_time``): the parent run's start to
end (Ray's start, the search, the confirm phase, the verdict), each trial
run's wall, and each epoch's ``train_s`` (the training loop the engine timed:
the loader's start and the steps). Nothing is estimated.

    make demo && .venv/bin/python bench/demo_share.py [search_spaces/demo.yaml] [--record]

Prints JSON; ``--record`` writes ``bench/results/demo_share.json`` and appends
a section to BENCHMARKS.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import machine  # noqa: E402  (bench/machine.py)

from smotune import tracking  # noqa: E402
from smotune.config import load_sweep  # noqa: E402

RESULT = ROOT / "bench" / "results" / "demo_share.json"
GOAL = 0.70  # issue 15: >= 70% of the demo's wall time in training


def _shown(path: Path) -> str:
    """The sweep file as the record names it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def measure(sweep_file: Path) -> dict:
    sweep = load_sweep(sweep_file, check_paths=False)
    timed = tracking.sweep_time(sweep.tracking.uri, sweep.experiment)
    train = sweep.train
    phases: dict[str, dict[str, float]] = {}
    for t in timed.trials:
        p = phases.setdefault(t.phase, {"trials": 0, "epochs": 0, "train_s": 0.0, "wall_s": 0.0})
        p["trials"] += 1
        p["epochs"] += t.epochs
        p["train_s"] += t.train_s
        p["wall_s"] += t.wall_s
    in_trials = sum(t.wall_s for t in timed.trials)
    return {
        "bench": "demo_share",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine.describe(),
        "sweep": _shown(sweep_file),
        "run_id": timed.run_id,
        "steps_per_epoch": (train.data.samples_per_epoch or 0) // train.optim.batch_size,
        "epochs": train.epochs,
        "workers": train.workers.num,
        "goal_train_share_min": GOAL,
        "wall_s": round(timed.wall_s, 1),
        "train_s": round(timed.train_s, 1),
        "train_share": round(timed.train_share, 3),
        "trials_wall_s": round(in_trials, 1),
        "outside_trials_s": round(timed.wall_s - in_trials, 1),
        "phases": {k: {n: round(v, 1) for n, v in p.items()} for k, p in phases.items()},
        "trials": [
            {
                "trial": t.trial_id,
                "phase": t.phase,
                "status": t.status,
                "epochs": t.epochs,
                "train_s": round(t.train_s, 1),
                "wall_s": round(t.wall_s, 1),
            }
            for t in timed.trials
        ],
    }


def _append(result: dict) -> None:
    met = "met" if result["train_share"] >= result["goal_train_share_min"] else "not met"
    lines = [
        "",
        f"## Demo sweep time ({result['date']}, bench/demo_share.py)",
        "",
        f"Machine: {result['machine']}. The latest sweep of {result['sweep']} (MLflow parent"
        f" run {result['run_id']}): {result['epochs']} epochs of {result['steps_per_epoch']}"
        f" steps, {result['workers']} workers a trial. Seconds.",
        "",
        "| trial | phase | status | epochs | training loop | run wall |",
        "|---|---|---|---|---|---|",
    ]
    for t in result["trials"]:
        lines.append(
            f"| {t['trial']} | {t['phase']} | {t['status']} | {t['epochs']} | {t['train_s']:.1f}"
            f" | {t['wall_s']:.1f} |"
        )
    lines += [
        "",
        f"Sweep wall {result['wall_s']:.1f} s: trial runs {result['trials_wall_s']:.1f} s,"
        f" outside them (Ray's start, Tuner set-up between phases, the verdict)"
        f" {result['outside_trials_s']:.1f} s. Training loops {result['train_s']:.1f} s ="
        f" **{result['train_share']:.1%}** of the wall (goal >= {GOAL:.0%}: {met}).",
        "",
    ]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", nargs="?", default=str(ROOT / "search_spaces" / "demo.yaml"))
    ap.add_argument("--record", action="store_true", help="write the JSON and a BENCHMARKS row")
    args = ap.parse_args()
    result = measure(Path(args.sweep))
    print(json.dumps(result))
    if args.record:
        RESULT.write_text(json.dumps(result, indent=1) + "\n")
        _append(result)


if __name__ == "__main__":
    main()
