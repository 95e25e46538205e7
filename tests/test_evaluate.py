"""Zero-shot evaluation against a plain per-class, per-template reference computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


def reference(net, tokenizer, evalset) -> tuple[np.ndarray, float, float, int]:
    """clip_benchmark's computation written out: one class at a time, numpy ranking."""
    net.eval()
    with torch.no_grad():
        columns = []
        for name in evalset.classnames:
            texts = [t.format(c=name) for t in evalset.templates]
            emb = F.normalize(net.encode_text(tokenizer(texts)), dim=-1).mean(dim=0)
            columns.append(emb / emb.norm())
        weights = torch.stack(columns, dim=1)
        top1 = top5 = n = 0
        for images, labels in evalset.loader(batch_size=17):
            feats = F.normalize(net.encode_image(images), dim=-1)
            logits = (100.0 * feats @ weights).numpy()
            for row, label in zip(logits, labels.numpy(), strict=True):
                top1 += int(np.argmax(row) == label)
                top5 += int(label in np.argsort(-row)[:5])
                n += 1
    return weights.numpy(), top1 / n, top5 / n, n


def test_zero_shot_matches_reference(clip, evalset):
    net, tokenizer, _ = clip
    weights, top1, top5, n = reference(net, tokenizer, evalset)
    got = evaluate.zero_shot(net, tokenizer, evalset, torch.device("cpu"), batch_size=64)
    assert got == {"zeroshot_top1": top1, "zeroshot_top5": top5, "zeroshot_samples": n}
    assert n == 2 * len(synth.CLASSES)
    assert 0.0 <= top1 <= top5 <= 1.0 and top5 > top1
    built = evaluate.classifier(net, tokenizer, evalset.classnames, evalset.templates, "cpu", 50)
    assert built.shape == (64, len(synth.CLASSES))
    np.testing.assert_allclose(built.numpy(), weights, rtol=0, atol=1e-6)
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
