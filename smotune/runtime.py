"""Where and how a worker computes: device, process-group backend, autocast.

One config runs on CPU (gloo, fp32 or bf16 autocast) and on GPU (nccl, bf16 or
fp16 with loss scaling); ``workers.gpus`` is the switch. Kept apart from the
engine so that the trial driver, which checks the choice before any worker
starts, never imports open_clip (about 5 s a process on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smotune.errors import UserError


@dataclass(frozen=True)
class Runtime:
    """Where and how a worker computes: one config runs on CPU and GPU alike."""

    device_type: str  # "cpu" or "cuda"
    backend: str  # torch.distributed backend: "gloo" or "nccl"
    autocast_dtype: torch.dtype | None  # None: fp32
    grad_scaler: bool  # fp16 needs loss scaling


def choose_runtime(gpus_per_worker: float, precision: str, cuda_available: bool) -> Runtime:
    """The device, process-group backend and autocast of a worker.

    ``precision="auto"`` means bf16 autocast on GPU and fp32 on CPU. bf16 is
    allowed on CPU (autocast supports it); fp16 needs a GPU.
    """
    on_gpu = gpus_per_worker > 0
    if on_gpu and not cuda_available:
        raise UserError(
            "config",
            "workers.gpus",
            f"asks for {gpus_per_worker} GPU per worker but CUDA is not available here",
            "set workers.gpus: 0 to train on CPU, or run on a GPU node",
        )
    if precision == "fp16" and not on_gpu:
        raise UserError(
            "config", "precision", "fp16 needs GPUs", "use precision: bf16 or fp32 on CPU"
        )
    dtype = {
        "auto": torch.bfloat16 if on_gpu else None,
        "fp32": None,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
    }[precision]
    return Runtime(
        device_type="cuda" if on_gpu else "cpu",
        backend="nccl" if on_gpu else "gloo",
        autocast_dtype=dtype,
        grad_scaler=dtype is torch.float16,
    )
