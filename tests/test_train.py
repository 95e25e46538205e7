"""One CLIP run on Ray Train: 2 DDP CPU workers learn; open_clip loads the checkpoint; resume."""

from __future__ import annotations

import open_clip
import pytest
import torch

from smotune import engine, trial
from smotune import model as model_mod
from smotune.config import TrainConfig
from smotune.data import zeroshot
from smotune.evaluate import zero_shot

pytestmark = pytest.mark.ray


def _cfg(synth_data, epochs: int) -> TrainConfig:
    return TrainConfig(
        model={"arch": "tiny-vit", "text_dropout": 0.1},
        data={
            "train": str(synth_data / "train-{0000..0003}.tar"),
            "zeroshot": str(synth_data / "zeroshot"),
            "rewrite_prob": 0.3,
            "loader_workers": 1,
        },
        loss={"label_smoothing": 0.1},
        optim={"lr": 1e-3, "warmup_steps": 5, "batch_size": 64},
        epochs=epochs,
        workers={"num": 2, "cpus": 1},
        seed=0,
    )


def _initial_top1(cfg: TrainConfig) -> float:
    """Zero-shot top-1 of the epoch-0 weights (the engine seeds model init with cfg.seed)."""
    model = model_mod.create(cfg.model, seed=cfg.seed)
    evalset = zeroshot.load(cfg.data.zeroshot, transform=model_mod.transforms(model, train=False))
    tok = model_mod.tokenizer(cfg.model.arch)
    return zero_shot(model, tok, evalset, torch.device("cpu"))["zeroshot_top1"]


def test_two_workers_learn_and_resume(ray_cluster, synth_data, tmp_path):
    storage = str(tmp_path / "runs")
    two = trial.run_train(_cfg(synth_data, epochs=2), storage=storage, name="run")
    steps = engine.steps_per_epoch(_cfg(synth_data, 2), world_size=2)
    assert two["epoch"] == 2 and two["step"] == 2 * steps and steps == 1536 // 64
    assert two["data_skipped"] == 0 and two["zeroshot_samples"] == 8 * 48

    chance = 1 / 48
    start = _initial_top1(_cfg(synth_data, 2))
    print(f"zero-shot top-1: start {start:.4f}, after 2 epochs {two['zeroshot_top1']:.4f}")
    assert two["zeroshot_top1"] > max(start, chance) + 0.03, (start, two)

    # The checkpoint is an open_clip state dict that gives the same accuracy.
    loaded = open_clip.create_model("tiny-vit", pretrained=f"{two['checkpoint']}/model.pt")
    state = torch.load(f"{two['checkpoint']}/{engine.STATE_FILE}", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 2 * steps
    evalset = zeroshot.load(
        str(synth_data / "zeroshot"), transform=model_mod.transforms(loaded, train=False)
    )
    again = zero_shot(loaded, model_mod.tokenizer("tiny-vit"), evalset, torch.device("cpu"))
    assert again["zeroshot_top1"] == pytest.approx(two["zeroshot_top1"])

    # Same name, one more epoch: Ray Train finds the checkpoint; the run goes on at epoch 3.
    three = trial.run_train(_cfg(synth_data, epochs=3), storage=storage, name="run")
    assert three["epoch"] == 3 and three["step"] == 3 * steps
    assert three["checkpoint"] != two["checkpoint"]
