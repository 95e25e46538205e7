"""Zero-shot top-1/top-5 of a CLIP model on an eval set, computed as clip_benchmark does.

Classifier: open_clip's ``build_zero_shot_classifier`` (for each class,
``t.format(c=name)`` for every template, encode, normalise each embedding,
average over templates, normalise again; the columns of a (D, C) matrix).
Scores: ``100 * normalize(encode_image(x)) @ W``; a sample counts for top-k
when its label is among the k highest scores. Across DDP ranks (``EvalSet.part``
gives rank and world) each rank builds the columns of every W-th class and the
columns are summed into the whole W; each rank scores its part of the set and
the counts are summed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from smotune.data.zeroshot import FIELD, EvalSet
from smotune.errors import UserError
from smotune.model import unwrap

SumRanks = Callable[[torch.Tensor], torch.Tensor]  # every rank's tensor in, their sum out


def classifier(
    model: nn.Module,
    tokenizer,
    classnames: list[str],
    templates: list[str],
    device: torch.device | str,
    batch_size: int = 256,
    part: tuple[int, int] = (0, 1),
    sum_ranks: SumRanks | None = None,
) -> torch.Tensor:
    """The (D, C) zero-shot classifier: open_clip's ``build_zero_shot_classifier``.

    ``templates`` are ``{c}`` format strings (clip_benchmark's files), wrapped as the
    callables open_clip takes; each forward encodes whole classes, ``batch_size``
    texts at most (one class when it has more templates). Runs in eval mode. With
    ``sum_ranks``, rank ``r`` of ``part = (r, W)`` builds the columns of classes
    ``r, r + W, ...`` into a zero matrix and the ranks' matrices are summed: every
    column comes from one rank, so the sum is the whole classifier (every rank
    builds all of it when there are more ranks than classes).
    """
    model = unwrap(model)
    rank, world = part if sum_ranks is not None and part[1] <= len(classnames) else (0, 1)
    mine = list(range(rank, len(classnames), world))
    was_training = model.training
    model.eval()
    try:
        built = open_clip.build_zero_shot_classifier(
            model,
            tokenizer,
            [classnames[i] for i in mine],
            [functools.partial(_fill, template) for template in templates],
            num_classes_per_batch=max(1, batch_size // len(templates)),
            device=device,
        )
    finally:
        model.train(was_training)
    if world == 1:
        return built
    weights = built.new_zeros(built.shape[0], len(classnames))
    weights[:, mine] = built
    return sum_ranks(weights)


def _fill(template: str, classname: str) -> str:
    return template.format(c=classname)


def scored_batches(
    model: nn.Module,
    tokenizer,
    evalset: EvalSet,
    device: torch.device | str,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    sum_ranks: SumRanks | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(logits [B, C], labels [B])`` per batch of ``evalset``, in the loader's fixed order.

    ``logits = 100 * normalize(encode_image(x)) @ W`` in fp32, ``W`` the classifier of
    :func:`classifier` (built over the ranks with ``sum_ranks``). The image pass runs
    under ``torch.autocast`` when ``autocast_dtype`` is given. The model's train/eval
    mode is restored afterwards.
    """
    device = torch.device(device)
    model = unwrap(model)
    was_training = model.training
    weights = classifier(
        model,
        tokenizer,
        evalset.classnames,
        evalset.templates,
        device,
        batch_size,
        evalset.part,
        sum_ranks,
    )
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    )
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in evalset.loader(batch_size):
                images, labels = images.to(device), labels.to(device)
                with autocast:
                    features = model.encode_image(images)
                yield 100.0 * F.normalize(features.float(), dim=-1) @ weights, labels
    finally:
        model.train(was_training)


def hits(scores: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many samples have their label first, and among the top min(5, C), of ``scores``."""
    k = min(5, scores.shape[1])
    correct = scores.topk(k, dim=1).indices == labels[:, None]
    return int(correct[:, 0].sum()), int(correct.any(dim=1).sum())


def no_images(evalset: EvalSet) -> UserError:
    return UserError(
        str(evalset.root),
        FIELD,
        f"no readable images ({evalset.skipped} skipped)",
        "check the eval set's images",
    )


def zero_shot(
    model: nn.Module,
    tokenizer,
    evalset: EvalSet,
    device: torch.device | str,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    sum_ranks: SumRanks | None = None,
) -> dict[str, float | int]:
    """``zeroshot_top1``, ``zeroshot_top5`` (fractions) and ``zeroshot_samples`` on ``evalset``.

    Scored from :func:`scored_batches`; top-5 means top-min(5, C). With ``sum_ranks``
    (every rank calls it with a tensor and gets the sum over the ranks) each rank
    builds its share of the classifier and scores only its part of the set, and all
    return the whole set's numbers.
    """
    top1 = top5 = samples = 0
    for logits, labels in scored_batches(
        model, tokenizer, evalset, device, batch_size, autocast_dtype, sum_ranks
    ):
        one, five = hits(logits, labels)
        top1, top5, samples = top1 + one, top5 + five, samples + len(labels)
    if sum_ranks is not None:
        counts = sum_ranks(torch.tensor([top1, top5, samples], dtype=torch.float64))
        top1, top5, samples = (int(n) for n in counts.tolist())
    if samples == 0:
        raise no_images(evalset)
    return {
        "zeroshot_top1": top1 / samples,
        "zeroshot_top5": top5 / samples,
        "zeroshot_samples": samples,
    }
