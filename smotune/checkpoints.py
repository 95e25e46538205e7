"""A worker's checkpoint: its files, written and read back.

``model.pt`` is an open_clip state dict (``open_clip.create_model(arch,
pretrained=path)`` and clip_benchmark load it), ``train_state.pt`` the optimizer and
scaler state, epoch, step, metrics and damaged shards met, ``train.yaml`` the train
config it was trained with. The file names import without open_clip (``ensemble``
checks a sweep's checkpoints before it loads a model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from smotune.config import TrainConfig, dump_train

MODEL_FILE = "model.pt"  # open_clip-loadable state dict
STATE_FILE = "train_state.pt"  # optimizer, scaler, epoch, step, metrics
CONFIG_FILE = "train.yaml"  # the train config the checkpoint was trained with


def save(
    tmp: Path,
    parts: Any,
    metrics: dict[str, Any],
    cfg: TrainConfig,
    damage: dict[str, list[str]] | None = None,
) -> None:
    """``model.pt`` (open_clip loads it), ``train_state.pt`` and ``train.yaml`` (``cfg``) in
    ``tmp``, from ``parts`` (:class:`smotune.engine.StepParts`).

    The optimizer and scaler state (AdamW's two moments: twice the model's bytes) is
    what an exact resume needs, and only a run with epochs left resumes: the last
    epoch's checkpoint leaves it out (a finished run restarted only reports its end,
    and a run cannot be extended). Tune keeps one checkpoint per run, so a completed
    trial keeps the model's bytes, not three times them.
    """
    from smotune import model as model_mod  # open_clip: only where a checkpoint is written

    model_mod.save_checkpoint(parts.model, tmp / MODEL_FILE)
    (tmp / CONFIG_FILE).write_text(dump_train(cfg))
    resumable = metrics["epoch"] < cfg.epochs
    torch.save(
        {
            "optimizer": parts.optimizer.state_dict() if resumable else None,
            "scaler": parts.scaler.state_dict() if parts.scaler and resumable else None,
            "epoch": metrics["epoch"],
            "step": metrics["step"],
            "metrics": metrics,
            "damage": damage or {},
        },
        tmp / STATE_FILE,
    )


def load(path: str, parts: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Restore model, optimizer and scaler (the last epoch's checkpoint holds neither of the
    two); return the metrics of the checkpoint's epoch and the damaged shards met so far."""
    from smotune import model as model_mod

    module = model_mod.unwrap(parts.model)
    sd = torch.load(os.path.join(path, MODEL_FILE), map_location="cpu", weights_only=True)
    module.load_state_dict(sd["state_dict"])
    state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
    if state["optimizer"] is not None:
        parts.optimizer.load_state_dict(state["optimizer"])
    if parts.scaler and state["scaler"]:
        parts.scaler.load_state_dict(state["scaler"])
    return state["metrics"], state.get("damage") or {}
