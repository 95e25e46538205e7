"""Data paths in a train config: local ones checked where the command runs and made absolute
before a run leaves that folder; object-store URIs (``s3://``, ...) never touched."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from smotune.config.models import REMOTE_PREFIXES, TrainConfig
from smotune.errors import UserError


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def expand_shards(spec: str | list[str]) -> list[str]:
    """Brace-expand a shard spec (``a-{0000..0007}.tar``, ``::``-joined or a list)."""
    import braceexpand

    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for part in item.split("::"):
            urls.extend(braceexpand.braceexpand(part))
    return urls


def _check_paths(where: str, train: TrainConfig, prefix: str, base: Path) -> None:
    urls = expand_shards(train.data.train)
    if not urls:
        raise UserError(where, prefix + "data.train", "expands to no shards", "name .tar shards")
    for url in urls:
        if is_remote(url):
            continue
        path = base / url
        if not path.exists() and not glob.has_magic(url):
            raise UserError(
                where,
                prefix + "data.train",
                f"shard {url} does not exist{_relative_to(url, base)}",
                _missing_fix(url, "write the data (`smotune data synth --out DIR` for the demo's)"),
            )
    zs = train.data.zeroshot
    if not is_remote(zs) and not (base / zs).is_dir():
        raise UserError(
            where,
            prefix + "data.zeroshot",
            f"directory {zs} does not exist{_relative_to(zs, base)}",
            _missing_fix(
                zs, "point it at a clip_benchmark webdataset dir or an ImageNet-style folder"
            ),
        )


def _relative_to(path: str, base: Path) -> str:
    return "" if os.path.isabs(path) else f" (relative to {base}, where smotune runs)"


def _missing_fix(path: str, otherwise: str) -> str:
    """The fix for a local data path that is not there. A relative one may be right but read
    from another directory than it was written for (a config exported by a sweep that logged
    relative paths, a config moved), so that comes first."""
    if os.path.isabs(path):
        return f"correct the path, or {otherwise}"
    return (
        "run from the directory the path is relative to (for an exported best.yaml: where "
        f"its sweep ran) or write it absolute; else {otherwise}"
    )


def relative_paths(train: TrainConfig) -> list[str]:
    """The config's local data paths that are relative (read from where smotune runs)."""
    specs = [train.data.train] if isinstance(train.data.train, str) else list(train.data.train)
    urls = [u for spec in specs for u in spec.split("::")] + [train.data.zeroshot]
    return [u for u in urls if not is_remote(u) and not os.path.isabs(u)]


def absolute_paths(train: TrainConfig, base: Path | None = None) -> TrainConfig:
    """A copy of ``train`` whose local data paths are absolute (from ``base`` or the cwd)."""
    base = Path(base or os.getcwd())

    def fix(url: str) -> str:
        return url if is_remote(url) or os.path.isabs(url) else str(base / url)

    out = train.model_copy(deep=True)
    if isinstance(out.data.train, str):
        out.data.train = "::".join(fix(u) for u in out.data.train.split("::"))
    else:
        out.data.train = [fix(u) for u in out.data.train]
    out.data.zeroshot = fix(out.data.zeroshot)
    return out
