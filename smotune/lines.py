"""The one text of an epoch's metrics: the Train workers' log, ``smotune train``'s console and
a sweep's console all print :func:`epoch_line` (a sweep puts its objective first).

Pure (no torch, no Ray): the workers import it beside torch, the drivers without it.
"""

from __future__ import annotations

from typing import Any

FIELDS = (
    ("zeroshot_top1", "{:.4f}"),
    ("zeroshot_top5", "{:.4f}"),
    ("train_loss", "{:.4f}"),
    ("samples_per_s", "{:.0f}"),
)
"""What an epoch line shows when the metrics hold it, in this order (``data_skipped`` after
them when any sample was skipped)."""


def epoch_line(metrics: dict[str, Any], epochs: int, first: str | None = None) -> str:
    """``epoch k/N  zeroshot_top1 0.2500  zeroshot_top5 ...``: ``first`` (a sweep's objective)
    leads, then the other metrics of :data:`FIELDS` the result holds."""
    fmt = dict(FIELDS)
    keys = [first, *(k for k, _ in FIELDS if k != first)] if first else [k for k, _ in FIELDS]
    parts = [f"epoch {metrics.get('epoch')}/{epochs}"]
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} {fmt.get(key, '{:.4g}').format(value)}")
    skipped = metrics.get("data_skipped")
    if isinstance(skipped, int | float) and skipped > 0:
        parts.append(f"data_skipped {skipped:g}")
    return "  ".join(parts)
