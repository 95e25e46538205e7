"""Every MLflow name, tag and artifact of smotune, and the Tune callback that writes them.

Layout: one experiment per sweep; one parent run per sweep (tag ``kind=sweep``;
params ``space.<path>``, ``search.*``, ``schedule.*``; artifact ``sweep.yaml``;
at the end ``best_<metric>`` metrics, tags ``best_trial`` / ``best_run_id`` and
artifact ``best.yaml``, and the rung check: ``rung_<epoch>/tau`` ... metrics,
``rung_<epoch>/judgement`` and ``rung_check`` tags; with a transfer phase its
``transfer/*`` metrics and ``transfer_*`` tags, best moved to the config chosen at
that fidelity); one nested child run per Tune trial (run name = what it is,
``search #3 ls=0.12 wd=0.3``, ``confirm baseline seed 2``: see ``ui``; tags
``kind=trial``, ``trial_id``, ``status``, ``reason``, ``checkpoint``, ``best``,
``baseline``, ``data_damage`` (its damaged shards, one line each), ``phase``
(``search``, ``confirm``, ``transfer``), for re-runs ``seed`` and ``confirm_of``; its
description saying how it ended; params = the flattened train config with dotted
names plus ``global_batch_size``; per-epoch metrics with ``step=epoch``; artifact
``train.yaml``). The parent is named ``sweep <name>``, counts the damaged shards its
trials met (``data_damaged_shards``), and its experiment holds the saved view
``smotune: <name>`` that the URL printed at the sweep's end opens.

A trial's ``status`` tag ends as ``completed`` (ran all epochs, run FINISHED),
``early_stopped`` (stopped before its last epoch, run FINISHED), ``failed``
(an error or a NaN ``train_loss``, with ``reason``, run FAILED) or ``killed``
(the sweep ended before the trial did, with ``reason``, run KILLED).

Modules: ``names`` (the names), ``params`` (what a run logs), ``check`` (is a
tracking URI usable), ``read`` (a sweep read back), ``callback`` (the Tune
callback that turns a sweep's events into journal operations), ``journal`` (the
operations on local disk), ``writer`` (the thread that applies them, and
``smotune sync``), ``ops`` (one operation applied to MLflow), ``verdict`` (the
confirm phase's verdict), ``transfer`` (the transfer phase's result, best.yaml at
its fidelity), ``rungs`` (the rung check on the parent), ``history``
(a sweep read back as the plots' data, its plots uploaded), ``ensemble`` (a top-K
ensemble's accuracy on the parent), ``ui`` (run names, descriptions, the saved view and
its URL: how the sweep reads in MLflow's UI).
Only this package imports ``mlflow``.

A tracking store that is down, slow or refusing never stops a sweep: what it
cannot take waits in the journal and is written when it is back, by the end of
the sweep, or by ``smotune sync``.
"""

from smotune.tracking.callback import MlflowSweepCallback
from smotune.tracking.check import check_tracking, choose_uri, redact
from smotune.tracking.ensemble import log_ensemble
from smotune.tracking.journal import JOURNAL_FILE, journal_path, sweep_journal_path
from smotune.tracking.names import (
    BEST_ARTIFACT,
    BEST_PREFIX,
    COMPLETED,
    EARLY_STOPPED,
    ENSEMBLE_K,
    ENSEMBLE_TOP1,
    ENSEMBLE_TOP5,
    FAILED,
    KILLED,
    KILLED_REASON,
    KIND_SWEEP,
    KIND_TRIAL,
    METRICS,
    NAN_REASON,
    PARAM_GLOBAL_BATCH,
    PHASE_CONFIRM,
    PHASE_SEARCH,
    PHASE_TRANSFER,
    RESULT_CHECKPOINT,
    RUNNING,
    SEEDS_PREFIX,
    SWEEP_ARTIFACT,
    TAG_BEST,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_CHECKPOINT,
    TAG_DESCRIPTION,
    TAG_ENSEMBLE_MEMBERS,
    TAG_KIND,
    TAG_OPTUNA_STORAGE,
    TAG_PARENT,
    TAG_REASON,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_PATH,
    TAG_TRANSFER_FIDELITY,
    TAG_TRANSFER_VERDICT,
    TAG_TRIAL_ID,
    TAG_VERDICT,
    TRAIN_ARTIFACT,
    TUNE_KEYS,
    transfer_mean,
)
from smotune.tracking.params import train_params
from smotune.tracking.read import (
    OBJECTIVE,
    RankedTrial,
    Ranking,
    SweepTime,
    TrialRecord,
    TrialTime,
    best_trial_run,
    ranked_trials,
    sweep_parent_id,
    sweep_summary,
    sweep_time,
)
from smotune.tracking.rungs import log_rungs
from smotune.tracking.transfer import log_transfer
from smotune.tracking.ui import where_to_look
from smotune.tracking.verdict import log_verdict
from smotune.tracking.writer import sync, wait_for_plots

__all__ = [
    "BEST_ARTIFACT",
    "JOURNAL_FILE",
    "BEST_PREFIX",
    "COMPLETED",
    "EARLY_STOPPED",
    "ENSEMBLE_K",
    "ENSEMBLE_TOP1",
    "ENSEMBLE_TOP5",
    "FAILED",
    "KILLED",
    "KILLED_REASON",
    "KIND_SWEEP",
    "KIND_TRIAL",
    "METRICS",
    "NAN_REASON",
    "PARAM_GLOBAL_BATCH",
    "RESULT_CHECKPOINT",
    "RUNNING",
    "SWEEP_ARTIFACT",
    "TAG_BEST",
    "TAG_BEST_RUN_ID",
    "SEEDS_PREFIX",
    "TAG_BEST_TRIAL",
    "TAG_DESCRIPTION",
    "TAG_CHECKPOINT",
    "TAG_ENSEMBLE_MEMBERS",
    "TAG_OPTUNA_STORAGE",
    "TAG_SWEEP_PATH",
    "TAG_VERDICT",
    "PHASE_CONFIRM",
    "PHASE_SEARCH",
    "PHASE_TRANSFER",
    "TAG_TRANSFER_FIDELITY",
    "TAG_TRANSFER_VERDICT",
    "TAG_KIND",
    "TAG_PARENT",
    "TAG_REASON",
    "TAG_STATUS",
    "TAG_SWEEP",
    "TAG_TRIAL_ID",
    "TRAIN_ARTIFACT",
    "TUNE_KEYS",
    "MlflowSweepCallback",
    "RankedTrial",
    "Ranking",
    "SweepTime",
    "TrialRecord",
    "TrialTime",
    "OBJECTIVE",
    "best_trial_run",
    "check_tracking",
    "choose_uri",
    "journal_path",
    "sweep_journal_path",
    "sync",
    "redact",
    "log_ensemble",
    "log_rungs",
    "log_transfer",
    "log_verdict",
    "ranked_trials",
    "sweep_parent_id",
    "sweep_summary",
    "sweep_time",
    "train_params",
    "transfer_mean",
    "wait_for_plots",
    "where_to_look",
]
