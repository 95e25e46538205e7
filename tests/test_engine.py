"""The worker loop's parts: device/backend choice, decay groups, schedule, one step (fp32, bf16)."""

from __future__ import annotations

import pytest
import torch

from smotune import engine
from smotune import loss as loss_mod
from smotune import model as model_mod
from smotune.config import LossConfig, ModelConfig, TrainConfig
from smotune.errors import UserError


def _cfg(**optim) -> TrainConfig:
    return TrainConfig(data={"train": "x.tar", "zeroshot": "zs"}, optim=optim, epochs=2)


@pytest.mark.parametrize(
    ("gpus", "precision", "cuda", "expected"),
    [
        (0, "auto", False, ("cpu", "gloo", None, False)),
        (0, "auto", True, ("cpu", "gloo", None, False)),
        (0, "fp32", False, ("cpu", "gloo", None, False)),
        (0, "bf16", False, ("cpu", "gloo", torch.bfloat16, False)),
        (1, "auto", True, ("cuda", "nccl", torch.bfloat16, False)),
        (0.5, "fp32", True, ("cuda", "nccl", None, False)),
        (1, "fp16", True, ("cuda", "nccl", torch.float16, True)),
    ],
)
def test_choose_runtime(gpus, precision, cuda, expected):
    rt = engine.choose_runtime(gpus, precision, cuda)
    assert (rt.device_type, rt.backend, rt.autocast_dtype, rt.grad_scaler) == expected


def test_runtime_mistakes_are_user_errors():
    with pytest.raises(UserError, match="workers.gpus"):
        engine.choose_runtime(1, "auto", cuda_available=False)
    with pytest.raises(UserError, match="precision"):
        engine.choose_runtime(0, "fp16", cuda_available=False)


def test_weight_decay_only_on_weight_matrices():
    m = model_mod.create(ModelConfig(), seed=0)
    no_decay, decay = engine.param_groups(m, 0.5)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.5
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "token_embedding.weight" in decayed
    assert "transformer.resblocks.0.mlp.c_fc.weight" in decayed
    assert "visual.conv1.weight" in decayed
    for name in (
        "logit_scale",
        "positional_embedding",
        "visual.positional_embedding",
        "visual.class_embedding",
        "ln_final.weight",
        "transformer.resblocks.0.ln_1.bias",
        "transformer.resblocks.0.mlp.c_fc.bias",
    ):
        assert name in kept, name
    assert len(decayed) + len(kept) == len(names)


def test_lr_warmup_then_cosine_to_floor():
    cfg = _cfg(lr=1e-3, min_lr=1e-5, warmup_steps=10)
    total = 110
    lrs = [engine.lr_at(s, cfg, total) for s in range(total)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[60] == pytest.approx((1e-3 + 1e-5) / 2)
    assert engine.lr_at(total, cfg, total) == pytest.approx(1e-5)
    assert engine.lr_at(10 * total, cfg, total) == pytest.approx(1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_step_on_cpu_lowers_the_loss(precision):
    torch.manual_seed(0)
    m = model_mod.create(ModelConfig(text_dropout=0.1), seed=0)
    tok = model_mod.tokenizer("tiny-vit")
    images = torch.randn(16, 3, 32, 32)
    texts = tok([f"caption {i}" for i in range(16)])
    rt = engine.choose_runtime(0, precision, cuda_available=False)
    criterion = loss_mod.build(LossConfig(label_smoothing=0.1), 0, 1)
    opt = torch.optim.AdamW(engine.param_groups(m, 0.1), lr=1e-3)
    losses = [
        engine.train_step(m, criterion, opt, None, rt, images, texts, 1e-3, 1.0) for _ in range(8)
    ]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_steps_per_epoch_reads_the_shards_the_loader_reads(tmp_path):
    """A glob in data.train is counted like the loader expands it (not as a literal path)."""
    from smotune.data import synth

    synth.generate(tmp_path, train_samples=300, shards=3, eval_per_class=1, seed=0)
    for spec in (f"{tmp_path}/train-{{0000..0002}}.tar", f"{tmp_path}/train-*.tar"):
        cfg = TrainConfig(
            data={"train": spec, "zeroshot": str(tmp_path / "zeroshot")}, optim={"batch_size": 16}
        )
        # rank 0 reads shards 0 and 2 (200 samples), rank 1 shard 1 (100): the smaller rules
        assert engine.steps_per_epoch(cfg, world_size=2) == 100 // 16
