"""The transfer phase's outcome on the sweep's parent run, and best.yaml at its fidelity.

The parent gets the transfer check (``transfer/tau``, ``rho``,
``decision_accuracy``, ``pairs``, ``concordant``, ``discordant``, ``ties``,
``winner_held``, ``discordant_within_noise``, ``configs``), each transferred
config's mean, std and seeds at both fidelities
(``transfer/<search|transfer>/<mean|std|seeds>/<config>``), the compared rival's
numbers at the transfer fidelity (``transfer/gain``, ``lower``, ``upper``, ``p``,
``p_needed``, ``df``, ``sd``, ``seeds_to_decide``), and the tags
``transfer_verdict``, ``transfer_config``, ``transfer_fidelity``,
``transfer_method``, ``transfer_winners``, ``transfer_discordant``. The sweep's
description becomes the verdict at the transfer fidelity. ``best.yaml``, the
``best`` tag, ``best_trial``, ``best_run_id`` and ``best_<metric>`` move to the
config chosen there (its winner, else the baseline), its transfer runs: best.yaml
is the config at the largest fidelity run. The confirm phase's ``verdict*`` and
``baseline_*`` stay as they were.
"""

from __future__ import annotations

import math
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag

from smotune.tracking.names import (
    CONFIRM_METRICS,
    PHASE_TRANSFER,
    TAG_DESCRIPTION,
    TAG_TRANSFER_CONFIG,
    TAG_TRANSFER_DISCORDANT,
    TAG_TRANSFER_FIDELITY,
    TAG_TRANSFER_METHOD,
    TAG_TRANSFER_VERDICT,
    TAG_TRANSFER_WINNERS,
    TRANSFER_FIELDS,
    TRANSFER_SEEDS_TO_DECIDE,
    TRANSFER_VERDICT_METRICS,
    transfer_mean,
)
from smotune.tracking.verdict import log_on_parent, point_best
from smotune.transfer import Transfer


def transfer_record(found: Transfer, metric: str) -> dict[str, Any]:
    """What the parent gets, as plain data (the journal's ``transfer`` operation)."""
    v = found.verdict
    held = found.held
    values: dict[str, float] = {
        "configs": len(found.ranked),
        "pairs": len(found.pairs),
        "concordant": found.concordant,
        "discordant": len(found.discordant),
        "ties": found.ties,
        "accuracy": found.accuracy,
        "tau": found.tau,
        "rho": found.rho,
        "held": math.nan if held is None else float(held),
        "within_noise": len(found.within_noise),
    }
    metrics = {TRANSFER_FIELDS[k]: float(x) for k, x in values.items()}
    for fidelity, groups in (("search", found.low), ("transfer", found.high)):
        for g in groups:
            metrics[transfer_mean(g.label, fidelity)] = g.mean
            metrics[transfer_mean(g.label, fidelity, "std")] = g.std
            metrics[transfer_mean(g.label, fidelity, "seeds")] = g.n
    shown = v.shown
    if shown is not None:
        metrics.update(
            {name: float(getattr(shown, f)) for f, name in TRANSFER_VERDICT_METRICS.items()}
        )
    if v.seeds_to_decide is not None:
        metrics[TRANSFER_SEEDS_TO_DECIDE] = v.seeds_to_decide
    flipped = "; ".join(p.words() for p in found.discordant) or "none"
    chosen = v.chosen if v.verdict is not None else None
    if chosen is not None and chosen.n:  # best_top1_mean/std: best.yaml's config, its fidelity
        metrics.update(dict(zip(CONFIRM_METRICS[2:], [chosen.mean, chosen.std], strict=True)))
    return {
        "verdict": v.verdict,
        "words": found.words(metric),
        "method": v.design.method if v.design is not None else "",
        "chosen": chosen.label if chosen is not None else None,
        "compared": shown.group.label if shown is not None else "",
        "fidelity": found.fidelity,
        "winners": f"{found.winner_low} -> {found.winner_high}",
        "discordant": flipped,
        "metrics": {k: float(x) for k, x in metrics.items() if math.isfinite(x)},
    }


def log_transfer(uri: str, parent_id: str, found: Transfer, metric: str) -> None:
    """Log the transfer phase on the parent and point best.yaml at its chosen config, through
    the sweep's journal (a ``tracking:`` line if it cannot be written now), or at once outside
    a sweep. The parent's plots are drawn again after it."""
    log_on_parent(uri, parent_id, "transfer", transfer_record(found, metric), write_transfer)


def write_transfer(
    client: mlflow.MlflowClient, parent_id: str, record: dict[str, Any], now: int
) -> str | None:
    """What :func:`log_transfer` writes (the journal's ``transfer`` operation); the run id
    best.yaml now comes from (None: best stays where the confirm phase put it)."""
    tags = [
        RunTag(TAG_TRANSFER_VERDICT, record["verdict"] or "none"),
        RunTag(TAG_TRANSFER_FIDELITY, record["fidelity"]),
        RunTag(TAG_TRANSFER_WINNERS, record["winners"]),
        RunTag(TAG_TRANSFER_DISCORDANT, record["discordant"][:5000]),  # MLflow's tag limit
        RunTag(TAG_DESCRIPTION, record["words"]),
    ]
    if record.get("method"):
        tags.append(RunTag(TAG_TRANSFER_METHOD, record["method"]))
    if record.get("compared"):
        tags.append(RunTag(TAG_TRANSFER_CONFIG, record["compared"]))
    metrics = dict(record["metrics"])
    best_id = None
    if record.get("chosen"):
        best_id = point_best(client, parent_id, PHASE_TRANSFER, record["chosen"], tags, metrics)
    client.log_batch(
        parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()], tags=tags
    )
    return best_id
