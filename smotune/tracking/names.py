"""Every MLflow name of smotune: metric keys, tags, kinds, statuses, artifacts and reasons."""

from __future__ import annotations

from smotune.config import (
    DAMAGE_KEY,
    METRICS,  # noqa: F401  (smotune's metric names, shared with Tune)
)

TUNE_KEYS = (
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "timesteps_this_iter",
    "timesteps_since_restore",
    "episodes_total",
    "episodes_this_iter",
    "timestamp",
    "pid",
    "done",
    "should_checkpoint",
)
"""Tune's own result keys: not logged (any other numeric result key is)."""

TAG_PARENT = "mlflow.parentRunId"
TAG_KIND = "kind"
TAG_SWEEP = "sweep"
TAG_TRIAL_ID = "trial_id"
TAG_STATUS = "status"
TAG_REASON = "reason"
TAG_CHECKPOINT = "checkpoint"
TAG_BEST = "best"
TAG_BEST_TRIAL = "best_trial"
TAG_BEST_RUN_ID = "best_run_id"
TAG_PHASE = "phase"
TAG_SEED = "seed"
TAG_CONFIRM_OF = "confirm_of"
TAG_BASELINE = "baseline"  # "true" on the baseline's runs (train: as written), search or confirm
TAG_DATA_DAMAGE = DAMAGE_KEY  # a trial's damaged or unreadable shards, one line each
METRIC_DAMAGED_SHARDS = "data_damaged_shards"  # a trial's (engine) or the sweep's (parent) count
TAG_VERDICT = "verdict"
TAG_OPTUNA_STORAGE = "optuna_storage"
TAG_SWEEP_PATH = "sweep_path"
TAG_JOURNAL_KEY = "journal_key"  # the parent's key in the tracking journal: found, not re-created
PHASE_SEARCH = "search"
PHASE_CONFIRM = "confirm"
PHASE_TRANSFER = "transfer"  # a confirmed config re-run at search.transfer's fidelity
ENSEMBLE_TOP1 = "ensemble_top1"
ENSEMBLE_TOP5 = "ensemble_top5"
ENSEMBLE_K = "ensemble_k"
TAG_ENSEMBLE_MEMBERS = "ensemble_members"  # the members' trial ids, best first, comma-separated
CONFIRM_METRICS = ("baseline_top1_mean", "baseline_top1_std", "best_top1_mean", "best_top1_std")
"""The parent's metrics after the confirm phase: mean and std over seeds of ``search.metric``
(of the baseline, and of the config the verdict chose: its winner, else the baseline)."""
VERDICT_METRICS = {
    "gain": "verdict_gain",
    "lower": "verdict_gain_lower",
    "upper": "verdict_gain_upper",
    "p": "verdict_p",
    "p_needed": "verdict_p_needed",
    "df": "verdict_df",
    "sd": "verdict_sd",
}
"""The compared rival's numbers (``smotune.confirm.Comparison`` field -> parent metric)."""
SEEDS_TO_DECIDE = "verdict_seeds_to_decide"
SEEDS_PREFIX = "seeds."  # seeds.<config>: the seeds each confirmed config ran
RUNG_FIELDS = {
    "runs": "runs",
    "pairs": "pairs",
    "concordant": "concordant",
    "discordant": "discordant",
    "ties": "ties",
    "concordance": "concordance",
    "tau": "tau",
    "p_value": "p",
    "best_place": "best_place",
}
"""The parent's rung check, per ASHA rung (``smotune.rungs.RungCheck`` field -> the name after
``rung_<epoch>/``; a value that is not finite, e.g. tau when every run ties, is not logged)."""
TAG_RUNG_CHECK = "rung_check"  # the first rung's judgement: agrees, no_better_than_chance, ...

TRANSFER_FIELDS = {
    "configs": "transfer/configs",
    "pairs": "transfer/pairs",
    "concordant": "transfer/concordant",
    "discordant": "transfer/discordant",
    "ties": "transfer/ties",
    "accuracy": "transfer/decision_accuracy",
    "tau": "transfer/tau",
    "rho": "transfer/rho",
    "held": "transfer/winner_held",
    "within_noise": "transfer/discordant_within_noise",
}
"""The parent's transfer check (``smotune.transfer.Transfer``: counts, rank agreement of the two
fidelities' means, whether the winner held as 1/0; a non-finite value is not logged)."""
TRANSFER_VERDICT_METRICS = {
    "gain": "transfer/gain",
    "lower": "transfer/gain_lower",
    "upper": "transfer/gain_upper",
    "p": "transfer/p",
    "p_needed": "transfer/p_needed",
    "df": "transfer/df",
    "sd": "transfer/sd",
}
"""The compared rival's numbers at the transfer fidelity (``Comparison`` field -> metric)."""
TRANSFER_SEEDS_TO_DECIDE = "transfer/seeds_to_decide"
TAG_TRANSFER_VERDICT = "transfer_verdict"  # the verdict at the transfer fidelity
TAG_TRANSFER_CONFIG = "transfer_config"  # the rival its numbers are about
TAG_TRANSFER_FIDELITY = "transfer_fidelity"  # the overrides: "epochs 4 (search 2), ..."
TAG_TRANSFER_METHOD = "transfer_method"
TAG_TRANSFER_WINNERS = "transfer_winners"  # "<best at the search fidelity> -> <at transfer>"
TAG_TRANSFER_DISCORDANT = "transfer_discordant"  # each flipped pair in words ("none")


def transfer_mean(label: str, fidelity: str, field: str = "mean") -> str:
    """``transfer/<fidelity>/<field>/<label>``: a transferred config's mean, std or seeds
    (``field``) at the ``search`` or ``transfer`` fidelity."""
    return f"transfer/{fidelity}/{field}/{label}"


TAG_VERDICT_CONFIG = "verdict_config"  # the rival the verdict's numbers are about
TAG_VERDICT_METHOD = "verdict_method"
TAG_DESCRIPTION = "mlflow.note.content"  # a run's description in MLflow's UI
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"

RUNNING = "running"
COMPLETED = "completed"
EARLY_STOPPED = "early_stopped"
FAILED = "failed"
KILLED = "killed"
RUN_STATUS = {COMPLETED: "FINISHED", EARLY_STOPPED: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}
"""A trial's ``status`` tag -> the MLflow run status its child run ends with."""

SWEEP_ARTIFACT = "sweep.yaml"
TRAIN_ARTIFACT = "train.yaml"
BEST_ARTIFACT = "best.yaml"
PLOTS_DIR = "plots"  # the parent's plots (smotune.plots), refreshed as trials end
BEST_PREFIX = "best_"
PARAM_GLOBAL_BATCH = "global_batch_size"
RESULT_CHECKPOINT = "checkpoint_path"  # what Ray Train's TuneReportCallback adds to results

NAN_REASON = "nan loss"
KILLED_REASON = "the sweep ended before this trial finished; `smotune sweep --resume` continues it"


def rung_metric(epoch: float, field: str) -> str:
    """``rung_2/tau``: ``field`` (a key of :data:`RUNG_FIELDS`) of the check at ASHA's rung
    ``epoch`` (``rung_2.25/tau`` for a fractional rung)."""
    return f"rung_{epoch:g}/{RUNG_FIELDS[field]}"


def rung_tag(epoch: float) -> str:
    """``rung_2/judgement``: the check's judgement at ASHA's rung ``epoch``."""
    return f"rung_{epoch:g}/judgement"
