"""Zero-shot evaluation against clip_benchmark's own classifier and classification run."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_benchmark.metrics.zeroshot_classification import (
    run_classification,
    zero_shot_classifier,
)
from PIL import Image

from smotune import evaluate, model
from smotune.config import ModelConfig
from smotune.data import synth, zeroshot


@pytest.fixture(scope="module")
def clip():
    net = model.create(ModelConfig(arch="tiny-vit"), seed=0)
    return net, model.tokenizer("tiny-vit"), model.transforms(net, train=False)


@pytest.fixture(scope="module")
def evalset(tmp_path_factory, clip):
    out = tmp_path_factory.mktemp("eval-synth")
    synth.generate(out, train_samples=16, shards=1, eval_per_class=2, seed=0)
    return zeroshot.load(out / "zeroshot", transform=clip[2])


def clip_benchmark_scores(net, tokenizer, evalset) -> tuple[torch.Tensor, float, float, int]:
    """clip_benchmark's own classifier and logits (fp32: amp off), top-k ranked from its logits
    with numpy (its ``accuracy()`` breaks on numpy 2)."""
    net.eval()
    weights = zero_shot_classifier(
        net, tokenizer, evalset.classnames, evalset.templates, "cpu", amp=False
    )
    logits, target = run_classification(
        net, weights, evalset.loader(batch_size=17), "cpu", amp=False
    )
    ranked = np.argsort(-logits.numpy(), axis=1, kind="stable")
    hits = ranked == target.numpy()[:, None]
    n = len(target)
    return weights, float(hits[:, 0].sum()) / n, float(hits[:, :5].any(axis=1).sum()) / n, n


def test_zero_shot_matches_clip_benchmark(clip, evalset):
    net, tokenizer, _ = clip
    weights, top1, top5, n = clip_benchmark_scores(net, tokenizer, evalset)
    got = evaluate.zero_shot(net, tokenizer, evalset, torch.device("cpu"), batch_size=64)
    assert got == {"zeroshot_top1": top1, "zeroshot_top5": top5, "zeroshot_samples": n}
    assert n == 2 * len(synth.CLASSES)
    assert 0.0 <= top1 <= top5 <= 1.0 and top5 > top1
    built = evaluate.classifier(net, tokenizer, evalset.classnames, evalset.templates, "cpu", 50)
    assert built.shape == (64, len(synth.CLASSES))
    np.testing.assert_allclose(built.numpy(), weights.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(built.norm(dim=0).numpy(), 1.0, atol=1e-6)


def test_runs_in_eval_mode_and_restores_the_mode(clip, evalset):
    _, tokenizer, _ = clip
    net = model.create(ModelConfig(arch="tiny-vit", text_dropout=0.3), seed=0)
    net.eval()
    first = evaluate.zero_shot(net, tokenizer, evalset, "cpu")
    assert not net.training
    net.train()
    assert evaluate.zero_shot(net, tokenizer, evalset, "cpu") == first
    assert net.training and net.transformer.resblocks[0].ls_1.training


def test_autocast_bf16_runs_and_reports_fractions(clip, evalset):
    net, tokenizer, _ = clip
    got = evaluate.zero_shot(net, tokenizer, evalset, "cpu", autocast_dtype=torch.bfloat16)
    assert got["zeroshot_samples"] == 2 * len(synth.CLASSES)
    assert 0.0 <= got["zeroshot_top1"] <= got["zeroshot_top5"] <= 1.0


def test_fewer_than_five_classes_top5_is_top_c(clip, tmp_path: Path):
    net, tokenizer, transform = clip
    for i, name in enumerate(["red_square", "blue_square", "green_square"]):
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 40), (200 * (i == 0), 200 * (i == 2), 200 * (i == 1))).save(
            tmp_path / name / "a.png"
        )
    small = zeroshot.load(tmp_path, transform=transform)
    got = evaluate.zero_shot(net, tokenizer, small, "cpu")
    assert got["zeroshot_top5"] == 1.0 and got["zeroshot_samples"] == 3


def test_ranks_scoring_their_parts_give_the_whole_sets_numbers(clip, evalset):
    """Two ranks (threads here; the Train workers' gloo all_reduce is test_train's two-worker
    run), each with its own copy of the model, encoding half of the classes' templates and
    scoring half of the eval set, the classifier and the counts summed: both build the whole
    classifier and give exactly what one process scoring the whole set gives."""
    net, tokenizer, transform = clip
    whole = evaluate.zero_shot(net, tokenizer, evalset, "cpu", batch_size=16)
    weights = evaluate.classifier(net, tokenizer, evalset.classnames, evalset.templates, "cpu", 16)
    world, barrier, shared = 2, threading.Barrier(2), {}
    got, mine, texts, built = {}, {}, {}, {}

    def rank(r: int) -> None:
        part = zeroshot.load(evalset.root, transform=transform, part=(r, world))
        mine[r] = sum(len(labels) for _, labels in part.loader(16))
        texts[r] = 0

        def counting(batch: list[str]) -> torch.Tensor:
            texts[r] += len(batch)
            return tokenizer(batch)

        def sum_ranks(t: torch.Tensor) -> torch.Tensor:
            shared[r] = t
            barrier.wait()
            total = sum(shared.values())
            barrier.wait()  # both have read before either writes its next tensor
            return total

        model = copy.deepcopy(net)
        built[r] = evaluate.classifier(
            model, counting, part.classnames, part.templates, "cpu", 16, part.part, sum_ranks
        )
        texts[r] = 0
        got[r] = evaluate.zero_shot(model, counting, part, "cpu", 16, None, sum_ranks)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert mine == {0: 48, 1: 48}  # each rank scored half of the 96
    half = len(synth.CLASSES) // 2 * len(evalset.templates)
    assert texts == {0: half, 1: half}  # and encoded half of the class templates
    for r in range(world):
        torch.testing.assert_close(built[r], weights, rtol=0, atol=1e-6)
    assert got == {0: whole, 1: whole}
