"""The transfer phase on Tune: one round (a Tuner ``<name>-transfer``) and its result, logged.

After the confirm phase's verdict, the baseline and the ``search.transfer.top``
configs with the best confirmed means (:func:`smotune.transfer.choose_groups`)
run ``search.transfer.seeds`` new seeds each with ``train:`` at the transfer
fidelity (``search.transfer.overrides`` applied: the trials' train config, their
``train.yaml`` and ``best.yaml`` hold it). The runs are children of the sweep's
parent tagged ``phase=transfer``, ``seed`` and ``confirm_of``. One look, no racing.

The machinery is the confirm phase's (:func:`smotune.confirm_run.run_round`): the
Tuner is restored on ``--resume`` (its state repaired first, ``sweep._check_start``),
a dead worker is retried by Ray Train (``workers.max_failures``), and MLflow is
written through the journal, so a store that is down only delays it.
"""

from __future__ import annotations

from smotune import confirm, confirm_run, tracking, transfer
from smotune.config import SweepConfig, transfer_train

SUFFIX = "-transfer"


def round_names(sweep: SweepConfig) -> list[str]:
    """The transfer phase's Tuner, if the sweep has one (for repairs before a resume)."""
    return [f"{sweep.name}{SUFFIX}"] if sweep.search.transfer is not None else []


def high_sweep(sweep: SweepConfig) -> SweepConfig:
    """The sweep as its transfer runs see it: ``train:`` at the transfer fidelity (the trials'
    train config, their epoch count for Tune, the console and the MLflow callback)."""
    return sweep.model_copy(update={"train": transfer_train(sweep)})


def skip_reason(sweep: SweepConfig, low: confirm.Verdict) -> str | None:
    """Why the transfer phase has nothing to run (no searched config finished a confirm run)."""
    t = sweep.search.transfer
    assert t is not None
    if len(transfer.choose_groups(low, t.top, sweep.search.mode)) < 2:
        return (
            "transfer phase skipped: no searched config finished its confirm runs, so there is "
            "nothing to compare with the baseline at the transfer fidelity"
        )
    return None


def run(
    sweep: SweepConfig,
    text: str,
    parent_id: str,
    low: confirm.Verdict,
    resume: bool,
    verbose: bool,
) -> transfer.Transfer | None:
    """Run the transfer phase after the confirm phase's verdict ``low``; log its result on the
    parent (best.yaml: the chosen config at the transfer fidelity) and return it.

    None if the round was interrupted before all its runs ended. Only when
    :func:`skip_reason` gives none.
    """
    t = sweep.search.transfer
    assert t is not None
    groups = transfer.choose_groups(low, t.top, sweep.search.mode)
    plan = transfer.plan(sweep)
    words = transfer.fidelity_words(sweep)
    assert len(groups) >= 2, "skip_reason says why there is nothing to transfer"
    high = high_sweep(sweep)
    runs = confirm.points(groups, list(plan.seeds))
    name = f"{sweep.name}{SUFFIX}"
    phase = tracking.PHASE_TRANSFER
    results = confirm_run.run_round(
        high, text, parent_id, groups, runs, name, resume, verbose, phase
    )
    if results is None:
        return None
    confirm.collect(groups, results, high)
    found = transfer.compare(low.groups, groups, plan, words)
    tracking.log_transfer(sweep.tracking.uri, parent_id, found, sweep.search.metric)
    return found
