"""One worker's training: epochs, steps, AMP, schedule, checkpoint, report.

``train_worker`` is the function Ray Train runs on every worker. It is plain
PyTorch with a few ``ray.train`` calls: it builds the open_clip model, the
label-smoothed loss, AdamW and the webdataset loader from one train config,
trains ``epochs`` epochs of a fixed number of steps, evaluates zero-shot
accuracy on rank 0 after each epoch and reports the metrics of DESIGN.md with
a checkpoint: an open_clip-loadable ``model.pt``, the training state and the
train config it was trained with (``train.yaml``). When Ray restarts the run
it resumes from the latest checkpoint. It knows nothing of Tune.

Every rank runs exactly ``steps_per_epoch`` steps per epoch: the loader reads
the rank's shards round after round (reseeded per round) and stops there, so
uneven shards or skipped samples never leave one rank waiting for another in
a collective. A damaged shard shortens no epoch when ``sizes.json`` says what
it held; otherwise rank 0 prints, before the first epoch, by how much and why
(:func:`epoch_plan`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from smotune import loss as loss_mod
from smotune import model as model_mod
from smotune.config import TrainConfig, dump_train
from smotune.data import shards, zeroshot
from smotune.errors import UserError
from smotune.evaluate import zero_shot
from smotune.runtime import Runtime, choose_runtime

MODEL_FILE = "model.pt"  # open_clip-loadable state dict
STATE_FILE = "train_state.pt"  # optimizer, scaler, epoch, step, metrics
CONFIG_FILE = "train.yaml"  # the train config the checkpoint was trained with
NO_DECAY_NAMES = ("bn", "ln", "bias", "logit_scale")  # open_clip_train's exclude rule


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups ``[no decay, decay]``, split exactly as open_clip_train splits them.

    A trainable parameter gets no weight decay when it has fewer than 2 dimensions
    (biases, norm gains, ``logit_scale``, a ViT's ``class_embedding``) or its name
    contains ``bn``, ``ln``, ``bias`` or ``logit_scale``; every other one is decayed,
    token and positional embeddings included (open_clip_train's ``exclude`` lambda in
    ``main.py``, shared by CLIP-rocket and LaCLIP). Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(key in name for key in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up from 0 to ``lr``, then cosine from ``lr`` to ``min_lr``."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, total_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


def steps_per_epoch(cfg: TrainConfig, world_size: int) -> int:
    """Optimizer steps in one epoch, the same on every rank (:func:`epoch_plan`)."""
    return epoch_plan(cfg, world_size)[0]


def epoch_plan(cfg: TrainConfig, world_size: int) -> tuple[int, str | None]:
    """Optimizer steps in one epoch, the same on every rank, and a line on damaged shards.

    With ``data.samples_per_epoch`` (per worker) it is that over the batch size;
    otherwise the samples of the rank with the fewest, counted in the shards.
    Damage: a shard's count is what it should hold when ``sizes.json`` lists it,
    so its damage shortens no rank and its rank re-reads its readable samples to
    fill the epoch; otherwise only its readable samples are known, and if that
    makes its rank the smallest, equal steps (DDP needs them) shorten every
    rank's epoch, and the line says by how much and why.
    """
    batch = cfg.optim.batch_size
    note = None
    if cfg.data.samples_per_epoch:
        per_rank = [cfg.data.samples_per_epoch]
    else:
        counts = shards.count_shards(shards.shard_list(cfg.data.train))
        per_rank = [0] * world_size
        for i, c in enumerate(counts):
            per_rank[i % world_size] += c.samples
        note = _damage_note(counts, per_rank, batch)
    steps = min(per_rank) // batch
    if steps < 1:
        raise UserError(
            "config",
            "optim.batch_size",
            f"{batch} per worker is more than the {min(per_rank)} samples of the smallest "
            f"worker's shards",
            "lower optim.batch_size or workers.num, or add shards",
        )
    return steps, note


def _damage_note(counts: list, per_rank: list[int], batch: int) -> str | None:
    world = len(per_rank)
    damaged = [(i % world, c) for i, c in enumerate(counts) if c.damage]
    if not damaged:
        return None
    steps = min(per_rank) // batch
    names = "; ".join(f"{c.url} (rank {r}): {', '.join(c.damage)}" for r, c in damaged)
    unknown = {r for r, c in damaged if not c.indexed}
    exact = [n for r, n in enumerate(per_rank) if r not in unknown]
    full = min(exact) // batch if exact else steps
    if full > steps:
        small = min(unknown, key=lambda r: per_rank[r])
        return (
            f"damaged shards: {names}. Every epoch is {steps} steps per rank, {full - steps} "
            f"fewer than the undamaged ranks hold ({full}): ranks run equal steps, and rank "
            f"{small}'s damaged shards count only their readable samples ({per_rank[small]}) "
            f"as no sizes.json lists them"
        )
    return (
        f"damaged shards: {names}. Epochs are not shortened ({steps} steps per rank): "
        f"a damaged rank short of samples re-reads its readable ones to fill them"
    )


def _all_reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


def _save_checkpoint(
    tmp: Path, model, optimizer, scaler, metrics: dict[str, Any], cfg: TrainConfig
) -> None:
    """``model.pt`` (open_clip loads it), ``train_state.pt`` and ``train.yaml`` (``cfg``)."""
    model_mod.save_checkpoint(model, tmp / MODEL_FILE)
    (tmp / CONFIG_FILE).write_text(dump_train(cfg))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "epoch": metrics["epoch"],
            "step": metrics["step"],
            "metrics": metrics,
        },
        tmp / STATE_FILE,
    )


def _load_checkpoint(path: str, model, optimizer, scaler) -> dict[str, Any]:
    """Restore model, optimizer and scaler; return the metrics of the checkpoint's epoch."""
    module = getattr(model, "module", model)
    sd = torch.load(os.path.join(path, MODEL_FILE), map_location="cpu", weights_only=True)
    module.load_state_dict(sd["state_dict"])
    state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if scaler and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    return state["metrics"]


def train_step(
    model,
    criterion,
    optimizer,
    scaler,
    runtime: Runtime,
    images,
    texts,
    lr: float,
    grad_clip: float | None,
) -> float:
    """One optimizer step at learning rate ``lr``; returns the loss (a Python float)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(
        runtime.device_type,
        dtype=runtime.autocast_dtype or torch.float32,
        enabled=runtime.autocast_dtype is not None,
    ):
        out = model(images, texts)
    out = {k: v.float() if torch.is_tensor(v) else v for k, v in out.items()}
    loss = criterion(**out)
    optimizer.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        getattr(model, "module", model).logit_scale.clamp_(0, math.log(100))
    return loss.item()


def quiet_libraries() -> None:
    """Keep open_clip's INFO lines and a torch deprecation notice out of every worker's log."""
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*all_gather is deprecated.*", FutureWarning)


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.4f}  "
        f"zeroshot_top1 {metrics['zeroshot_top1']:.4f}  top5 {metrics['zeroshot_top5']:.4f}  "
        f"{metrics['samples_per_s']:.0f} samples/s  skipped {metrics['data_skipped']}"
    )


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train per-worker loop. ``loop_config = {"train": TrainConfig as a dict}``."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(loop_config["train"])
    quiet_libraries()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    runtime = choose_runtime(cfg.workers.gpus, cfg.precision, torch.cuda.is_available())
    device = ray.train.torch.get_device() if runtime.device_type == "cuda" else torch.device("cpu")
    if runtime.device_type == "cpu" and cfg.workers.cpus >= 1:
        torch.set_num_threads(int(cfg.workers.cpus))

    model = model_mod.create(cfg.model, seed=cfg.seed)  # same init on every rank
    preprocess = model_mod.transforms(model, train=True)
    eval_preprocess = model_mod.transforms(model, train=False)
    tokenizer = model_mod.tokenizer(cfg.model.arch)
    model = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)
    module = getattr(model, "module", model)
    criterion = loss_mod.build(cfg.loss, rank, world)
    optimizer = torch.optim.AdamW(
        param_groups(module, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps,
    )
    scaler = torch.amp.GradScaler(runtime.device_type) if runtime.grad_scaler else None

    start_epoch, step, skipped_before, restarts = 0, 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as path:
            last = _load_checkpoint(path, model, optimizer, scaler)
        start_epoch, step, skipped_before = last["epoch"], last["step"], last["data_skipped"]
        # a worker group restarted after a failure (workers.max_failures) or a resumed run
        restarts = last.get("restarts", 0) + (start_epoch < cfg.epochs)
        if start_epoch >= cfg.epochs:  # a finished run restarted: say again how it ended
            ray.train.report(last if rank == 0 else {"epoch": start_epoch})
            return

    # equal steps per rank (DDP): from sizes.json a damaged rank refills by re-reading; else
    # its readable count may set the min, and the line below says what that cost
    n_steps, damage = epoch_plan(cfg, world)
    if damage and rank == 0:
        print(damage, flush=True)
    total_steps = n_steps * cfg.epochs
    fixed = cfg.model_copy(deep=True)
    fixed.data.samples_per_epoch = n_steps * cfg.optim.batch_size
    evalset = (
        zeroshot.load(
            cfg.data.zeroshot, cfg.data.zeroshot_split, eval_preprocess, cfg.eval.max_samples
        )
        if rank == 0
        else None
    )
    skipped = shards.SkipCounter()

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        # dropout and augmentation: seeded per rank and epoch, so a resumed run repeats them
        torch.manual_seed(cfg.seed * 1000 + rank + 1 + 7919 * epoch)
        model.train()
        loader = shards.make_loader(fixed, preprocess, tokenizer, rank, world, epoch, skipped)
        loss_sum, samples, t0 = 0.0, 0, time.perf_counter()
        for images, texts in loader:
            loss = train_step(
                model,
                criterion,
                optimizer,
                scaler,
                runtime,
                images.to(device),
                texts.to(device),
                lr_at(step, cfg, total_steps),
                cfg.optim.grad_clip,
            )
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at epoch {epoch}, step {step}")
            step += 1
            loss_sum += loss * images.shape[0]
            samples += images.shape[0]
        elapsed = time.perf_counter() - t0
        loss_sum, samples, skipped_total = _all_reduce(
            [loss_sum, samples, skipped.count], device, world
        )
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / samples,
            "lr": lr_at(step - 1, cfg, total_steps),
            "samples_per_s": samples / elapsed,
            "data_skipped": skipped_before + int(skipped_total),  # over the whole run
            "restarts": restarts,
            "step": step,
        }
        with tempfile.TemporaryDirectory() as tmp:
            report_ckpt = None
            if rank == 0:
                metrics.update(
                    zero_shot(
                        module,
                        tokenizer,
                        evalset,
                        device,
                        cfg.eval.batch_size,
                        runtime.autocast_dtype,
                    )
                )
                _save_checkpoint(Path(tmp), model, optimizer, scaler, metrics, cfg)
                print(epoch_line(metrics, cfg.epochs), flush=True)
                report_ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=report_ckpt)
