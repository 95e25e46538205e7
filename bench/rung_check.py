"""The rung check's error rates, measured by simulating ``smotune.rungs.check_rung`` itself.

For n full runs, each draw gives every run a value at the rung and one at the final
epoch, and asks ``check_rung`` whether the rung's order agrees with the final one
better than chance:

- null (the rung independent of the final value): how often it says "agrees" (the
  false-agreement rate; the test's level is 0.05), for normal noise, heavy-tailed noise
  (Student t, 2 degrees of freedom) and top-1 values rounded to 1/384 (48 classes,
  384 eval images) with the rung near chance (1/48, many ties);
- alternatives, rung = rho * final + sqrt(1 - rho^2) * noise (correlation rho): how often
  it says "agrees" (its power), continuous and rounded to 1/384 (values near 0.1 and
  0.3 with a spread of 0.02: about 8 eval images, so some ties).

Prints one JSON line and appends a section to BENCHMARKS.md.

    nice -n 19 .venv/bin/python bench/rung_check.py [--null-draws 4000] [--power-draws 2000]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import machine  # noqa: E402  (bench/machine.py)

from smotune import rungs  # noqa: E402

EVAL_IMAGES = 384
RUNS = [4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 24]
RHOS = [0.3, 0.6, 0.9]
NULL_KINDS = ["normal", "heavy", "rounded"]


def _rounded(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0, 1) * EVAL_IMAGES) / EVAL_IMAGES


def null_draw(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kind == "normal":
        return rng.normal(size=n), rng.normal(size=n)
    if kind == "heavy":
        return rng.standard_t(2, size=n), rng.standard_t(2, size=n)
    rung = _rounded(1 / 48 + 0.01 * rng.standard_t(3, size=n))
    return rung, _rounded(0.3 + 0.02 * rng.standard_t(3, size=n))


def alt_draw(noise: str, rho: float, n: int, rng: np.random.Generator):
    final = rng.normal(size=n)
    rung = rho * final + math.sqrt(1 - rho**2) * rng.normal(size=n)
    if noise == "rounded":
        return _rounded(0.1 + 0.02 * rung), _rounded(0.3 + 0.02 * final)
    return rung, final


def rates(draw, draws: int, rng: np.random.Generator) -> tuple[float, float]:
    """(share judged "agrees", share judged "too few runs") over ``draws`` draws."""
    said = {rungs.AGREES: 0, rungs.TOO_FEW: 0, rungs.CHANCE: 0}
    for _ in range(draws):
        x, y = draw(rng)
        points = {str(k): (float(a), float(b)) for k, (a, b) in enumerate(zip(x, y, strict=True))}
        said[rungs.check_rung(points, 1, 2, "max").judgement] += 1
    return said[rungs.AGREES] / draws, said[rungs.TOO_FEW] / draws


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--null-draws", type=int, default=4000)
    ap.add_argument("--power-draws", type=int, default=2000)
    ap.add_argument("--no-append", action="store_true", help="print only")
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    null, too_few = {}, {}
    for kind in NULL_KINDS:
        for n in RUNS:
            null[kind, n], too_few[kind, n] = rates(
                lambda r, k=kind, n=n: null_draw(k, n, r), args.null_draws, rng
            )
    power = {}
    for noise in ("normal", "rounded"):
        for rho in RHOS:
            for n in RUNS:
                power[noise, rho, n] = rates(
                    lambda r, s=noise, p=rho, n=n: alt_draw(s, p, n, r), args.power_draws, rng
                )[0]
    result = {
        "bench": "rung_check",
        "alpha": rungs.ALPHA,
        "permutations": rungs.PERMUTATIONS,
        "null_draws": args.null_draws,
        "power_draws": args.power_draws,
        "false_agreement": {k: {n: null[k, n] for n in RUNS} for k in NULL_KINDS},
        "too_few_rounded_null": {n: too_few["rounded", n] for n in RUNS},
        "power": {
            f"{s} rho={p}": {n: power[s, p, n] for n in RUNS}
            for s in ("normal", "rounded")
            for p in RHOS
        },
    }
    print(json.dumps(result))
    if not args.no_append:
        _append(result, null, too_few, power, args)


def _append(result, null, too_few, power, args) -> None:
    when = datetime.now(UTC).date().isoformat()
    host = (
        f"{machine.cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, "
        f"numpy {np.__version__}, scipy {scipy.__version__}"
    )
    se_null = math.sqrt(0.05 * 0.95 / args.null_draws)
    head = "| | " + " | ".join(f"n={n}" for n in RUNS) + " |"
    rule = "|---" * (len(RUNS) + 1) + "|"
    lines = [
        f"## Rung check error rates ({when}, bench/rung_check.py)",
        "",
        f"Machine: {host}. `smotune.rungs.check_rung` itself, one-sided level {rungs.ALPHA}: "
        "exact without ties, a permutation test "
        f"({rungs.PERMUTATIONS} reorderings) with ties, normal above {rungs.SMALL} runs. "
        f'Share of draws judged "agrees better than chance"; {args.null_draws} draws a cell '
        f"under the null (standard error {se_null:.4f} at a true 0.05), {args.power_draws} under "
        "the alternatives (standard error at most "
        f"{math.sqrt(0.25 / args.power_draws):.3f}).",
        "",
        "False agreement (rung independent of the final value; top-1 rounded to 1/384 with the "
        "rung near chance):",
        "",
        head,
        rule,
        *(
            f"| {kind} | " + " | ".join(f"{null[kind, n]:.3f}" for n in RUNS) + " |"
            for kind in NULL_KINDS
        ),
        "| rounded: too few to judge | "
        + " | ".join(f"{too_few['rounded', n]:.3f}" for n in RUNS)
        + " |",
        "",
        "Power (rung = rho x final + noise; rounded: values near 0.1 and 0.3, spread 0.02, "
        "in 1/384 steps):",
        "",
        head,
        rule,
        *(
            f"| {s} rho={p} | " + " | ".join(f"{power[s, p, n]:.3f}" for n in RUNS) + " |"
            for s in ("normal", "rounded")
            for p in RHOS
        ),
        "",
        f"`{json.dumps(result)}`",
        "",
    ]
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
