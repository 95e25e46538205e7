"""SmoothClipLoss against open_clip's ClipLoss and an explicit soft-target computation,
in one process and under a real 2-process gloo group."""

from __future__ import annotations

import datetime
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
import torch.nn.functional as F
from open_clip.loss import ClipLoss, gather_features

from smotune.config import LossConfig
from smotune.loss import SmoothClipLoss, build

DIM = 16
SCALE = torch.tensor(14.3)


def features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    return image, text


def soft_ce(logits: torch.Tensor, positives: torch.Tensor, e: float) -> torch.Tensor:
    """Cross-entropy against an explicit target matrix: 1-e on the positive, e/K on every column."""
    k = logits.shape[1]
    target = torch.full_like(logits, e / k)
    target[torch.arange(len(positives)), positives] += 1 - e
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def hand_global(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, e: float):
    logits = scale * image @ text.T
    pos = torch.arange(len(image))
    return (soft_ce(logits, pos, e) + soft_ce(logits.T, pos, e)) / 2


def leaves(image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image.clone().requires_grad_(True), text.clone().requires_grad_(True)


@pytest.mark.parametrize("batch", [1, 2, 7, 32])
def test_equals_open_clip_at_zero_smoothing(batch):
    image, text = features(batch, seed=batch)
    ours_i, ours_t = leaves(image, text)
    ref_i, ref_t = leaves(image, text)
    ours = SmoothClipLoss()(ours_i, ours_t, SCALE)
    ref = ClipLoss()(ref_i, ref_t, SCALE)
    ours.backward()
    ref.backward()
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert torch.allclose(ours_i.grad, ref_i.grad, atol=1e-6, rtol=0)
    assert torch.allclose(ours_t.grad, ref_t.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("e", [0.1, 0.3])
@pytest.mark.parametrize("batch", [2, 9])
def test_smoothing_matches_explicit_soft_targets(e, batch):
    image, text = features(batch, seed=100 + batch)
    ours_i, ours_t = leaves(image, text)
    hand_i, hand_t = leaves(image, text)
    ours = SmoothClipLoss(label_smoothing=e)(ours_i, ours_t, SCALE)
    hand = hand_global(hand_i, hand_t, SCALE, e)
    ours.backward()
    hand.backward()
    assert torch.allclose(ours, hand, atol=1e-5, rtol=0)
    assert torch.allclose(ours_i.grad, hand_i.grad, atol=1e-6, rtol=0)
    assert torch.allclose(ours_t.grad, hand_t.grad, atol=1e-6, rtol=0)


def test_takes_open_clip_model_output():
    from smotune.config import ModelConfig
    from smotune.model import create

    model = create(ModelConfig(arch="tiny-vit"), seed=0)
    out = model(torch.randn(4, 3, 32, 32), torch.randint(1, 100, (4, 32)))
    out["logit_bias"] = torch.tensor(-2.0)
    ours = SmoothClipLoss()(**out, output_dict=True)
    ref = ClipLoss()(**out, output_dict=True)
    assert set(ours) == {"contrastive_loss"}
    assert torch.allclose(ours["contrastive_loss"], ref["contrastive_loss"], atol=1e-6, rtol=0)


def test_build_from_config_and_range_check():
    loss = build(LossConfig(label_smoothing=0.2, local_loss=True), rank=1, world_size=4)
    assert (loss.label_smoothing, loss.local_loss, loss.gather_with_grad) == (0.2, True, True)
    assert (loss.rank, loss.world_size, loss.cache_labels) == (1, 4, True)
    assert loss.get_ground_truth(torch.device("cpu"), 3).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="label_smoothing"):
        SmoothClipLoss(label_smoothing=1.0)


# ------------------------------------------------------------------ 2-process gloo group

WORLD = 2
LOCAL_BATCH = 5
SMOOTHINGS = (0.0, 0.1, 0.25)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> None:
    assert torch.allclose(a, b, atol=atol, rtol=0), f"{what}: max diff {(a - b).abs().max()}"


def _ddp_worker(rank: int, init_file: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        all_image, all_text = features(WORLD * LOCAL_BATCH, seed=7)
        mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for local_loss, with_grad in itertools.product((False, True), repeat=2):
            mode = dict(local_loss=local_loss, gather_with_grad=with_grad, rank=rank)
            for e in SMOOTHINGS:
                what = f"rank {rank} local_loss={local_loss} gather_with_grad={with_grad} e={e}"
                ours_i, ours_t = leaves(all_image[mine], all_text[mine])
                ours = SmoothClipLoss(label_smoothing=e, world_size=WORLD, **mode)
                value = ours(ours_i, ours_t, SCALE)
                value.backward()

                # the value: the hand computation over the gathered global batch
                expected = hand_global(all_image, all_text, SCALE, e)
                if local_loss:
                    mean = value.detach().clone()
                    dist.all_reduce(mean)
                    _close(mean / WORLD, expected, 1e-5, f"{what}: mean over ranks")
                else:
                    _close(value.detach(), expected, 1e-5, f"{what}: value")

                # the gradients: explicit soft targets through the same gather
                hand_i, hand_t = leaves(all_image[mine], all_text[mine])
                gi, gt = gather_features(
                    hand_i, hand_t, local_loss, with_grad, rank=rank, world_size=WORLD
                )
                if local_loss:
                    pos = torch.arange(LOCAL_BATCH) + rank * LOCAL_BATCH
                    hand = (
                        soft_ce(SCALE * hand_i @ gt.T, pos, e)
                        + soft_ce(SCALE * hand_t @ gi.T, pos, e)
                    ) / 2
                else:
                    hand = hand_global(gi, gt, SCALE, e)
                hand.backward()
                _close(ours_i.grad, hand_i.grad, 1e-6, f"{what}: image grad vs hand")
                _close(ours_t.grad, hand_t.grad, 1e-6, f"{what}: text grad vs hand")

                if e == 0.0:
                    ref_i, ref_t = leaves(all_image[mine], all_text[mine])
                    ref = ClipLoss(world_size=WORLD, **mode)(ref_i, ref_t, SCALE)
                    ref.backward()
                    _close(value.detach(), ref.detach(), 1e-6, f"{what}: value vs ClipLoss")
                    _close(ours_i.grad, ref_i.grad, 1e-6, f"{what}: image grad vs ClipLoss")
                    _close(ours_t.grad, ref_t.grad, 1e-6, f"{what}: text grad vs ClipLoss")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_group(tmp_path):
    context = tmp.spawn(_ddp_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=False)
    for _ in range(120):
        if context.join(timeout=1):
            return
    for process in context.processes:
        process.kill()
    pytest.fail("the 2-process gloo group did not finish within 120 s")
