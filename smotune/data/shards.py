"""The training data: webdataset shards of image+caption samples, one DataLoader per epoch.

Splitting. Shard ``i`` of ``data.train`` goes to rank ``i % world_size``, and a
rank's shards are split among its DataLoader workers with
``wds.split_by_worker``. Fewer shards than ranks is a :class:`UserError`; a
rank with fewer shards than ``data.loader_workers`` runs with one loader worker
per shard (and says so), so no loader worker is ever idle.

Determinism. Every random choice of a loader worker comes from its own streams
seeded from ``(seed, rank, loader worker id, epoch)`` and a purpose: the shard
order, the sample shuffle buffer (``data.shuffle_buffer``), the LaCLIP caption
draw and the image augmentation (run on a private torch RNG state, so the
training process's global RNG is neither used nor moved). The same config,
rank, epoch and number of loader workers give the same batches; another epoch
gives another order.

Epochs. Without ``data.samples_per_epoch`` an epoch is one pass over the rank's
shards, each loader worker dropping its last partial batch, so ranks can
differ in batch count. With it, every loader worker reads its shards round
after round (each round a new seeded order, an endless stream) and the loader
stops after exactly ``samples_per_epoch // optim.batch_size`` batches, the
same on every rank whatever its number of loader workers.

Captions (LaCLIP). A sample's ``json`` may hold ``{"rewrites": [...]}``. Each time
the sample is read, ``data.rewrite`` picks its caption: ``laclip`` draws uniformly
among the original and its ``k`` rewrites (the original with probability
``1/(k+1)``, as LaCLIP's loader does for every sample and every access);
``prob`` takes a uniformly drawn rewrite with probability ``data.rewrite_prob``
(0 by default: the original captions only). Either way a drawn rewrite with
fewer than two words falls back to the original, as in LaCLIP.

Bad data. Tar members that cannot be grouped, samples without an image or
caption, undecodable images and undecodable or malformed json are skipped
samples, counted in a :class:`SkipCounter`; the first few are logged one by
one and each epoch ends with a summary line naming the damaged shards. Shards
are read by :mod:`smotune.data.tars`: garbage or zeros mid-shard, a shard cut
short and a missing end-of-archive marker are a ``damaged_shard``, read on past
the damage where a valid header follows; a shard that cannot be read at all is
an ``unreadable_shard``. When ``sizes.json`` lists a damaged shard, the samples
its damage hid are counted too (``lost_in_damage``), so skipped samples plus
trained samples make what the shard held. The counts include what loader
workers met while prefetching past the epoch's last batch.

The shard list, its checks and sample counts are :mod:`smotune.data.sources`;
the counter is :mod:`smotune.data.skips`. ``SkipCounter``, ``samples_per_rank``,
``shard_list`` and ``shard_url`` are re-exported here for existing callers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys

from smotune.config import TrainConfig
from smotune.data.skips import SkipCounter, describe
from smotune.data.sources import (
    FIELD,
    check_urls,
    count_shards,
    indexed_size,
    samples_per_rank,
    shard_list,
    shard_url,
)
from smotune.data.tars import Damage, read_members
from smotune.errors import UserError

__all__ = [
    "IMAGE_KEYS",
    "ShardLoader",
    "SkipCounter",
    "count_shards",
    "make_loader",
    "samples_per_rank",
    "shard_list",
    "shard_url",
]

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, not samples


# ---------------------------------------------------------------- seeded streams


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _worker_id() -> int:
    info = get_worker_info()
    return 0 if info is None else info.id


class _TorchRng:
    """A private state of torch's global CPU generator, swapped in around each call."""

    def __init__(self, seed: int):
        self.state = torch.Generator().manual_seed(seed).get_state()

    def __call__(self, fn: Callable[[Any], Any], x: Any) -> Any:
        saved = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            return fn(x)
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(saved)


class _WorkerSamples(IterableDataset):
    """One loader worker's part of a rank's shards as decoded ``(image, caption)`` samples."""

    def __init__(
        self,
        urls: list[str],
        cfg: TrainConfig,
        rank: int,
        epoch: int,
        preprocess: Callable[[Image.Image], torch.Tensor],
        skipped: SkipCounter,
    ):
        super().__init__()
        self.urls = urls
        self.seed = cfg.seed
        self.rank = rank
        self.epoch = epoch
        self.rounds = cfg.data.samples_per_epoch is not None
        self.shuffle_buffer = cfg.data.shuffle_buffer
        self.rewrite = cfg.data.rewrite
        self.rewrite_prob = cfg.data.rewrite_prob
        self.preprocess = preprocess
        self.skipped = skipped
        self.sizes = {url: indexed_size(url) for url in urls}

    def _rng(self, purpose: str, worker: int) -> random.Random:
        return random.Random(_seed(purpose, self.seed, self.rank, worker, self.epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        worker = _worker_id()
        urls = list(wds.split_by_worker(self.urls))
        progress = {"raw": 0, "seen": 0, "good": 0}
        members = self._members(urls, self._rng("shards", worker), progress)
        samples = self._counted(group_by_keys(members, handler=self._bad_member), progress)
        if self.shuffle_buffer > 0:
            samples = wds.shuffle(self.shuffle_buffer, rng=self._rng("samples", worker))(samples)
        rewrites = self._rng("rewrites", worker)
        augment = _TorchRng(_seed("augment", self.seed, self.rank, worker, self.epoch))
        for sample in samples:
            progress["seen"] += 1
            decoded = self._decode(sample, rewrites, augment)
            if decoded is not None:
                progress["good"] += 1
                self.skipped.sample_read()
                yield decoded

    def _members(
        self, urls: list[str], rng: random.Random, progress: dict[str, int]
    ) -> Iterator[dict[str, Any]]:
        """Tar members of the shards in a seeded order (rounds of them in resampled mode).

        Each shard ends with ``{}``, the end-of-shard marker of ``group_by_keys``.
        Rounds stop when, after a round, no sample has been good although at
        least as many samples as the first round held have been decoded.
        """
        first_round = None
        while True:
            order = list(urls)
            rng.shuffle(order)
            for url in order:
                keys: set[str] = set()
                damaged = False
                try:
                    for item in _read_tar(url):
                        if isinstance(item, Damage):
                            damaged = True
                            self.skipped.add("damaged_shard", str(item), shard=url)
                            continue
                        keys.add(base_plus_ext(item["fname"])[0])
                        yield item
                except Exception as exc:
                    damaged = True
                    self.skipped.add("unreadable_shard", describe(exc), shard=url)
                else:
                    self.skipped.shard_read()
                listed = self.sizes.get(url)
                if damaged and listed is not None and listed > len(keys):
                    lost = listed - len(keys)
                    detail = f"{lost} of the {listed} samples sizes.json lists lost"
                    self.skipped.add("lost_in_damage", detail, lost, shard=url)
                yield {}
            if not self.rounds:
                return
            if first_round is None:
                first_round = progress["raw"]
            if progress["good"] == 0 and progress["seen"] >= first_round:
                return

    @staticmethod
    def _counted(samples: Iterator[dict], progress: dict[str, int]) -> Iterator[dict]:
        for sample in samples:
            progress["raw"] += 1
            yield sample

    def _bad_member(self, exc: Exception) -> bool:
        self.skipped.add("bad_tar_member", describe(exc))
        return True

    def _decode(
        self, sample: dict[str, Any], rewrites: random.Random, augment: _TorchRng
    ) -> tuple[torch.Tensor, str] | None:
        where = f"{sample.get('__url__')}:{sample.get('__key__')}"
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None:
            return self._skip("no_image", where)
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except (KeyError, UnicodeDecodeError):
            caption = ""
        if not caption:
            return self._skip("no_caption", where)
        options: list[str] = []
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
                options = (meta.get("rewrites") or []) if isinstance(meta, dict) else []
                if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                    raise ValueError("rewrites is not a list of strings")
            except ValueError as exc:
                return self._skip("bad_json", f"{where}: {exc}")
        drawn = self._draw(options, rewrites) if options else None
        if drawn is not None and len(drawn.split()) >= 2:
            caption = drawn
        try:
            with Image.open(io.BytesIO(sample[image_key])) as img:
                rgb = img.convert("RGB")
        except Exception as exc:
            return self._skip("bad_image", f"{where}.{image_key}: {describe(exc)}")
        return augment(self.preprocess, rgb), caption

    def _draw(self, options: list[str], rng: random.Random) -> str | None:
        """A rewrite drawn by ``data.rewrite``'s rule, or None for the original caption."""
        if self.rewrite == "laclip":
            pick = rng.randrange(len(options) + 1)  # 0: the original, i: rewrite i
            return options[pick - 1].strip() if pick else None
        if self.rewrite_prob > 0 and rng.random() < self.rewrite_prob:
            return rng.choice(options).strip()
        return None

    def _skip(self, reason: str, detail: str) -> None:
        self.skipped.add(reason, detail)
        return None


def _read_tar(url: str) -> Iterator[dict[str, Any] | Damage]:
    """The regular members of one shard and its damage; the stream is closed quietly if abandoned.

    Members named ``__*__`` (webdataset's metadata) are left out.
    """
    path = url[len("file://") :] if url.startswith("file://") else url
    size = os.path.getsize(path) if os.path.isfile(path) else None
    stream = wds.gopen(shard_url(url))
    complete = False
    try:
        for item in read_members(stream, size=size):
            if isinstance(item, Damage):
                yield item
            elif not _META.match(item.name):
                yield {"fname": item.name, "data": item.data, "__url__": url}
        complete = True
    finally:
        if complete:
            stream.close()
        else:
            try:
                stream.close()
            except Exception as exc:
                log.debug("closing %s after an early stop: %s", url, exc)


class _Collate:
    """Stack images; tokenize the captions of a batch in one call."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]):
        self.tokenizer = tokenizer

    def __call__(self, samples: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, ...]:
        images, captions = zip(*samples, strict=True)
        return torch.stack(images), self.tokenizer(list(captions))


# ---------------------------------------------------------------- the loader


class ShardLoader(DataLoader):
    """A DataLoader over one rank's shards for one epoch.

    ``batches_per_epoch`` is ``samples_per_epoch // batch_size`` (the loader
    stops there; its workers' streams are endless) or ``None`` for one pass.
    Iterating it to the end logs the epoch's skips and raises
    :class:`UserError` when the epoch produced no batch, or fewer than
    ``batches_per_epoch``.
    """

    def __init__(
        self,
        pipeline: wds.DataPipeline,
        *,
        skipped: SkipCounter,
        rank: int,
        epoch: int,
        urls: list[str],
        samples_per_batch: int,
        batches_per_epoch: int | None,
        **kwargs: Any,
    ):
        super().__init__(pipeline, batch_size=None, **kwargs)
        self.skipped = skipped
        self.rank = rank
        self.epoch = epoch
        self.urls = urls
        self.samples_per_batch = samples_per_batch
        self.batches_per_epoch = batches_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        before = self.skipped.snapshot()
        noted = len(self.skipped.shard_details)
        batches = 0
        stream = super().__iter__()
        for batch in islice(stream, self.batches_per_epoch):
            batches += 1
            yield batch
        del stream
        self._end_of_epoch(before, self.skipped.snapshot(), batches, noted)

    def _end_of_epoch(
        self, before: list[int], after: list[int], batches: int, noted: int = 0
    ) -> None:
        delta = [a - b for a, b in zip(after, before, strict=True)]
        reasons = {r: delta[i] for i, r in enumerate(SkipCounter.REASONS) if delta[i]}
        skipped = sum(n for r, n in reasons.items() if r in SkipCounter.SAMPLE_REASONS)
        bad_shards = sum(n for r, n in reasons.items() if r in SkipCounter.SHARD_REASONS)
        where = f"epoch {self.epoch}, rank {self.rank}"
        if reasons:
            detail = ", ".join(f"{r}: {n}" for r, n in reasons.items())
            shards = f" and met {bad_shards} damaged or unreadable shards" if bad_shards else ""
            new = self.skipped.shard_details[noted:]  # shards met for the first time
            damage = "".join(f"; {d}" for d in new)
            log.warning("%s: skipped %d samples%s (%s)%s", where, skipped, shards, detail, damage)
        expected = self.batches_per_epoch
        if batches and (expected is None or batches == expected):
            return
        shards, samples = delta[SkipCounter._SHARDS], delta[SkipCounter._SAMPLES]
        first = self.urls[0]
        if shards == 0:
            error = self.skipped.first_shard_error or first
            problem = f"none of the {len(self.urls)} shards of rank {self.rank} could be read"
            problem += f" ({error})"
            fix = "check that the shards exist, are tar files and are readable from every worker"
        elif samples == 0:
            problem = f"every sample of rank {self.rank} was skipped ({skipped} samples)"
            problem += f", first shard {first}"
            fix = "check that the shards hold image (jpg/png/webp) + txt samples"
        elif batches == 0:
            problem = (
                f"rank {self.rank} read {samples} good samples, fewer than one batch of "
                f"{self.samples_per_batch} per loader worker (first shard {first})"
            )
            fix = "lower optim.batch_size or data.loader_workers, or add data"
        else:
            problem = f"{where}: the data ran out after {batches} of {expected} batches"
            fix = "check the data: almost every sample was skipped"
        raise UserError("config", FIELD, problem, fix)


def make_loader(
    cfg: TrainConfig,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    rank: int,
    world_size: int,
    epoch: int,
    skipped: SkipCounter,
) -> ShardLoader:
    """Batches ``(images [B,3,H,W] float, texts [B,context] long)`` of one rank for one epoch.

    ``B`` is ``cfg.optim.batch_size``; partial batches are dropped. Build one
    loader per epoch; iterating the same loader twice repeats the epoch.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    urls = shard_list(cfg.data.train)
    check_urls(urls, world_size)
    mine = urls[rank::world_size]
    workers = cfg.data.loader_workers
    if len(mine) < workers:
        log.warning(
            "rank %d has %d shards for data.loader_workers=%d: using %d loader workers",
            rank,
            len(mine),
            workers,
            len(mine),
        )
        workers = len(mine)
    batch = cfg.optim.batch_size
    expected = None
    if cfg.data.samples_per_epoch is not None:
        expected = cfg.data.samples_per_epoch // batch
        if expected == 0:
            raise UserError(
                "config",
                "data.samples_per_epoch",
                f"{cfg.data.samples_per_epoch} is less than one batch ({batch})",
                "raise data.samples_per_epoch or lower optim.batch_size",
            )
    pipeline = wds.DataPipeline(
        _WorkerSamples(mine, cfg, rank, epoch, preprocess, skipped),
        wds.batched(batch, collation_fn=_Collate(tokenizer), partial=False),
    )
    return ShardLoader(
        pipeline,
        skipped=skipped,
        rank=rank,
        epoch=epoch,
        urls=mine,
        samples_per_batch=batch,
        batches_per_epoch=expected,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=cfg.workers.gpus > 0 and torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(_seed("loader", cfg.seed, rank, epoch)),
    )
