"""Seed-paired statistics of the confirm phase: does a searched config beat the baseline?

Pure (numpy and scipy; no Optuna, Ray or MLflow): the confirm phase, the report
and the tracking layer all call it, and the error-rate test simulates it as it is.

**The design it analyses.** The baseline and K rivals (the best searched configs)
run the same seeds (``train.seed + 1, + 2, ...``: the same init, data order,
augmentation and dropout draws), so runs at one seed move together. Each rival is
judged on its per-seed differences against the baseline,
``d_s = sign * (rival_s - baseline_s)`` (sign +1 when the objective is maximised),
which cancel what a seed does to every config alike. A paired t-test on them, one
rival at a time, with its own variance: the noise is *not* pooled over configs,
because configs differ in how much their seeds scatter them (a regulariser can
steady a run; one config collapsed at one seed in six), and a pooled variance
then under-states the noisiest rival's and lets it win on noise (measured in
``bench/verdict_error.py``: BENCHMARKS.md).

**Resolution.** Metrics such as top-1 on N images move in steps of 1/N. Two
seeds' rounded differences can then tie, leaving a zero variance and an
infinite t (simulated: 2 seeds x 3 rivals on a lattice claimed false wins
13-15% of the time). The variance of each comparison gets ``h**2 / 6`` added,
the variance of the difference of two independent rounding errors, where ``h``
is the finest step between any two values of the comparison.

**Error control.** One error rate, ``ALPHA`` = 5%, for "a rival beats the
baseline" when none does, over everything that could make the claim:

- K rivals: each is tested at ``ALPHA / K`` (Bonferroni; for whether *any* rival
  is claimed this is exactly Holm's first step, and it gives every rival an
  interval that agrees with its claim).
- Racing (``search.confirm.max_seeds`` M > ``seeds`` N): the race looks at
  n = N, N+1, ..., M seeds. It spends the error over the looks as
  ``level * (n / M) ** 3`` (the Kim-DeMets power family with exponent 3, close to
  O'Brien-Fleming: little at the first looks, where a t-test on 2-3 differences
  has almost no power, most at the last). The critical t of each look is found
  by simulating the looks' t statistics of mean-zero normal differences (their
  joint law does not depend on the noise's scale) with a fixed seed: the
  probability of crossing first at look j is what that look spends.
- After a look, a rival whose mean gain is below ``min_gain`` (it is behind the
  baseline) is dropped and runs no more seeds. Dropping never adds a claim, so
  it cannot raise the error; it costs power, measured with the rest.

Measured, not assumed: ``tests/test_stats.py`` simulates :func:`race` under the
null (K = 1, 3, 5; n = 2..8 and racing designs; seed correlation 0, 0.5, 0.9;
unequal noise; heavy tails with collapsed seeds; values on a lattice) and holds
every false-claim rate to 5% plus Monte Carlo error.

**Verdicts.** ``beats_baseline``: a rival's lower bound clears ``min_gain``
(false at most 5% of the time). ``no_gain``: every rival's upper bound is below
``min_gain`` (said of a rival that does gain ``min_gain`` at most 5% of the time).
``not_decided``: anything else; the words give the interval and how many seeds
would decide a gain of the size seen at 80% power.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # the one error rate of every claim
POWER = 0.8  # the power "seeds to decide" is computed for
SPEND_EXPONENT = 3  # alpha spent by look n of M: level * (n / M) ** 3
CALIBRATION_DRAWS = 200_000
CALIBRATION_SEED = 20261204
MAX_SEEDS_TO_DECIDE = 10_000

BEATS_BASELINE = "beats_baseline"
NO_GAIN = "no_gain"
NOT_DECIDED = "not_decided"
VERDICTS = (BEATS_BASELINE, NO_GAIN, NOT_DECIDED)


@dataclass(frozen=True)
class Design:
    """What the verdict is computed for: K rivals, looks at ``first`` .. ``last`` seeds."""

    rivals: int
    first: int  # N: the seeds every config runs before the first look
    last: int  # M: the most seeds a config runs (== first: one look, no racing)
    min_gain: float = 0.0  # in the metric's own units, in the objective's direction
    alpha: float = ALPHA

    def __post_init__(self):
        if not (self.rivals >= 1 and 2 <= self.first <= self.last):
            raise ValueError(f"need rivals >= 1 and 2 <= first <= last, got {self}")

    @property
    def looks(self) -> tuple[int, ...]:
        return tuple(range(self.first, self.last + 1))

    @property
    def level(self) -> float:
        """Each rival's share of the error (Bonferroni over the rivals)."""
        return self.alpha / self.rivals

    def critical(self) -> np.ndarray:
        """The critical t of each look (one-sided, each rival at ``level``)."""
        return boundaries(self.looks, self.level)

    @property
    def method(self) -> str:
        looks = (
            f"one look at {self.first} seeds"
            if self.first == self.last
            else f"looks at {self.first}..{self.last} seeds, error spent as "
            f"(n/{self.last})^{SPEND_EXPONENT}, a rival behind the baseline dropped"
        )
        return (
            f"paired t on per-seed differences vs the baseline, one-sided {self.alpha:g} "
            f"split over {self.rivals} rival{'s' if self.rivals > 1 else ''} (Bonferroni), "
            f"{looks}; variance + h^2/6 for the metric's resolution h"
        )


@functools.lru_cache(maxsize=64)
def _boundaries(looks: tuple[int, ...], level: float) -> tuple[float, ...]:
    if len(looks) == 1:
        return (float(sps.t.isf(level, looks[0] - 1)),)
    last = looks[-1]
    spent = level * (np.asarray(looks, float) / last) ** SPEND_EXPONENT
    step = np.diff(np.concatenate([[0.0], spent]))
    rng = np.random.default_rng(CALIBRATION_SEED)
    total = np.zeros(CALIBRATION_DRAWS)
    squares = np.zeros(CALIBRATION_DRAWS)
    alive = np.ones(CALIBRATION_DRAWS, bool)
    out, j = [], 0
    for n in range(1, last + 1):
        x = rng.standard_normal(CALIBRATION_DRAWS)
        total += x
        squares += x * x
        if n != looks[j]:
            continue
        mean = total / n
        sd = np.sqrt(np.maximum(squares - n * mean**2, 0.0) / (n - 1))
        t = mean / (sd / math.sqrt(n))
        crossing = int(round(step[j] * CALIBRATION_DRAWS))
        if crossing <= 0:
            c = math.inf
        else:
            candidates = np.where(alive, t, -np.inf)
            c = float(np.partition(candidates, -crossing)[-crossing])
        out.append(c)
        alive &= t < c
        j += 1
    return tuple(out)


def boundaries(looks: tuple[int, ...], level: float) -> np.ndarray:
    """Critical t values at ``looks`` (seeds) for one rival tested at ``level`` in all."""
    return np.asarray(_boundaries(tuple(looks), float(level)))


@dataclass
class Race:
    """The race of a batch of B comparisons (K rivals each), as far as the data goes.

    Per rival, the numbers are those of its last look (where it was dropped, claimed,
    or where the data ends): ``gain`` (mean per-seed difference, positive = better
    than the baseline), ``lower``/``upper`` (its bounds at that look's critical t),
    ``p`` (one-sided paired-t p-value times K), ``p_needed`` (what ``p`` had to be
    at or below for a claim at that look), ``sd`` of the differences, ``pairs``
    (seeds with both runs finished), ``runs`` (seeds it ran: it stops running when
    dropped or when the race is decided).
    """

    gain: np.ndarray  # (B, K)
    lower: np.ndarray
    upper: np.ndarray
    p: np.ndarray
    p_needed: np.ndarray
    sd: np.ndarray
    pairs: np.ndarray  # (B, K) int
    runs: np.ndarray  # (B, K) int: seeds each rival ran
    base_runs: np.ndarray  # (B,) int: seeds the baseline ran
    claimed: np.ndarray  # (B, K) bool
    dropped: np.ndarray  # (B, K) bool: left the race behind the baseline
    decided: np.ndarray  # (B,) bool: the race is over (the next look would change nothing)
    verdict: np.ndarray  # (B,) str

    @property
    def winner(self) -> np.ndarray:
        """(B,) index of the claimed rival with the largest gain, -1 where none is claimed."""
        gain = np.where(self.claimed, self.gain, -np.inf)
        return np.where(self.claimed.any(1), gain.argmax(1), -1)


def _gcd(a: np.ndarray, b: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Elementwise greatest common divisor of non-negative floats, to ``tol`` (gcd(x, 0) = x)."""
    a, b = np.maximum(a, b), np.minimum(a, b)
    going = b > tol
    while going.any():
        rest = np.fmod(a, np.where(going, b, 1.0))
        rest = np.where(going & (b - rest > tol), rest, 0.0)  # a remainder of ~b is 0
        a, b = np.where(going, b, a), np.where(going, rest, b)
        going = b > tol
    return a


def _resolution(y: np.ndarray, h: np.ndarray, base: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """(B,) ``h`` refined by the values ``y`` (B, ...): the largest step of which every
    difference between them and ``base`` (B,) is a whole multiple, to ``tol`` (B,) (Euclid's
    algorithm on floats, pairwise). Over all of a comparison's values, this is the metric's
    step: 1/384 for top-1 on 384 images (or a multiple of it when few values are seen, which
    only makes the correction larger), a negligible one for a metric without steps.
    """
    diffs = np.abs(y.reshape(len(y), -1) - base[:, None])
    x = np.concatenate([h[:, None], np.where(np.isfinite(diffs), diffs, 0.0)], axis=1)
    tol = tol[:, None]
    while x.shape[1] > 1:
        if x.shape[1] % 2:
            x = np.concatenate([x, np.zeros((len(x), 1))], axis=1)
        x = _gcd(x[:, 0::2], x[:, 1::2], tol)
    return x[:, 0]


def resolution(y: np.ndarray) -> np.ndarray:
    """(B,) the metric's step over all values of each comparison in ``y`` (B, configs, seeds)."""
    base, tol = _step_base(y)
    return _resolution(y, np.zeros(len(y)), base, tol)


def _step_base(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A value every look has seen (the first seed's smallest) and a ten-thousandth of the range."""
    first = np.where(np.isfinite(y[:, :, 0]), y[:, :, 0], np.inf).min(axis=1)
    base = np.where(np.isfinite(first), first, 0.0)
    spread = np.abs(y - base[:, None, None])
    return base, 1e-4 * np.maximum(
        np.max(np.where(np.isfinite(spread), spread, 0.0), axis=(1, 2)), 1e-300
    )


def race(y: np.ndarray, design: Design, sign: float = 1.0) -> Race:
    """Judge each rival against the baseline, look by look, as far as ``y`` goes.

    ``y``: (B, 1 + K, S) final metric values, the baseline first, seeds in order
    (S <= ``design.last``; NaN where a run failed or has not run). Looks beyond the
    S seeds given are not taken: the race is then ``decided`` only if it ended
    earlier. Vectorised over B: the confirm phase calls it with B = 1, the
    error-rate test with thousands.
    """
    y = np.asarray(y, float)
    batch, configs, seeds = y.shape
    k = configs - 1
    if k != design.rivals or seeds > design.last:
        raise ValueError(f"y of shape {y.shape} does not fit {design}")
    d = sign * (y[:, 1:, :] - y[:, :1, :])
    crit = design.critical()
    nominal = sps.t.sf(crit, np.asarray(design.looks) - 1)  # each look's one-sided level
    shape = (batch, k)
    r = Race(
        gain=np.full(shape, np.nan),
        lower=np.full(shape, -np.inf),
        upper=np.full(shape, np.inf),
        p=np.ones(shape),
        p_needed=np.zeros(shape),
        sd=np.full(shape, np.nan),
        pairs=np.zeros(shape, int),
        runs=np.zeros(shape, int),
        base_runs=np.zeros(batch, int),
        claimed=np.zeros(shape, bool),
        dropped=np.zeros(shape, bool),
        decided=np.zeros(batch, bool),
        verdict=np.full(batch, NOT_DECIDED, dtype=object),
    )
    active = np.ones(shape, bool)
    looks = [n for n in design.looks if n <= seeds]
    base, tol = _step_base(y)
    h = _resolution(y[:, :, : looks[0] - 1], np.zeros(batch), base, tol) if looks else None
    for j, n in enumerate(looks):
        live = ~r.decided
        racing = live[:, None] & active
        r.base_runs[live] = n
        r.runs[racing] = n
        x = d[:, :, :n]
        pairs = np.isfinite(x).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            gain = np.nansum(x, -1) / pairs
            var = np.nansum((x - gain[..., None]) ** 2, -1) / (pairs - 1)
            h = _resolution(y[:, :, n - 1 : n], h, base, tol)  # this look's new seed
            se = np.sqrt((var + h[:, None] ** 2 / 6) / pairs)
            judged = pairs >= 2
            df = np.maximum(pairs - 1, 1)
            c = np.where(pairs == n, crit[j], sps.t.isf(nominal[j], df))
            t = np.where(se > 0, (gain - design.min_gain) / se, 0.0)
            lower = np.where(judged, gain - c * se, -np.inf)
            upper = np.where(judged, gain + c * se, np.inf)
            p = np.where(judged, np.minimum(1.0, k * sps.t.sf(t, df)), 1.0)
        for name, value in (("gain", gain), ("lower", lower), ("upper", upper), ("p", p)):
            getattr(r, name)[racing] = value[racing]
        r.sd[racing] = np.sqrt(var)[racing]
        r.pairs[racing] = pairs[racing]
        r.p_needed[racing] = min(1.0, k * float(nominal[j]))
        claim = racing & judged & (lower > design.min_gain)
        r.claimed |= claim
        final = n == design.last
        if not final:  # behind the baseline: no more seeds
            behind = racing & ~claim & np.isfinite(gain) & (gain < design.min_gain)
            r.dropped |= behind
            active &= ~behind
        r.decided |= live & (claim.any(1) | ~active.any(1) | final)
    no_gain = (r.upper < design.min_gain).all(1)
    r.verdict[no_gain] = NO_GAIN
    r.verdict[r.claimed.any(1)] = BEATS_BASELINE
    return r


def seeds_to_decide(gain: float, sd: float, design: Design, power: float = POWER) -> int | None:
    """Seeds per config that a single look would need to claim a gain this far from
    ``min_gain`` with ``power``, at the per-rival level, given the differences' sd.

    None when no number would (no distance, or no spread measured); capped at
    ``MAX_SEEDS_TO_DECIDE``.
    """
    delta = abs(gain - design.min_gain)
    if not (math.isfinite(delta) and math.isfinite(sd)) or delta == 0 or sd <= 0:
        return None

    def enough(n: int) -> bool:
        crit = sps.t.isf(design.level, n - 1)
        return sps.nct.sf(crit, n - 1, delta / sd * math.sqrt(n)) >= power

    high = 2
    while not enough(high):
        if high >= MAX_SEEDS_TO_DECIDE:
            return MAX_SEEDS_TO_DECIDE
        high = min(2 * high, MAX_SEEDS_TO_DECIDE)
    low = max(2, high // 2)
    while low < high:  # the smallest n in [low, high] with enough power
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid + 1, high)
    return high
