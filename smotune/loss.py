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
from open_clip.loss import gather_features
from torch import nn

from smotune.config import LossConfig


class SmoothClipLoss(nn.Module):
    """open_clip's ``ClipLoss`` (same arguments, same call) with ``label_smoothing``.

    Called as ``loss(**model_out, output_dict=True)`` with normalised
    ``image_features``, ``text_features``, the already exponentiated
    ``logit_scale`` and optionally ``logit_bias``; returns
    ``{"contrastive_loss": loss}`` (or the tensor when ``output_dict`` is false).
    The DDP gather is open_clip's ``gather_features``.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self._labels: dict[tuple[torch.device, int], torch.Tensor] = {}

    def get_ground_truth(self, device: torch.device, num_logits: int) -> torch.Tensor:
        """Column index of each row's positive (offset by ``rank * B_local`` in local mode)."""
        key = (device, num_logits)
        if key in self._labels:
            return self._labels[key]
        labels = torch.arange(num_logits, device=device, dtype=torch.long)
        if self.world_size > 1 and self.local_loss:
            labels = labels + num_logits * self.rank
        if self.cache_labels:
            self._labels = {key: labels}
        return labels

    def get_logits(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image->text and text->image logits, gathered across ranks when ``world_size > 1``."""
        if self.world_size > 1:
            all_image, all_text = gather_features(
                image_features,
                text_features,
                local_loss=self.local_loss,
                gather_with_grad=self.gather_with_grad,
                rank=self.rank,
                world_size=self.world_size,
            )
            if self.local_loss:
                per_image = logit_scale * image_features @ all_text.T
                per_text = logit_scale * text_features @ all_image.T
            else:
                per_image = logit_scale * all_image @ all_text.T
                per_text = per_image.T
        else:
            per_image = logit_scale * image_features @ text_features.T
            per_text = logit_scale * text_features @ image_features.T
        if logit_bias is not None:
            per_image = per_image + logit_bias
            per_text = per_text + logit_bias
        return per_image, per_text

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
