"""The Tuners of a sweep: where they live, new or restored, and whether they ran to the end.

A sweep runs several Tune experiments side by side under ``storage.path``: the
search (``<name>``), the confirm phase's rounds (``<name>-confirm``,
``<name>-confirm-<n>``; :mod:`smotune.confirm_run`) and the transfer phase
(``<name>-transfer``; :mod:`smotune.transfer_run`). Each trial is
:func:`smotune.trial.trial_fn`, asking for a ``trial_driver`` slot and no CPU.
"""

from __future__ import annotations

import os
from typing import Any

from ray import tune

from smotune import trial, tune_state
from smotune.config import SweepConfig


def experiment_path(sweep: SweepConfig, name: str | None = None) -> str:
    """Where Tune keeps experiment ``name`` (default: the search's, the sweep's name)."""
    base = trial.storage_uri(sweep.storage.path)
    return f"{base.rstrip('/')}/{name or sweep.name}"


def trainable(sweep: SweepConfig):
    fn = tune.with_parameters(
        trial.trial_fn,
        sweep=sweep,
        base_dir=os.getcwd(),
        storage=f"{experiment_path(sweep)}/train",
    )
    return tune.with_resources(fn, trial.TRIAL_RESOURCES)


def make(
    sweep, name, search_alg, scheduler, num_samples, callbacks, resume, verbose, param_space=None
):
    """A new Tuner for ``name`` under the sweep's storage, or the interrupted one restored.

    Tune's own result tables only with ``verbose``; ``callbacks`` (the MLflow one and the
    console) come back with a restored Tuner from its saved state. A Tuner whose driver died
    before Tune's first save (its ``tuner.pkl`` written, no experiment state; nothing ran) is
    made anew: restored, Ray would start it over without its ``param_space`` (Tuner state
    keeps only the keys), and the preset points of a confirm round fail on it (KeyError)."""
    path = experiment_path(sweep, name)
    if resume and tune.Tuner.can_restore(path) and tune_state.saved(path):
        # the MLflow callback comes back from the experiment state, re-attached to its runs
        return tune.Tuner.restore(path, trainable=trainable(sweep), resume_errored=False)
    return tune.Tuner(
        trainable(sweep),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=None if param_space else sweep.search.concurrent,
            time_budget_s=sweep.search.time_budget,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=trial.storage_uri(sweep.storage.path),
            callbacks=callbacks,
            verbose=1 if verbose else 0,
        ),
    )


def ended(grid: Any, expected: int, epochs: int) -> bool:
    """Whether every trial a Tuner was to run has ended (finished or failed).

    Tune's count alone is not enough: Ctrl-C ends the running trial and a PENDING one
    TERMINATED too (seen in test_sweep's Ctrl-C test). A trial really ended has an error,
    or reported its last epoch (of ``epochs``), or has a last result Tune marked ``done``
    (its function returned, or the scheduler stopped it); a Ctrl-C'd one keeps an earlier
    epoch's result, not done, or none at all. ``done`` alone is not enough either: a trial
    that finished before a Ctrl-C came back from Tune's saved state without it (Ray 2.60,
    seen in test_sweep's race test).
    """
    ran = sum(
        1
        for r in grid
        if r.error is not None
        or (r.metrics or {}).get("done")
        or (r.metrics or {}).get("epoch", 0) >= epochs
    )
    return grid.num_terminated + grid.num_errors >= expected and ran >= expected
