"""Does a sweep's order at the demo's fidelity hold at 4 times its samples an epoch? Measured.

For each knob set (``demo``: the demo's space, label smoothing, weight decay and text
dropout, the regularisers; ``lr``: the learning rate alone, a knob with large effects,
as a contrast) this runs one real smotune sweep on the demo's synthetic data: a random
search of ``--configs`` configs (all complete: no ASHA), a confirm phase of the baseline
and all ``--configs - 1`` searched ones at ``--seeds`` seeds, and a transfer phase of the
same configs at ``--factor`` times ``data.samples_per_epoch``, ``--seeds`` more seeds. It
reads the sweep back from MLflow (what ``smotune report`` reads) and reports:

- the transfer phase as the sweep logged it: Kendall tau and Spearman rho of the
  configs' means at the two fidelities, decision accuracy with its pair count, whether
  the winner held, the flipped pairs within the seed noise, the verdict there;
- the same per seed: tau and decision accuracy between one seed's values at the demo's
  fidelity and one seed's at the larger (every pairing of a low and a high seed), their
  mean, min and max: how much one seed moves them;
- the rung check on the same runs (the demo's ASHA: grace 2, reduction 2, so the rung at
  epoch 2 of 3) over the demo-fidelity runs that ran every epoch.

With 8 configs there are 28 pairs and tau moves in steps of 1/14: a tau of +0.5 from
one sweep is weak evidence; the per-seed spread says how weak.

Prints one JSON line and appends a section to BENCHMARKS.md.

    nice -n 19 .venv/bin/python bench/transfer.py            # 8 configs x 2 seeds, both knobs
    nice -n 19 .venv/bin/python bench/transfer.py --configs 2 --seeds 2 --knobs lr \\
        --samples-per-epoch 128 --epochs 2 --workers 1 --no-append   # a quick check it works
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from scipy import stats as sps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import machine  # noqa: E402  (bench/machine.py)

from smotune import config, plots, rungs, sweep  # noqa: E402
from smotune.tracking.history import read_sweep  # noqa: E402

DEMO = ROOT / "search_spaces" / "demo.yaml"
KNOBS = {
    "demo": None,  # the demo's own space
    "lr": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
}
RUNG = (2, 2.0)  # the demo's ASHA: grace 2, reduction 2


def sweep_file(knob: str, args: argparse.Namespace, work: Path, name: str) -> Path:
    """The demo's sweep file, every config run to the end, confirmed and transferred."""
    data = yaml.safe_load(DEMO.read_text())
    train = data["train"]
    for key in ("train", "zeroshot"):  # the demo's data (data/synth/...), read from anywhere
        train["data"][key] = str(args.data / Path(train["data"][key]).relative_to("data/synth"))
    if args.samples_per_epoch:
        train["data"]["samples_per_epoch"] = args.samples_per_epoch
    if args.epochs:
        train["epochs"] = args.epochs
    if args.workers:
        train["workers"]["num"] = args.workers
    if KNOBS[knob] is not None:
        data["space"] = KNOBS[knob]
    high = train["data"]["samples_per_epoch"] * args.factor
    rivals = args.configs - 1
    data["name"] = name
    data["search"].update(
        algo="random",
        samples=args.configs,
        include_default=False,
        seed=args.search_seed,
        confirm={"top": rivals, "seeds": args.seeds},
        transfer={
            "overrides": {"data.samples_per_epoch": high},
            "top": rivals,
            "seeds": args.seeds,
        },
    )
    data["schedule"] = {"asha": None}  # every config runs every epoch: all can be confirmed
    data["tracking"] = {"uri": args.tracking_uri or f"sqlite:///{work}/mlflow.db"}
    data["storage"] = {"path": str(work / "runs")}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def per_seed(low: dict[str, dict[int, float]], high: dict[str, dict[int, float]]):
    """Tau and decision accuracy between one low seed's and one high seed's values, for every
    pairing of seeds (configs that have both)."""
    taus, accuracies = [], []
    low_seeds = sorted({s for v in low.values() for s in v})
    high_seeds = sorted({s for v in high.values() for s in v})
    for a, b in itertools.product(low_seeds, high_seeds):
        both = [k for k in high if a in low.get(k, {}) and b in high[k]]
        x, y = [low[k][a] for k in both], [high[k][b] for k in both]
        if len(both) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
            continue
        taus.append(float(sps.kendalltau(x, y).statistic))
        pairs = list(itertools.combinations(range(len(both)), 2))
        held = sum((x[i] - x[j]) * (y[i] - y[j]) > 0 for i, j in pairs)
        accuracies.append(held / len(pairs))
    return taus, accuracies


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def measure(knob: str, args: argparse.Namespace, work: Path) -> dict:
    name = f"bench-transfer-{knob}-{int(time.time())}"
    path = sweep_file(knob, args, work, name)
    cfg = config.load_sweep(path)
    started = time.monotonic()
    with contextlib.chdir(work):  # the sweep writes best.yaml where it runs
        outcome = sweep.run_sweep(cfg, path)
    wall = time.monotonic() - started
    data = read_sweep(cfg.tracking.uri, cfg.experiment, str(path))
    found = plots.transfer_of(data)
    if not outcome.finished or found is None:
        raise SystemExit(f"bench/transfer.py: the {knob} sweep did not finish its transfer phase")
    low = {g.label: g.values for g in found.low}
    high = {g.label: g.values for g in found.high}
    taus, accuracies = per_seed(low, high)
    lowfi = plots.SweepData(**{**data.__dict__, "asha": RUNG})  # the demo's rung on these runs
    checks = rungs.sweep_checks(lowfi)

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {
        "knob": knob,
        "space": list(data.space),
        "configs": len(found.ranked),
        "pairs": len(found.pairs),
        "tau": finite(found.tau),
        "rho": finite(found.rho),
        "decision_accuracy": finite(found.accuracy),
        "winner_held": found.held,
        "discordant": len(found.discordant),
        "discordant_within_noise": len(found.within_noise),
        "verdict_there": found.verdict.verdict,
        "per_seed_tau": spread(taus),
        "per_seed_accuracy": spread(accuracies),
        "means": {g.label: [lo.mean, g.mean] for lo, g in zip(found.low, found.high, strict=True)},
        "rung_check": [c.words() for c in checks],
        "lines": found.lines(data.metric),
        "fidelity": found.fidelity,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=8, help="configs transferred (baseline incl.)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per config at each fidelity")
    ap.add_argument("--factor", type=int, default=4, help="samples an epoch at the larger")
    ap.add_argument("--knobs", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    ap.add_argument("--samples-per-epoch", type=int, help="instead of the demo's")
    ap.add_argument("--epochs", type=int, help="instead of the demo's")
    ap.add_argument("--workers", type=int, help="instead of the demo's workers.num")
    ap.add_argument("--search-seed", type=int, default=0)
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data" / "synth",
        help="the demo's synthetic data (`smotune data synth --out DIR`)",
    )
    ap.add_argument("--tracking-uri", help="default: sqlite in a temporary folder")
    ap.add_argument("--no-append", action="store_true", help="print only")
    args = ap.parse_args()
    if args.configs < 2 or args.seeds < 2:
        raise SystemExit("bench/transfer.py: --configs and --seeds must be at least 2")
    if not (args.data / "zeroshot").is_dir():
        raise SystemExit(
            f"bench/transfer.py: no demo data in {args.data}: run `smotune data synth --out "
            f"{args.data}` (or pass --data)"
        )
    with tempfile.TemporaryDirectory(prefix="smotune-bench-transfer-") as tmp:
        results = [measure(knob, args, Path(tmp)) for knob in args.knobs]
    result = {
        "bench": "transfer",
        "configs": args.configs,
        "seeds": args.seeds,
        "factor": args.factor,
        "knobs": results,
    }
    print(json.dumps(result))
    if not args.no_append:
        _append(result)


def _f(value: float | None, fmt: str = "+.2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _append(result: dict) -> None:
    when = datetime.now(UTC).date().isoformat()
    lines = [
        f"## Transfer: the demo's fidelity against {result['factor']}x its samples an epoch "
        f"({when}, bench/transfer.py)",
        "",
        f"Machine: {machine.describe()}. One smotune sweep per knob set on the demo's "
        f"synthetic data: {result['configs']} configs (the baseline and "
        f"{result['configs'] - 1} random draws, all run to the end), {result['seeds']} seeds "
        "each at both fidelities. tau and decision accuracy of the configs' means; per seed: "
        "between one seed's values at each fidelity, over every pairing of seeds (mean "
        "[min, max]). With so few configs one sweep's tau is weak evidence: read it with its "
        "pairs and the per-seed spread.",
        "",
        "| knobs | configs (pairs) | tau | rho | decision accuracy | winner held | flipped "
        "(in noise) | verdict there | tau per seed | accuracy per seed | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["knobs"]:
        st, sa = r["per_seed_tau"], r["per_seed_accuracy"]
        lines.append(
            f"| {r['knob']} ({', '.join(r['space'])}) | {r['configs']} ({r['pairs']}) | "
            f"{_f(r['tau'])} | {_f(r['rho'])} | {_f(r['decision_accuracy'], '.0%')} | "
            f"{r['winner_held']} | {r['discordant']} ({r['discordant_within_noise']}) | "
            f"{r['verdict_there']} | {_f(st.get('mean'))} [{_f(st.get('min'))}, "
            f"{_f(st.get('max'))}] | {_f(sa.get('mean'), '.0%')} [{_f(sa.get('min'), '.0%')}, "
            f"{_f(sa.get('max'), '.0%')}] | {r['wall_s'] / 60:.0f} min |"
        )
    lines.append("")
    for r in result["knobs"]:
        lines.append(
            f"Rung check at the demo's rung on the {r['knob']} sweep's demo-fidelity runs:"
        )
        none = "(no rung below the last epoch, or no run ran every epoch)"
        lines += [f"- {line}" for line in r["rung_check"] or [none]]
        lines.append("")
    lines += [f"`{json.dumps(result)}`", ""]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
