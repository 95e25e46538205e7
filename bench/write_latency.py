"""How long an MLflow write waits while the parent's plots are redrawn: before and after.

A sweep's tracking journal is applied by one writer thread. Before the drawer
(issue 26 item 4) a ``plots`` op was drawn on that thread, and every write queued
behind it waited for the drawing. This bench logs a sweep of ``--trials`` trials
(3 epochs each, so fANOVA's importances are drawn from 10 completed trials on) to a
fresh sqlite store through smotune's own Tune callback, then asks for a redraw and at
once logs ``--epochs`` epoch results of one more trial, and measures, per write, the
time from the callback's hook to the writer marking it done. The same measurement runs
in one process per code version: this tree, and ``--before`` (a git revision, checked
out in a temporary worktree), so their ratio is taken in one run on one machine.

Prints one JSON line and, unless ``--no-append``, appends a section to BENCHMARKS.md.

    .venv/bin/python bench/write_latency.py               # before = 69a12ea, the landed main
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "69a12ea"  # the landed main before the drawer

SWEEP = """\
name: latency
train:
  data: {{train: "data/synth/train-{{0000..0003}}.tar", zeroshot: data/synth/zeroshot}}
  epochs: 3
space:
  loss.label_smoothing: {{uniform: [0.0, 0.3]}}
  optim.weight_decay: {{loguniform: [0.01, 1.0]}}
search: {{algo: random, samples: {trials}, concurrent: 1, seed: 0}}
schedule: {{asha: {{grace: 1, reduction: 2}}}}
tracking: {{uri: "{uri}"}}
"""


def result(trial: int, epoch: int) -> dict:
    return {
        "epoch": epoch,
        "zeroshot_top1": round(0.3 + 0.01 * trial * (trial % 3) + 0.02 * epoch, 6),
        "zeroshot_top5": 0.9,
        "train_loss": 2.0 - 0.1 * epoch,
        "lr": 1e-3,
        "samples_per_s": 100.0,
        "data_skipped": 0,
    }


def measure(trials: int, epochs: int) -> dict:
    """One code version's measurement (it runs in the process of that version's tree)."""
    import yaml
    from ray import tune
    from ray.tune.experiment import Trial

    from smotune import tracking
    from smotune.config import SweepConfig
    from smotune.tracking.journal import live

    tmp = Path(tempfile.mkdtemp(prefix="smotune-latency-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    text = SWEEP.format(trials=trials + 1, uri=uri)
    sweep = SweepConfig.model_validate(yaml.safe_load(text))
    import os

    os.chdir(tmp)
    callback = tracking.MlflowSweepCallback(sweep, text)
    tune.register_trainable("latency", lambda config: None)

    def make(i: int) -> Trial:
        wd = 0.01 * 1.3**i
        return Trial(
            "latency",
            config={"loss.label_smoothing": 0.02 * i, "optim.weight_decay": wd},
            trial_id=f"t{i:07d}",
        )

    done: list[Trial] = []
    for i in range(trials):
        t = make(i)
        done.append(t)
        callback.on_trial_start(0, done, t)
        for e in range(1, 4):
            callback.on_trial_result(0, done, t, result(i, e))
        callback.on_trial_complete(0, done, t)
    assert callback.flush(600)
    journal = live(tracking.sweep_journal_path(sweep))
    settle = getattr(journal, "drawn_all", None)
    if settle is not None:
        assert settle(600)

    # a redraw asked for, then one trial's epochs logged at once behind it
    t = make(trials)
    done.append(t)
    marks: list[tuple[int, float]] = []
    watch = threading.Event()
    finished: dict[int, float] = {}

    def watcher() -> None:
        while not watch.is_set():
            n = journal.state.done
            now = time.perf_counter()
            for m, _ in marks:
                if m <= n and m not in finished:
                    finished[m] = now
            time.sleep(0.002)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    start = time.perf_counter()
    journal.append("plots", parent=journal.state.parent_key)
    callback.on_trial_start(0, done, t)
    marks.append((journal.state.ops[-1]["n"], time.perf_counter()))
    for e in range(1, epochs + 1):
        callback.on_trial_result(0, done, t, result(trials, e))
        marks.append((journal.state.ops[-1]["n"], time.perf_counter()))
    assert callback.flush(600)
    writes_s = time.perf_counter() - start
    if settle is not None:
        assert settle(600)
    drawn_s = time.perf_counter() - start
    time.sleep(0.05)
    watch.set()
    thread.join()
    waits = [finished[n] - at for n, at in marks]
    return {
        "writes": len(waits),
        "wait_median_s": statistics.median(waits),
        "wait_max_s": max(waits),
        "all_written_s": writes_s,
        "redraw_done_s": drawn_s,
    }


def run_version(tree: Path, trials: int, epochs: int) -> dict:
    """``measure`` in a process importing smotune from ``tree``."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(tree)!r}); "
        f"sys.path.insert(0, {str(ROOT / 'bench')!r}); import write_latency as w; "
        f"print('RESULT', json.dumps(w.measure({trials}, {epochs})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=False
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"measuring {tree} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--before", default=BEFORE, help="git revision of the code before (default %(default)s)"
    )
    ap.add_argument("--trials", type=int, default=12, help="trials logged before the redraw")
    ap.add_argument("--epochs", type=int, default=20, help="epoch results logged behind the redraw")
    ap.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    import machine

    with tempfile.TemporaryDirectory(prefix="smotune-before-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.before],
            check=True,
        )
        try:
            before = run_version(tree, args.trials, args.epochs)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )
    after = run_version(ROOT, args.trials, args.epochs)
    out = {
        "bench": "write_latency",
        "trials": args.trials,
        "epochs": args.epochs,
        "before": {"rev": args.before, **before},
        "after": after,
        "wait_max_ratio": after["wait_max_s"] / before["wait_max_s"],
        "machine": machine.describe(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    print(json.dumps(out))
    if args.no_append:
        return
    lines = [
        f"## MLflow writes during a plot redraw ({out['date']}, bench/write_latency.py)",
        "",
        f"{out['machine']}. A sweep of {args.trials} trials logged to a fresh sqlite store, then a "
        f"redraw asked for and {args.epochs} epoch results of one more trial logged behind it; "
        "each write's wait from the callback's hook to the writer marking it done.",
        "",
        "| code | writes | median wait (s) | longest wait (s) | all written (s) "
        "| redraw uploaded (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in (
        ("before (" + args.before + ", drawn on the writer's thread)", before),
        ("after (the drawer's thread)", after),
    ):
        lines.append(
            f"| {label} | {r['writes']} | {r['wait_median_s']:.3f} | {r['wait_max_s']:.3f} | "
            f"{r['all_written_s']:.2f} | {r['redraw_done_s']:.2f} |"
        )
    lines += ["", f"`{json.dumps(out)}`", ""]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
