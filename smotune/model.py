"""open_clip models by name, with text-encoder dropout.

Any open_clip architecture works by name (``ViT-B-32``, ``RN50``, ...), always
without pretrained weights. smotune registers its own small CPU-sized configs
(``tiny-vit``, ``small-vit``; JSON files in ``smotune/model_configs``) with
open_clip on import, so ``open_clip.create_model("tiny-vit", pretrained=ckpt)``
works wherever this module has been imported.

Text dropout: every residual block of the text transformer computes
``x + ls_1(attn(ln_1(x)))`` then ``x + ls_2(mlp(ln_2(x)))`` and ``ls_1``/``ls_2``
are ``nn.Identity`` in open_clip's text towers. Replacing them with
``nn.Dropout(p)`` drops the attention and MLP outputs before they are added
to the residual stream, only in train mode, and keeps the state-dict keys, so
checkpoints load in plain open_clip. CLIP-rocket instead drops the residual
stream entering each block, and only on its augmented text views; ours is a
single-view approximation of that recipe. The vision tower is left alone.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import nn

from smotune.config import MODEL_CONFIG_DIR, ModelConfig
from smotune.errors import UserError

open_clip.add_model_config(MODEL_CONFIG_DIR)


def text_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of the text transformer (``CLIP`` or ``CustomTextCLIP``)."""
    if hasattr(model, "transformer") and hasattr(model.transformer, "resblocks"):
        return list(model.transformer.resblocks)
    text = getattr(model, "text", None)
    if text is not None and hasattr(getattr(text, "transformer", None), "resblocks"):
        return list(text.transformer.resblocks)
    raise ValueError(f"{type(model).__name__} has no open_clip text transformer blocks")


def set_text_dropout(model: nn.Module, p: float) -> int:
    """Put dropout ``p`` on the attention and MLP outputs of every text block.

    Returns the number of dropout layers placed. ``p == 0`` restores identities.
    """
    count = 0
    for block in text_blocks(model):
        for name in ("ls_1", "ls_2"):
            current = getattr(block, name)
            if not isinstance(current, nn.Identity | nn.Dropout):
                raise ValueError(
                    f"text block {name} is {type(current).__name__} (layer scale); "
                    "text dropout needs an arch without text ls_init_value"
                )
            setattr(block, name, nn.Dropout(p) if p > 0 else nn.Identity())
            count += p > 0
    return count


def create(cfg: ModelConfig, seed: int | None = None) -> nn.Module:
    """A fresh (randomly initialised) open_clip model for ``cfg``, dropout applied."""
    if cfg.arch not in open_clip.list_models():
        raise UserError(
            "config",
            "model.arch",
            f"unknown open_clip architecture {cfg.arch!r}",
            "use one of tiny-vit, small-vit, ViT-B-32, RN50 (see open_clip.list_models())",
        )
    if seed is not None:
        torch.manual_seed(seed)
    model = open_clip.create_model(cfg.arch, pretrained=None, output_dict=True)
    set_text_dropout(model, cfg.text_dropout)
    return model


def transforms(model: nn.Module, train: bool):
    """open_clip's image transform for this model (train: random resized crop)."""
    pp = model.visual.preprocess_cfg
    return open_clip.image_transform(
        model.visual.image_size,
        is_train=train,
        mean=pp.get("mean"),
        std=pp.get("std"),
        resize_mode=pp.get("resize_mode"),
        interpolation=pp.get("interpolation"),
    )


def tokenizer(arch: str):
    return open_clip.get_tokenizer(arch)


def unwrap(model: nn.Module) -> nn.Module:
    """The open_clip model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    """An open_clip-loadable checkpoint: ``{"state_dict": ...}`` of the unwrapped model."""
    torch.save({"state_dict": unwrap(model).state_dict()}, path)
