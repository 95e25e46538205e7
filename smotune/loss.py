"""SMOCLIP: CLIP's contrastive loss with label smoothing, exact open_clip ``ClipLoss`` at 0.

With smoothing ``e`` every row of the logits gets the soft target ``(1 - e)`` on
its positive plus ``e / K`` on each of its ``K`` columns (what
``F.cross_entropy(label_smoothing=e)`` does), so the positive gets
``1 - e + e / K``. ``K`` is the number of logit columns, which is the *global*
batch (``batch_size * world_size``) in both modes: the global mode builds
``B_global x B_global`` logits on every rank, ``local_loss`` builds
``B_local x B_global`` rows with labels offset by ``rank * B_local``. The loss
is the mean of the image->text and text->image cross-entropies, as in
open_clip. Because ``e`` is spread over the global batch, the same ``e``
regularises differently at a different global batch size; record the global
batch with every result. SMOCLIP (Marydsy/SMOCLIP ``ClipLoss_F``) is this loss
with ``e = 0.1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from smotune.config import LossConfig


class SmoothClipLoss(ClipLoss):
    """open_clip's ``ClipLoss`` with ``label_smoothing``; only ``forward`` differs.

    The logits (and the DDP gather) are ``ClipLoss.get_logits``, the positives
    ``ClipLoss.get_ground_truth``. Called as ``loss(**model_out, output_dict=True)``;
    returns ``{"contrastive_loss": loss}`` (or the tensor when ``output_dict`` is false).
    """

    def __init__(self, label_smoothing: float = 0.0, **clip_loss_args):
        super().__init__(**clip_loss_args)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        per_image, per_text = self.get_logits(
            image_features, text_features, logit_scale, logit_bias=logit_bias
        )
        labels = self.get_ground_truth(image_features.device, per_image.shape[0])
        e = self.label_smoothing
        loss = (
            F.cross_entropy(per_image, labels, label_smoothing=e)
            + F.cross_entropy(per_text, labels, label_smoothing=e)
        ) / 2
        return {"contrastive_loss": loss} if output_dict else loss


def build(cfg: LossConfig, rank: int = 0, world_size: int = 1) -> SmoothClipLoss:
    """The loss of a train config for one DDP rank (labels cached: the batch size is fixed)."""
    return SmoothClipLoss(
        label_smoothing=cfg.label_smoothing,
        local_loss=cfg.local_loss,
        gather_with_grad=cfg.gather_with_grad,
        cache_labels=True,
        rank=rank,
        world_size=world_size,
    )
