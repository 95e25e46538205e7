"""Synthetic confirm phases: final metric values of a baseline and K rivals over shared seeds.

Each run's value = its config's true mean + a per-seed effect shared by every
config at that seed (``rho`` of the variance) + the run's own noise, scaled per
config (``scale``: unequal noise). Options: heavy tails (Student t with 3
degrees of freedom), collapsed runs (a run falls ``COLLAPSE`` sds with
probability ``collapse``, as one seed of six did on a real image set: 0.46 among
0.85-0.96), values rounded to a lattice (top-1 on a finite eval set).
Used by tests/test_stats.py (the verdict's error rates) and bench/verdict_error.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLLAPSE = 8.0  # sds a collapsed run falls


@dataclass(frozen=True)
class Noise:
    name: str
    rho: float = 0.5  # share of a run's variance that is the seed's, common to all configs
    scale: tuple[float, ...] = ()  # per config (baseline first), cycled; () = all 1
    tails: float | None = None  # Student t degrees of freedom; None = normal
    collapse: float = 0.0  # probability a run collapses
    lattice: float | None = None  # run sd in lattice steps; values rounded to the lattice


def draw(
    rng: np.random.Generator,
    sims: int,
    rivals: int,
    seeds: int,
    noise: Noise,
    gains: tuple[float, ...] = (),
) -> np.ndarray:
    """(sims, 1 + rivals, seeds) values; ``gains`` are the first rivals' true gains in run sds
    (the others gain nothing)."""
    configs = 1 + rivals
    scale = np.array(
        [noise.scale[i % len(noise.scale)] if noise.scale else 1.0 for i in range(configs)]
    )
    shared = np.sqrt(noise.rho) * rng.standard_normal((sims, 1, seeds))
    if noise.tails is None:
        own = rng.standard_normal((sims, configs, seeds))
    else:
        own = rng.standard_t(noise.tails, (sims, configs, seeds))
        own /= np.sqrt(noise.tails / (noise.tails - 2))
    y = shared + np.sqrt(1 - noise.rho) * scale[None, :, None] * own
    if noise.collapse:
        y -= COLLAPSE * (rng.random(y.shape) < noise.collapse)
    if gains:  # the first len(gains) rivals; the rest gain nothing
        shift = np.zeros(rivals)
        shift[: len(gains)] = gains
        y[:, 1:, :] += shift[None, :, None]
    if noise.lattice is not None:
        y = np.round(y * noise.lattice)  # 1 sd = ``lattice`` steps of 1
    return y


NULL_NOISES = (
    Noise("normal", rho=0.0),
    Noise("normal", rho=0.5),
    Noise("normal", rho=0.9),
    Noise("unequal: rivals 1-3x", rho=0.5, scale=(1.0, 3.0, 2.0, 1.0)),
    Noise("unequal: baseline 3x", rho=0.5, scale=(3.0, 1.0)),
    Noise("heavy: t3 + 5% collapsed runs", rho=0.5, tails=3.0, collapse=0.05),
    Noise("heavy: t3 + 5% collapsed runs", rho=0.9, tails=3.0, collapse=0.05),
    Noise("lattice: sd 1.5 steps", rho=0.5, lattice=1.5),
    Noise("lattice: sd 0.7 steps", rho=0.5, lattice=0.7),
)
"""The null scenarios the verdict's error is held to (every config equally good)."""
