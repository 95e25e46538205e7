"""The worker loop's parts: device/backend choice, decay groups, schedule, one step (fp32, bf16)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import open_clip
import pytest
import torch

from smotune import engine, runtime
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
    rt = runtime.choose_runtime(gpus, precision, cuda)
    assert (rt.device_type, rt.backend, rt.autocast_dtype, rt.grad_scaler) == expected


def test_runtime_mistakes_are_user_errors():
    with pytest.raises(UserError, match="workers.gpus"):
        runtime.choose_runtime(1, "auto", cuda_available=False)
    with pytest.raises(UserError, match="precision"):
        runtime.choose_runtime(0, "fp16", cuda_available=False)


def _open_clip_train_exclude():
    """open_clip_train's own no-decay rule, compiled from its ``main.py`` (not imported:
    importing it pulls in its training application's optional loggers)."""
    package = importlib.util.find_spec("open_clip_train")
    main = Path(package.submodule_search_locations[0]) / "main.py"
    found = [
        node.value
        for node in ast.walk(ast.parse(main.read_text(), str(main)))
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["exclude"]
        and isinstance(node.value, ast.Lambda)
    ]
    assert len(found) == 1, f"{main}: expected one `exclude = lambda ...`, found {len(found)}"
    return eval(compile(ast.Expression(found[0]), str(main), "eval"), {})


def _split(model, groups) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay = groups
    return {names[id(p)] for p in no_decay["params"]}, {names[id(p)] for p in decay["params"]}


@pytest.mark.parametrize("arch", ["RN50", "ViT-B-32"])
def test_weight_decay_split_is_open_clip_trains(arch):
    """Per named parameter, we decay exactly what open_clip_train's ``exclude`` lambda decays."""
    exclude = _open_clip_train_exclude()
    model = open_clip.create_model(arch, pretrained=None)  # random init: nothing downloaded
    groups = engine.param_groups(model, 0.2)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2]
    kept, decayed = _split(model, groups)
    params = dict(model.named_parameters())
    theirs_kept = {n for n, p in params.items() if exclude(n, p) and p.requires_grad}
    theirs_decayed = {n for n, p in params.items() if not exclude(n, p) and p.requires_grad}
    assert decayed == theirs_decayed, decayed ^ theirs_decayed
    assert kept == theirs_kept, kept ^ theirs_kept
    assert kept | decayed == set(params) and not kept & decayed
    # the parameters where a name list of our own once went wrong are decayed, as upstream
    pos = "positional_embedding" if arch == "ViT-B-32" else "visual.attnpool.positional_embedding"
    assert pos in decayed


def test_weight_decay_on_smotunes_own_arch():
    m = model_mod.create(ModelConfig(), seed=0)
    kept, decayed = _split(m, engine.param_groups(m, 0.5))
    for name in (
        "token_embedding.weight",
        "positional_embedding",
        "visual.positional_embedding",
        "transformer.resblocks.0.mlp.c_fc.weight",
        "visual.conv1.weight",
    ):
        assert name in decayed, name
    for name in (
        "logit_scale",
        "visual.class_embedding",
        "ln_final.weight",
        "transformer.resblocks.0.ln_1.bias",
        "transformer.resblocks.0.mlp.c_fc.bias",
    ):
        assert name in kept, name
    assert len(decayed) + len(kept) == len(list(m.parameters()))


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
    rt = runtime.choose_runtime(0, precision, cuda_available=False)
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


def test_a_damaged_shard_shortens_no_epoch_that_sizes_json_can_fill(tmp_path):
    """Rank 1's shards damaged (64 KiB of garbage mid-shard; one cut to half): with sizes.json
    the epoch keeps the healthy rank's steps; without, it is shortened and says by how much."""
    import json
    import random

    from smotune.data import synth

    synth.generate(tmp_path, train_samples=400, shards=4, eval_per_class=1, seed=0)
    written = json.loads((tmp_path / "sizes.json").read_text())
    (tmp_path / "sizes.json").unlink()  # first without it, as shards from elsewhere may come
    garbage, cut = tmp_path / "train-0001.tar", tmp_path / "train-0003.tar"
    with open(garbage, "r+b") as f:
        f.seek(garbage.stat().st_size // 2)
        f.write(random.Random(0).randbytes(65536))
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    cfg = TrainConfig(
        data={"train": f"{tmp_path}/train-*.tar", "zeroshot": str(tmp_path / "zeroshot")},
        optim={"batch_size": 16},
    )
    healthy = 200 // 16  # rank 0: shards 0 and 2, 100 samples each
    steps, note = engine.epoch_plan(cfg, world_size=2)
    assert steps < healthy
    assert f"Every epoch is {steps} steps per rank, {healthy - steps} fewer" in note
    assert str(garbage) in note and "invalid tar header" in note
    assert str(cut) in note and "truncated inside" in note

    assert written == {f"train-{i:04d}.tar": 100 for i in range(4)}
    (tmp_path / "sizes.json").write_text(json.dumps(written))
    steps, note = engine.epoch_plan(cfg, world_size=2)
    assert steps == healthy and engine.steps_per_epoch(cfg, world_size=2) == healthy
    assert f"Epochs are not shortened ({healthy} steps per rank)" in note
    assert str(garbage) in note and str(cut) in note
