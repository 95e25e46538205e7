"""The machine a bench ran on, for its BENCHMARKS.md row: CPU model, cores, torch and Ray."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe() -> str:
    import ray
    import torch

    return (
        f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores,"
        f" torch {torch.__version__}, ray {ray.__version__}"
    )
