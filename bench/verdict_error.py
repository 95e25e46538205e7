"""The verdict's error rates, power and racing savings, by simulating ``smotune.stats.race``.

Synthetic confirm phases (``tests/confirm_sim.py``): each run's final value = its
config's true mean + a per-seed effect shared by all configs (``rho`` of the
variance) + its own noise; gains in units of one run's sd.

- null (every config equal): how often the verdict says ``beats_baseline``, over
  K = 1, 3, 5 rivals, 2..8 seeds and racing designs, and the null scenarios of
  tests/test_stats.py (seed correlation, unequal noise, heavy tails with collapsed
  runs, a lattice); beside it the rule smotune used before (best mean beats the
  baseline's by two unpaired standard errors) and a pooled-variance paired test
  (the design smotune did not take: noise pooled over configs, seed as a block);
- power: one rival truly better, the others equal to the baseline;
- racing against every config running all M seeds: seeds spent, error and power,
  and the fixed number of seeds with the race's power.

Prints one JSON line and appends a section to BENCHMARKS.md.

    nice -n 19 .venv/bin/python bench/verdict_error.py [--sims 4000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy
from scipy import stats as sps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import machine  # noqa: E402  (bench/machine.py)
from confirm_sim import NULL_NOISES, Noise, draw  # noqa: E402  (tests/confirm_sim.py)

from smotune import stats  # noqa: E402

KS = (1, 3, 5)
FIXED = range(2, 9)
RACES = ((2, 6), (3, 8), (3, 12), (5, 12))
RHOS = (0.0, 0.5, 0.9)
GAINS = (0.5, 1.0, 1.5)
POWER_SEEDS = (2, 3, 4, 5, 6, 8)


def claims(y: np.ndarray, design: stats.Design) -> np.ndarray:
    return stats.race(y, design).verdict == stats.BEATS_BASELINE


def old_rule(y: np.ndarray) -> np.ndarray:
    """The verdict before: the best rival mean beats the baseline's by two unpaired SEs."""
    n = y.shape[2]
    means, var = y.mean(2), y.var(2, ddof=1)
    best = means[:, 1:].argmax(1)
    rows = np.arange(len(y))
    diff = means[rows, 1 + best] - means[:, 0]
    se = np.sqrt((var[rows, 1 + best] + var[:, 0]) / n)
    return diff > 2 * se


def pooled(y: np.ndarray) -> np.ndarray:
    """Each rival against the baseline with the noise pooled over configs (seed as a block):
    two-way ANOVA residual, df (C-1)(n-1), one-sided at 5%/K."""
    _, c, n = y.shape
    resid = y - y.mean(2, keepdims=True) - y.mean(1, keepdims=True) + y.mean((1, 2), keepdims=True)
    df = (c - 1) * (n - 1)
    mse = (resid**2).sum((1, 2)) / df
    t = (y[:, 1:, :].mean(2) - y[:, :1, :].mean(2)) / np.sqrt(2 * mse / n)[:, None]
    return (t > sps.t.isf(stats.ALPHA / (c - 1), df)).any(1)


def null_rates(rng: np.random.Generator, sims: int) -> dict:
    worst, by_design, old, pool = {}, {}, {}, {}
    for k in KS:
        designs = [(n, n) for n in FIXED] + list(RACES)
        for first, last in designs:
            design = stats.Design(k, first, last)
            rates = {}
            for noise in NULL_NOISES:
                y = draw(rng, sims, k, last, noise)
                rates[f"{noise.name} rho={noise.rho}"] = float(claims(y, design).mean())
                if first == last and noise.name.startswith(("normal", "unequal")):
                    key = f"K={k} n={first} {noise.name} rho={noise.rho}"
                    old[key] = float(old_rule(y).mean())
                    pool[key] = float(pooled(y).mean())
            name = f"K={k} {first}" + (f"..{last}" if last > first else "")
            by_design[name] = {
                "max": max(rates.values()),
                "mean": float(np.mean(list(rates.values()))),
            }
            worst[name] = max(rates, key=rates.get)
    return {"by_design": by_design, "worst_scenario": worst, "old_rule": old, "pooled": pool}


def power(rng: np.random.Generator, sims: int) -> dict:
    out = {}
    for k in KS:
        for rho in RHOS:
            for gain in GAINS:
                y = draw(rng, sims, k, max(POWER_SEEDS), Noise("normal", rho=rho), gains=(gain,))
                out[f"K={k} rho={rho} gain={gain}"] = {
                    n: float(claims(y[:, :, :n], stats.Design(k, n, n)).mean()) for n in POWER_SEEDS
                }
    return out


def racing(rng: np.random.Generator, sims: int) -> dict:
    out = {}
    for k in KS:
        for first, last in RACES:
            race = stats.Design(k, first, last)
            null = draw(rng, sims, k, last, Noise("normal", rho=0.5))
            r0 = stats.race(null, race)
            # an effect the fixed design at `last` seeds finds about 80% of the time
            gain = _gain_for(k, last)
            alt = draw(rng, sims, k, last, Noise("normal", rho=0.5), gains=(gain,))
            r1 = stats.race(alt, race)
            fixed_power = {
                n: float(claims(alt[:, :, :n], stats.Design(k, n, n)).mean())
                for n in range(2, last + 1)
            }
            raced = float((r1.verdict == stats.BEATS_BASELINE).mean())
            ns, ps = np.array(list(fixed_power)), np.array(list(fixed_power.values()))
            equal_n = float(np.interp(raced, ps, ns)) if raced <= ps.max() else float(last)
            spent0 = (r0.base_runs + r0.runs.sum(1)) / ((k + 1) * last)
            spent1 = (r1.base_runs + r1.runs.sum(1)) / ((k + 1) * last)
            out[f"K={k} {first}..{last}"] = {
                "gain": gain,
                "false_raced": float((r0.verdict == stats.BEATS_BASELINE).mean()),
                "false_fixed": float(claims(null, stats.Design(k, last, last)).mean()),
                "seeds_null": float(spent0.mean()),
                "seeds_alt": float(spent1.mean()),
                "power_raced": raced,
                "power_fixed": fixed_power[last],
                "fixed_seeds_at_raced_power": equal_n,
                "seeds_alt_vs_equal_power": float(spent1.mean() * last / equal_n),
            }
    return out


def _gain_for(k: int, n: int, target: float = 0.8) -> float:
    """The gain (run sds, seed correlation 0.5: differences of sd 1) a single look at n seeds
    claims with ``target`` power at the per-rival level (noncentral t)."""
    crit = sps.t.isf(stats.ALPHA / k, n - 1)
    low, high = 0.01, 10.0
    for _ in range(60):
        mid = (low + high) / 2
        if sps.nct.sf(crit, n - 1, mid * math.sqrt(n)) < target:
            low = mid
        else:
            high = mid
    return round(high, 3)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def section(result: dict, when: str, where: str) -> str:
    sims = result["sims"]
    se = math.sqrt(0.05 * 0.95 / sims)
    nulls = result["null"]["by_design"]
    null_rows = [
        [name, f"{v['max']:.3f}", f"{v['mean']:.3f}", result["null"]["worst_scenario"][name]]
        for name, v in nulls.items()
    ]
    old = result["null"]["old_rule"]
    pool = result["null"]["pooled"]
    compare_rows = [
        [key, f"{old[key]:.3f}", f"{pool[key]:.3f}"]
        for key in old
        if "rho=0.5" in key and (" n=2 " in key or " n=3 " in key or " n=5 " in key)
    ]
    power_rows = [[key, *(f"{p:.2f}" for p in v.values())] for key, v in result["power"].items()]
    race_rows = [
        [
            key,
            f"{v['gain']:.2f}",
            f"{v['false_raced']:.3f} / {v['false_fixed']:.3f}",
            f"{v['power_raced']:.2f} / {v['power_fixed']:.2f}",
            f"{v['seeds_null']:.2f}",
            f"{v['seeds_alt']:.2f}",
            f"{v['fixed_seeds_at_raced_power']:.1f}",
            f"{v['seeds_alt_vs_equal_power']:.2f}",
        ]
        for key, v in result["racing"].items()
    ]
    return "\n\n".join(
        [
            f"## Verdict error rates, power and racing ({when}, bench/verdict_error.py)",
            f"Machine: {where}. `smotune.stats.race` itself on synthetic confirm phases "
            f"(tests/confirm_sim.py); {sims} draws a cell (standard error {se:.4f} at a true "
            "0.05). Gains in units of one run's sd; seeds correlate `rho`.",
            "False `beats_baseline` with no config better, per design (max and mean over the "
            "9 null scenarios of tests/test_stats.py, and the scenario of the max):",
            _table(["design", "max", "mean", "worst scenario"], null_rows),
            "The rule smotune used before (best mean beats the baseline's by two unpaired "
            "standard errors) and a pooled-variance paired test (noise pooled over configs, "
            "the seed as a block; not what smotune does), same draws:",
            _table(["case", "old rule", "pooled"], compare_rows),
            "Power of a single look (one rival better by `gain`, the others equal), by seeds "
            f"{', '.join(map(str, POWER_SEEDS))}:",
            _table(["case", *(f"n={n}" for n in POWER_SEEDS)], power_rows),
            "Racing (first..last seeds) against every config running all `last` seeds, seed "
            "correlation 0.5; `gain` is the effect a single look at `last` seeds finds 80% of "
            "the time. Seeds spent are shares of (K+1) x last; the last column divides the "
            "race's seeds by those of a single look with the race's power:",
            _table(
                [
                    "design",
                    "gain",
                    "false: raced / fixed",
                    "power: raced / fixed",
                    "seeds, null",
                    "seeds, gain",
                    "fixed seeds at raced power",
                    "seeds vs equal power",
                ],
                race_rows,
            ),
            f"`{json.dumps(result)}`",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000)
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args()
    rng = np.random.default_rng(20261205)
    result = {
        "bench": "verdict_error",
        "alpha": stats.ALPHA,
        "sims": args.sims,
        "null": null_rates(rng, args.sims),
        "power": power(rng, args.sims),
        "racing": racing(rng, args.sims),
    }
    print(json.dumps(result))
    if args.no_append:
        return
    where = (
        f"{machine.cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, "
        f"numpy {np.__version__}, scipy {scipy.__version__}"
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n" + section(result, when, where) + "\n")


if __name__ == "__main__":
    main()
