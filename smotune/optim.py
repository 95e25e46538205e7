"""AdamW's parameter groups (open_clip_train's no-decay rule) and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from smotune.config import TrainConfig

NO_DECAY_NAMES = ("bn", "ln", "bias", "logit_scale")  # open_clip_train's exclude rule


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups ``[no decay, decay]``, split exactly as open_clip_train splits them.

    A trainable parameter gets no weight decay when it has fewer than 2 dimensions
    (biases, norm gains, ``logit_scale``, a ViT's ``class_embedding``) or its name
    contains ``bn``, ``ln``, ``bias`` or ``logit_scale``; every other one is decayed,
    token and positional embeddings included (open_clip_train's ``exclude`` lambda in
    ``main.py``, shared by CLIP-rocket and LaCLIP). Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(key in name for key in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up from 0 to ``lr``, then cosine from ``lr`` to ``min_lr``."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, total_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))
