"""One worker's training: the recipe Ray Train runs on every worker, and its parts.

``train_worker`` is plain PyTorch with a few ``ray.train`` calls, in the shape
of a torchtune recipe: :func:`setup` (the open_clip model, the label-smoothed
loss, AdamW and the loader's transforms, from one train config),
:func:`resume` (from Ray's latest checkpoint), :func:`plan_epochs`, then per
epoch :func:`train_epoch` and :func:`evaluate_and_report` (zero-shot accuracy,
each rank scoring its part of the eval set; on rank 0 the metrics of DESIGN.md
and a checkpoint: an open_clip-loadable
``model.pt``, the training state and the ``train.yaml`` it was trained with).
It knows nothing of Tune.

With ``SMOTUNE_PHASE_TIMES=1`` in the workers' environment (``bench/sweep_overhead.py``
sets it) rank 0's reports also carry ``phase/*`` keys: how long each part of the
run took (``time.perf_counter`` differences) and two wall-clock stamps (entering
the worker, calling ``report``) for the bench to line up with Tune's and Ray's own
times. They are left out of checkpoints, and MLflow logs no key with a ``/``.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smotune import checkpoints, lines, optim, ranks
from smotune import loss as loss_mod
from smotune import model as model_mod
from smotune.config import DAMAGE_KEY, TrainConfig
from smotune.data import shards, skips, zeroshot
from smotune.errors import UserError
from smotune.evaluate import zero_shot
from smotune.runtime import Runtime, choose_runtime

PHASE_TIMES_ENV = "SMOTUNE_PHASE_TIMES"  # "1": reports carry the phase/* times (the bench's)
EVAL_CACHE_BYTES = 512 * 2**20  # a rank keeps its part of the zero-shot set this small decoded


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


@dataclass
class StepParts:
    """What one optimizer step uses (:func:`train_step`): the model and how it is trained."""

    model: torch.nn.Module  # DDP-wrapped when the group has more than one worker
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    runtime: Runtime
    grad_clip: float | None = None


@dataclass
class Worker:
    """One Train worker's run: its config and place in the group, its parts, its progress."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    parts: StepParts
    preprocess: Callable  # train transforms
    eval_preprocess: Callable
    tokenizer: Callable
    epoch: int = 0  # the last epoch done (a checkpoint's when resumed)
    step: int = 0  # optimizer steps done
    skipped_before: int = 0  # samples skipped by the run's earlier worker groups
    restarts: int = 0
    skipped: shards.SkipCounter = field(default_factory=shards.SkipCounter)  # this group's
    damage: dict[str, list[str]] = field(default_factory=dict)  # shard -> what was met: all ranks'
    phases: dict[str, float] = field(default_factory=dict)  # phase/* times of the latest epoch

    @property
    def module(self) -> torch.nn.Module:
        """The model without its DDP wrapper."""
        return model_mod.unwrap(self.parts.model)


@dataclass
class EpochPlan:
    """What every epoch of the run shares (:func:`plan_epochs`)."""

    steps: int  # optimizer steps per epoch, the same on every rank
    total_steps: int  # of the whole run: the span of the learning-rate schedule
    loader_cfg: TrainConfig  # the config with data.samples_per_epoch = steps x batch size
    evalset: Any  # this rank's part of the zero-shot set


def train_step(parts: StepParts, images, texts, lr: float) -> float:
    """One optimizer step at learning rate ``lr``; returns the loss (a Python float)."""
    model, optimizer, scaler, runtime = parts.model, parts.optimizer, parts.scaler, parts.runtime
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(
        runtime.device_type,
        dtype=runtime.autocast_dtype or torch.float32,
        enabled=runtime.autocast_dtype is not None,
    ):
        out = model(images, texts)
    out = {k: v.float() if torch.is_tensor(v) else v for k, v in out.items()}
    loss = parts.criterion(**out)
    optimizer.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if parts.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), parts.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        model_mod.unwrap(model).logit_scale.clamp_(0, math.log(100))
    return loss.item()


def quiet_libraries() -> None:
    """Keep open_clip's INFO lines and a torch deprecation notice out of every worker's log."""
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*all_gather is deprecated.*", FutureWarning)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train per-worker loop. ``loop_config = {"train": TrainConfig as a dict}``."""
    import ray.train

    w = setup(TrainConfig.model_validate(loop_config["train"]))
    last = resume(w, ray.train.get_checkpoint())
    if last is not None:  # say again what the checkpoint's epoch reported (see resume)
        ray.train.report(last if w.rank == 0 else {"epoch": w.epoch})
        if w.epoch >= w.cfg.epochs:  # a finished run restarted: nothing to train
            return
    plan = plan_epochs(w)
    for epoch in range(w.epoch + 1, w.cfg.epochs + 1):
        metrics = train_epoch(w, plan, epoch)
        evaluate_and_report(w, plan, metrics)


def setup(cfg: TrainConfig) -> Worker:
    """This Train worker's rank, device and threads, then its parts (:func:`build_worker`)."""
    import ray.train
    import ray.train.torch

    entered, t0 = time.time(), time.perf_counter()
    quiet_libraries()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    runtime = choose_runtime(cfg.workers.gpus, cfg.precision, torch.cuda.is_available())
    device = ray.train.torch.get_device() if runtime.device_type == "cuda" else torch.device("cpu")
    if runtime.device_type == "cpu" and cfg.workers.cpus >= 1:
        torch.set_num_threads(int(cfg.workers.cpus))
    strategy = "ddp" if world > 1 else None
    w = build_worker(
        cfg,
        rank,
        world,
        runtime,
        device,
        wrap=lambda m: ray.train.torch.prepare_model(m, parallel_strategy=strategy),
    )
    w.phases.update({"phase/enter_wall": entered, "phase/setup_s": time.perf_counter() - t0})
    return w


def build_worker(
    cfg: TrainConfig,
    rank: int,
    world: int,
    runtime: Runtime,
    device: torch.device,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> Worker:
    """Model (the same init on every rank), transforms, tokenizer, loss, AdamW and scaler.

    ``wrap`` moves the model to its device and wraps it for DDP (Ray Train's
    ``prepare_model``); without it the model stays as built, on the CPU.
    """
    model = model_mod.create(cfg.model, seed=cfg.seed)
    preprocess = model_mod.transforms(model, train=True)
    eval_preprocess = model_mod.transforms(model, train=False)
    tokenizer = model_mod.tokenizer(cfg.model.arch)
    if wrap is not None:
        model = wrap(model)
    module = model_mod.unwrap(model)
    optimizer = torch.optim.AdamW(
        optim.param_groups(module, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps,
    )
    parts = StepParts(
        model=model,
        criterion=loss_mod.build(cfg.loss, rank, world),
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(runtime.device_type) if runtime.grad_scaler else None,
        runtime=runtime,
        grad_clip=cfg.optim.grad_clip,
    )
    return Worker(cfg, rank, world, device, parts, preprocess, eval_preprocess, tokenizer)


def resume(w: Worker, checkpoint: Any) -> dict[str, Any] | None:
    """Continue from Ray Train's latest checkpoint, if any; the metrics its epoch reported.

    A checkpoint here means a worker group restarted after a failure
    (``workers.max_failures``) or a resumed run: model, optimizer and scaler
    are restored, the epoch, step and skipped samples carried on, and the
    restart counted unless the run had already ended.

    The caller reports the returned metrics again before training on: a driver
    killed after Ray Train registered the checkpoint but before Tune received its
    result would otherwise lose that epoch (never in MLflow, the study or ASHA's
    rungs). Whoever had the epoch already skips it (the MLflow callback, the
    consoles and the searcher by epoch; ASHA records a trial once per rung).
    """
    if not checkpoint:
        return None
    with checkpoint.as_directory() as path:
        last, w.damage = checkpoints.load(path, w.parts)
    w.epoch, w.step, w.skipped_before = last["epoch"], last["step"], last["data_skipped"]
    w.restarts = last.get("restarts", 0) + (w.epoch < w.cfg.epochs)
    return last


def plan_epochs(w: Worker) -> EpochPlan:
    """Steps per epoch (:func:`epoch_plan`), the loader's config, this rank's part of the
    zero-shot set (the parts of all ranks are the whole set, each sample once).

    Equal steps per rank (DDP): from sizes.json a damaged rank refills by
    re-reading; else its readable count may set the minimum, and rank 0 prints
    what that cost.
    """
    cfg, t0 = w.cfg, time.perf_counter()
    steps, damage = epoch_plan(cfg, w.world)
    if damage and w.rank == 0:
        print(damage, flush=True)
    loader_cfg = cfg.model_copy(deep=True)
    loader_cfg.data.samples_per_epoch = steps * cfg.optim.batch_size
    d = cfg.data
    evalset = zeroshot.load(
        d.zeroshot,
        d.zeroshot_split,
        w.eval_preprocess,
        cfg.eval.max_samples,
        EVAL_CACHE_BYTES,
        part=(w.rank, w.world),
    )
    w.phases["phase/plan_s"] = time.perf_counter() - t0
    return EpochPlan(steps, steps * cfg.epochs, loader_cfg, evalset)


def train_epoch(w: Worker, plan: EpochPlan, epoch: int) -> dict[str, Any]:
    """One epoch of ``plan.steps`` steps; its metrics, summed over the ranks.

    A non-finite loss raises ``FloatingPointError`` at once: nothing trained on
    it is checkpointed or reported. ``data_skipped`` counts the whole run.
    """
    cfg = w.cfg
    # dropout and augmentation: seeded per rank and epoch, so a resumed run repeats them
    torch.manual_seed(cfg.seed * 1000 + w.rank + 1 + 7919 * epoch)
    w.parts.model.train()
    t0 = time.perf_counter()
    loader = shards.make_loader(
        plan.loader_cfg, w.preprocess, w.tokenizer, w.rank, w.world, epoch, w.skipped
    )
    loss_sum, samples, first, t_loop = 0.0, 0, None, time.perf_counter()
    for images, texts in loader:
        first = first or time.perf_counter()  # the loader's workers started, a batch is in
        lr = optim.lr_at(w.step, cfg, plan.total_steps)
        loss = train_step(w.parts, images.to(w.device), texts.to(w.device), lr)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at epoch {epoch}, step {w.step}")
        w.step += 1
        loss_sum += loss * images.shape[0]
        samples += images.shape[0]
    end = time.perf_counter()
    elapsed = end - t_loop
    w.phases.update({"phase/loader_s": (first or end) - t0, "phase/steps_s": end - (first or end)})
    loss_sum, samples, skipped = ranks.all_reduce(
        [loss_sum, samples, w.skipped.count], w.device, w.world
    )
    w.damage = skips.merge_damage(w.damage, *ranks.gather(w.skipped.damage, w.world))
    w.epoch = epoch
    damage = {DAMAGE_KEY: "\n".join(skips.damage_lines(w.damage))} if w.damage else {}
    return {
        "epoch": epoch,
        "train_loss": loss_sum / samples,
        "lr": optim.lr_at(w.step - 1, cfg, plan.total_steps),
        "samples_per_s": samples / elapsed,
        "train_s": elapsed,
        "data_skipped": w.skipped_before + int(skipped),
        "restarts": w.restarts,
        "step": w.step,
        "data_damaged_shards": len(w.damage),
        **damage,
    }


def evaluate_and_report(w: Worker, plan: EpochPlan, metrics: dict[str, Any]) -> None:
    """Every rank scores its part of the zero-shot set (the counts summed over the ranks);
    rank 0 adds the accuracy, checkpoints and prints the epoch line; all ranks report."""
    import ray.train

    t0 = time.perf_counter()
    metrics.update(
        zero_shot(
            w.module,
            w.tokenizer,
            plan.evalset,
            w.device,
            w.cfg.eval.batch_size,
            w.parts.runtime.autocast_dtype,
            sum_ranks=lambda t: ranks.sum_ranks(t.to(w.device), w.world),
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        report = metrics
        if w.rank == 0:
            t1 = time.perf_counter()
            checkpoints.save(Path(tmp), w.parts, metrics, w.cfg, w.damage)
            w.phases.update(
                {
                    "phase/eval_s": t1 - t0,
                    "phase/checkpoint_s": time.perf_counter() - t1,
                    "phase/checkpoint_bytes": sum(f.stat().st_size for f in Path(tmp).iterdir()),
                }
            )
            print(lines.epoch_line(metrics, w.cfg.epochs), flush=True)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if os.environ.get(PHASE_TIMES_ENV) == "1":
                report = {**metrics, **w.phases, "phase/report_wall": time.time()}
        ray.train.report(report, checkpoint=checkpoint)
