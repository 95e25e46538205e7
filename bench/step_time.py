"""Step time of the worker loop vs a bare PyTorch loop, same process, same data.

The bare loop is what a person would write from open_clip's parts: forward,
open_clip's ClipLoss, backward, AdamW step. Ours is ``engine.train_step`` with
the label-smoothed loss, decay groups, the per-step schedule and the logit
scale clamp. Both run on the same pre-loaded batches (compute only), and then
both again pulling batches from smotune's webdataset loader (data included).
Prints JSON and appends a row to BENCHMARKS.md.

    .venv/bin/python bench/step_time.py [--batch 128] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import open_clip
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smotune import engine, optim, runtime  # noqa: E402
from smotune import loss as loss_mod  # noqa: E402
from smotune import model as model_mod  # noqa: E402
from smotune.config import TrainConfig  # noqa: E402
from smotune.data import shards, synth  # noqa: E402


def _bare_step(model, criterion, opt, images, texts) -> float:
    out = model(images, texts)
    loss = criterion(**out)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _time(fn, batches, warmup: int) -> float:
    for images, texts in batches[:warmup]:
        fn(images, texts)
    t0 = time.perf_counter()
    for images, texts in batches[warmup:]:
        fn(images, texts)
    return (time.perf_counter() - t0) / (len(batches) - warmup)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker's cpus)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.steps + args.warmup

    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(tmp, train_samples=args.batch * n, shards=1, eval_per_class=1, seed=0)
        cfg = TrainConfig(
            data={
                "train": f"{tmp}/train-0000.tar",
                "zeroshot": f"{tmp}/zeroshot",
                "loader_workers": 0,
            },
            optim={"batch_size": args.batch},
        )
        rt = runtime.choose_runtime(0, "fp32", cuda_available=False)

        def fresh():
            model = model_mod.create(cfg.model, seed=0).train()
            return model, model_mod.transforms(model, True), model_mod.tokenizer(cfg.model.arch)

        model, preprocess, tok = fresh()
        counter = shards.SkipCounter()
        loader = shards.make_loader(cfg, preprocess, tok, 0, 1, 0, counter)
        t0 = time.perf_counter()
        batches = list(loader)[:n]
        load_s = (time.perf_counter() - t0) / len(batches)

        bare_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
        bare_loss = open_clip.ClipLoss()
        bare = _time(
            lambda i, t: _bare_step(model, bare_loss, bare_opt, i, t), batches, args.warmup
        )

        model, _, _ = fresh()
        opt = torch.optim.AdamW(optim.param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.98))
        ours_loss = loss_mod.build(cfg.loss.model_copy(update={"label_smoothing": 0.1}), 0, 1)
        steps = iter(range(10**9))
        parts = engine.StepParts(model, ours_loss, opt, None, rt)
        ours = _time(
            lambda i, t: engine.train_step(parts, i, t, optim.lr_at(next(steps), cfg, n)),
            batches,
            args.warmup,
        )

    result = {
        "bench": "step_time",
        "arch": cfg.model.arch,
        "batch": args.batch,
        "threads": args.threads,
        "steps": args.steps,
        "bare_step_s": round(bare, 4),
        "ours_step_s": round(ours, 4),
        "ours_over_bare": round(ours / bare, 3),
        "loader_s_per_batch": round(load_s, 4),
        "loader_over_bare_step": round(load_s / bare, 3),
    }
    print(json.dumps(result))
    _append(result)


def _append(result: dict) -> None:
    path = ROOT / "BENCHMARKS.md"
    if not path.exists():
        path.write_text("# Benchmarks\n\nRows appended by the scripts in bench/.\n\n")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads of {_cores()} cores"
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    with path.open("a") as f:
        f.write(f"- {when} ({machine}, torch {torch.__version__}): `{json.dumps(result)}`\n")


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
