"""Zero-shot top-1/top-5 of a CLIP model on an eval set, computed as clip_benchmark does.

Classifier: open_clip's ``build_zero_shot_classifier`` (for each class,
``t.format(c=name)`` for every template, encode, normalise each embedding,
average over templates, normalise again; the columns of a (D, C) matrix).
Scores: ``100 * normalize(encode_image(x)) @ W``; a sample counts for top-k
when its label is among the k highest scores.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from smotune.data.zeroshot import FIELD, EvalSet
from smotune.errors import UserError


def _unwrap(model: nn.Module) -> nn.Module:
    """The open_clip model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def classifier(
    model: nn.Module,
    tokenizer,
    classnames: list[str],
    templates: list[str],
    device: torch.device | str,
    batch_size: int = 256,
) -> torch.Tensor:
    """The (D, C) zero-shot classifier: open_clip's ``build_zero_shot_classifier``.

    ``templates`` are ``{c}`` format strings (clip_benchmark's files), wrapped as the
    callables open_clip takes; each forward encodes whole classes, ``batch_size``
    texts at most (one class when it has more templates). Runs in eval mode.
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        return open_clip.build_zero_shot_classifier(
            model,
            tokenizer,
            classnames,
            [functools.partial(_fill, template) for template in templates],
            num_classes_per_batch=max(1, batch_size // len(templates)),
            device=device,
        )
    finally:
        model.train(was_training)


def _fill(template: str, classname: str) -> str:
    return template.format(c=classname)


def zero_shot(
    model: nn.Module,
    tokenizer,
    evalset: EvalSet,
    device: torch.device | str,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float | int]:
    """``zeroshot_top1``, ``zeroshot_top5`` (fractions) and ``zeroshot_samples`` on ``evalset``.

    The image pass runs under ``torch.autocast`` when ``autocast_dtype`` is given;
    logits are computed in fp32. Top-5 means top-min(5, C). The model's train/eval
    mode is restored afterwards.
    """
    device = torch.device(device)
    model = _unwrap(model)
    was_training = model.training
    weights = classifier(
        model, tokenizer, evalset.classnames, evalset.templates, device, batch_size
    )
    k = min(5, len(evalset.classnames))
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    )
    top1 = top5 = samples = 0
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in evalset.loader(batch_size):
                images, labels = images.to(device), labels.to(device)
                with autocast:
                    features = model.encode_image(images)
                logits = 100.0 * F.normalize(features.float(), dim=-1) @ weights
                correct = logits.topk(k, dim=1).indices == labels[:, None]
                top1 += int(correct[:, 0].sum())
                top5 += int(correct.any(dim=1).sum())
                samples += len(labels)
    finally:
        model.train(was_training)
    if samples == 0:
        raise UserError(
            str(evalset.root),
            FIELD,
            f"no readable images ({evalset.skipped} skipped)",
            "check the eval set's images",
        )
    return {
        "zeroshot_top1": top1 / samples,
        "zeroshot_top5": top5 / samples,
        "zeroshot_samples": samples,
    }
