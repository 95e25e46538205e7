"""Where the training shards are: ``data.train`` as a checked list of URLs, and their sample counts.

Braces and ``::`` in ``data.train`` are expanded and local glob patterns matched
(sorted). Object stores and HTTP(S) are read through a ``pipe:`` command.
Samples are counted for local shards only: from a ``sizes.json`` beside the
shards (open_clip's ``{"shard.tar": samples}``) when it lists the shard, else
from the tar headers, read through damage by :mod:`smotune.data.tars`.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import shlex
import tarfile
from dataclasses import dataclass

from webdataset.tariterators import base_plus_ext

from smotune.config import expand_shards, is_remote
from smotune.data import objstore
from smotune.data.skips import describe
from smotune.data.tars import Damage, read_members
from smotune.errors import UserError

log = logging.getLogger(__name__)

FIELD = "data.train"


def shard_url(url: str) -> str:
    """The URL webdataset opens for a shard: object stores and HTTP(S) through a ``pipe:``."""
    if url.startswith("s3://"):  # pyarrow, credentials from the environment only
        return objstore.pipe_url(url)
    if url.startswith(("gs://", "gcs://")):
        return f"pipe:gsutil cat {shlex.quote('gs://' + url.split('://', 1)[1])}"
    if url.startswith(("http://", "https://")):
        return f"pipe:curl -s -L -f {shlex.quote(url)}"
    return url


def shard_list(spec: str | list[str]) -> list[str]:
    """The shards of ``data.train``: braces and ``::`` expanded, local globs matched (sorted)."""
    urls: list[str] = []
    for url in expand_shards(spec):
        local = _local_path(url)
        matches = sorted(glob.glob(local)) if local and glob.has_magic(local) else []
        urls.extend(matches or [url])
    return urls


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://") :]
    return None if is_remote(url) else url


def check_urls(urls: list[str], world_size: int) -> None:
    """Raise :class:`UserError` unless ``urls`` are readable shards, at least one per rank."""
    if not urls:
        raise UserError("config", FIELD, "expands to no shards", "name one or more .tar shards")
    unsupported = [u for u in urls if u.startswith(("azure://",))]
    if unsupported:
        raise UserError(
            "config",
            FIELD,
            f"cannot read {unsupported[0]}",
            "use s3://, gs://, http(s)://, hf://, a local path or a pipe: URL",
        )
    missing = [u for u in urls if (p := _local_path(u)) is not None and not os.path.isfile(p)]
    if missing:
        raise UserError(
            "config",
            FIELD,
            f"{len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}",
            "correct the path (run `smotune data synth --out data/synth` for the demo data)",
        )
    if len(urls) < world_size:
        raise UserError(
            "config",
            FIELD,
            f"{len(urls)} shards for {world_size} ranks: some ranks would read nothing",
            f"split the data into at least {world_size} shards or lower workers.num",
        )


@dataclass(frozen=True)
class ShardCount:
    """What the counting pass knows of one local shard."""

    url: str
    samples: int  # what the shard should hold: sizes.json's number, else ``readable``
    readable: int  # samples with a member the tar headers show (damage read through)
    damage: tuple[str, ...]  # where and why the shard is damaged
    indexed: bool  # ``samples`` is from sizes.json


def count_shards(urls: list[str]) -> list[ShardCount]:
    """Count each local shard; remote shards are a :class:`UserError` (counting downloads them)."""
    remote = [u for u in urls if _local_path(u) is None]
    if remote:
        raise UserError(
            "config",
            "data.samples_per_epoch",
            f"is needed with remote shards such as {remote[0]} (counting would download them)",
            "set data.samples_per_epoch (samples per worker and epoch)",
        )
    out = []
    for url in urls:
        path = _local_path(url)
        readable, damage = _count_samples(path)
        listed = indexed_size(url)
        samples = readable if listed is None else listed
        out.append(ShardCount(url, samples, readable, damage, listed is not None))
    return out


def samples_per_rank(urls: list[str], world_size: int) -> list[int]:
    """Samples each rank's shards should hold; shard ``i`` is on rank ``i % world_size``.

    Only local shards are counted: counting remote ones would download them, so
    remote shards need ``data.samples_per_epoch``. A damaged shard listed in
    ``sizes.json`` counts what it should hold; otherwise the samples whose tar
    headers survive (before, between and after its damaged spans).
    """
    counts = [0] * world_size
    for i, shard in enumerate(count_shards(urls)):
        counts[i % world_size] += shard.samples
    return counts


def indexed_size(url: str) -> int | None:
    """The samples ``sizes.json`` beside a local shard lists for it, or None."""
    path = _local_path(url)
    if path is None:
        return None
    sizes_path = os.path.join(os.path.dirname(os.path.abspath(path)), "sizes.json")
    try:
        stamp = os.stat(sizes_path).st_mtime_ns
    except OSError:
        return None
    value = _sizes(sizes_path, stamp).get(os.path.basename(path))
    return int(value) if isinstance(value, int) and value >= 0 else None


@functools.lru_cache(maxsize=64)
def _sizes(path: str, stamp: int) -> dict:
    """``sizes.json`` as a dict (read again when its modification time ``stamp`` changes)."""
    try:
        with open(path) as f:
            sizes = json.load(f)
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, describe(exc))
        return {}
    return sizes if isinstance(sizes, dict) else {}


def _count_samples(path: str) -> tuple[int, tuple[str, ...]]:
    """Samples (regular members grouped by key) whose headers :func:`read_members` yields, and
    the shard's damage."""
    keys: set[str] = set()
    damage: list[str] = []
    try:
        with open(path, "rb") as f:
            for item in read_members(f, data=False, size=os.path.getsize(path)):
                if isinstance(item, Damage):
                    damage.append(str(item))
                    continue
                key, _ = base_plus_ext(item.name)
                if key and not os.path.basename(key).startswith("__"):
                    keys.add(key)
    except (OSError, tarfile.TarError) as exc:
        log.warning("counting samples of %s: %s", path, describe(exc))
        damage.append(f"unreadable: {describe(exc)}")
    return len(keys), tuple(damage)
