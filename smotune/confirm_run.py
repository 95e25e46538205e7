"""The confirm phase on Tune: its rounds (one Tuner each) and its verdict, logged to MLflow.

Round one (Tuner ``<name>-confirm``) runs seeds ``train.seed + 1 .. + N``
(``search.confirm.seeds``) of the baseline and of each confirmed config. With
racing (``search.confirm.max_seeds`` M > N) the round for n seeds (Tuner
``<name>-confirm-<n>``) runs seed n of the baseline and of each rival still
racing; the race ends when the verdict is decided (a rival claimed, every rival
dropped behind the baseline) or after M seeds. After each round
:func:`smotune.confirm.judge` replays the race from the values alone, so
``--resume`` restores each round in turn (a finished round's Tuner hands back
its results, the interrupted one goes on) and the race takes up where it was.
"""

from __future__ import annotations

import functools
from typing import Any

from ray.tune.schedulers import FIFOScheduler

from smotune import confirm, console, tracking, tune_state, tuners
from smotune.config import SweepConfig

SUFFIX = "-confirm"


def round_name(sweep: SweepConfig, n: int) -> str:
    """The Tuner of the round after which every config still racing has ``n`` seeds."""
    assert sweep.search.confirm is not None
    first = sweep.search.confirm.seeds
    return f"{sweep.name}{SUFFIX}" if n == first else f"{sweep.name}{SUFFIX}-{n}"


def round_names(sweep: SweepConfig) -> list[str]:
    """Every round's Tuner a sweep may run (for repairs before a resume)."""
    c = sweep.search.confirm
    if c is None:
        return []
    return [round_name(sweep, n) for n in range(c.seeds, c.most_seeds + 1)]


def run(
    sweep: SweepConfig, text: str, study_storage: Any, parent_id: str, resume: bool, verbose: bool
) -> confirm.Verdict | None:
    """Run the confirm phase's rounds; log the verdict on the parent and return it.

    None if a round was interrupted before all its runs ended.
    """
    c = sweep.search.confirm
    assert c is not None
    groups = confirm.choose_groups(sweep, study_storage)
    plan = confirm.Plan.of(sweep)
    verdict = confirm.judge(groups, plan)
    racing, ran = groups[1:], 0
    for n in range(c.seeds, c.most_seeds + 1) if racing else ():
        runs = confirm.points([groups[0], *racing], list(plan.seeds[ran:n]))
        results = run_round(
            sweep, text, parent_id, groups, runs, round_name(sweep, n), resume, verbose
        )
        if results is None:
            return None
        confirm.collect(groups, results, sweep)
        verdict = confirm.judge(groups, plan, upto=n)
        ran = n
        if c.most_seeds > c.seeds:
            print(verdict.race_line(sweep.search.metric), flush=True)
        if verdict.decided:
            break
        racing = verdict.racing
    tracking.log_verdict(sweep.tracking.uri, parent_id, verdict, sweep.search.metric)
    return verdict


def run_round(
    sweep: SweepConfig,
    text: str,
    parent_id: str,
    groups: list[confirm.Group],
    runs: list[dict[str, Any]],
    name: str,
    resume: bool,
    verbose: bool,
    phase: str = tracking.PHASE_CONFIRM,
) -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
    """One round's Tuner ``name`` (new, or restored on ``--resume``) over preset points ``runs``
    (each a group's values and a ``seed``), its children tagged ``phase`` (the confirm phase's,
    or the transfer phase's with ``sweep.train`` at its fidelity): (config, last result) of
    each run that did not fail; None if it was interrupted."""
    label = functools.partial(_label, groups)  # a run's group, for MLflow and the console
    callback = tracking.MlflowSweepCallback(
        sweep, text, phase=phase, parent_run_id=parent_id, confirm_labels=label
    )
    shown = console.SweepConsole(sweep, len(runs), phase, label=label)
    grid = tuners.make(
        sweep,
        name,
        tune_state.KeptVariantGenerator(
            points_to_evaluate=runs, max_concurrent=sweep.search.concurrent
        ),
        FIFOScheduler(),
        len(runs),
        [callback, shown],
        resume,
        verbose,
        param_space=dict.fromkeys(runs[0]),  # the keys the preset points fill in
    ).fit()
    if not tuners.ended(grid, len(runs), sweep.train.epochs):
        return None
    return [(r.config, r.metrics or {}) for r in grid if r.error is None]


def _label(groups: list[confirm.Group], config: dict[str, Any]) -> str:
    group = confirm.group_of(groups, config)
    return group.label if group is not None else "unknown"
