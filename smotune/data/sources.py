"""Where the training shards are: ``data.train`` as a checked list of URLs, and their sample counts.

Braces and ``::`` in ``data.train`` are expanded and local glob patterns matched
(sorted). Object stores and HTTP(S) are read through a ``pipe:`` command.
Samples are counted from the tar headers of local shards only.
"""

from __future__ import annotations

import glob
import logging
import os
import shlex
import tarfile

from webdataset.tariterators import base_plus_ext

from smotune.config import expand_shards, is_remote
from smotune.data.skips import describe
from smotune.errors import UserError

log = logging.getLogger(__name__)

FIELD = "data.train"


def shard_url(url: str) -> str:
    """The URL webdataset opens for a shard: object stores and HTTP(S) through a ``pipe:``."""
    if url.startswith("s3://"):
        return f"pipe:aws s3 cp {shlex.quote(url)} -"
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


def samples_per_rank(urls: list[str], world_size: int) -> list[int]:
    """Samples (tar members grouped by key) in each rank's shards, read from the tar headers.

    Only local shards are counted: counting remote ones would download them, so
    remote shards need ``data.samples_per_epoch``. A damaged shard counts the
    samples whose headers precede the damage.
    """
    remote = [u for u in urls if _local_path(u) is None]
    if remote:
        raise UserError(
            "config",
            "data.samples_per_epoch",
            f"is needed with remote shards such as {remote[0]} (counting would download them)",
            "set data.samples_per_epoch (samples per worker and epoch)",
        )
    counts = [0] * world_size
    for i, url in enumerate(urls):
        counts[i % world_size] += _count_samples(_local_path(url))
    return counts


def _count_samples(path: str) -> int:
    keys: set[str] = set()
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _ = base_plus_ext(member.name)
                if member.isreg() and key and not os.path.basename(key).startswith("__"):
                    keys.add(key)
    except (OSError, tarfile.TarError) as exc:
        log.warning("counting samples of %s: %s", path, describe(exc))
    return len(keys)
