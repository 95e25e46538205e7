"""The webdataset training pipeline on real tar shards with the tiny-vit transform and tokenizer."""

from __future__ import annotations

import io
import json
import math
import random
import re
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from smotune import model as smodel
from smotune.config import ModelConfig, TrainConfig
from smotune.data import synth
from smotune.data.shards import (
    SkipCounter,
    make_loader,
    samples_per_rank,
    shard_list,
    shard_url,
)
from smotune.data.skips import damage_lines
from smotune.errors import UserError


@pytest.fixture(scope="module")
def clip_io():
    """The real open_clip train transform and tokenizer of tiny-vit."""
    net = smodel.create(ModelConfig(arch="tiny-vit"), seed=0)
    return smodel.transforms(net, train=True), smodel.tokenizer("tiny-vit")


def png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 10), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(out, "PNG")
    return out.getvalue()


def caption(key: str) -> str:
    return f"a picture of sample {key}"


def sample(key: str, i: int, **extra) -> dict:
    return {"__key__": key, "png": png(i), "txt": caption(key), **extra}


def write_shards(root: Path, shards: int, per_shard: int, name: str = "s") -> list[str]:
    paths = []
    for s in range(shards):
        path = root / f"{name}-{s:02d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for j in range(per_shard):
                key = f"{name}{s:02d}_{j:03d}"
                rewrites = [f"rewritten {key} first", f"rewritten {key} second"]
                sink.write(sample(key, s * 100 + j, json=json.dumps({"rewrites": rewrites})))
        paths.append(str(path))
    return paths


def config(tmp_path: Path, train, **data) -> TrainConfig:
    batch = data.pop("batch_size", 2)
    seed = data.pop("seed", 0)
    data.setdefault("loader_workers", 0)
    return TrainConfig(
        data={"train": train, "zeroshot": str(tmp_path), **data},
        optim={"batch_size": batch},
        seed=seed,
    )


def captions_of(loader, tokenizer, texts_by_caption: dict[str, str]) -> list[str]:
    """The captions of every batch in order, found back from their tokens."""
    lookup = {tuple(tokenizer([c])[0].tolist()): c for c in texts_by_caption}
    out = []
    for images, texts in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        assert texts.dtype == torch.long and texts.shape == (len(images), 32)
        out += [lookup[tuple(row.tolist())] for row in texts]
    return out


def all_captions(keys) -> dict[str, str]:
    texts = {}
    for key in keys:
        texts[caption(key)] = key
        texts[f"rewritten {key} first"] = key
        texts[f"rewritten {key} second"] = key
    return texts


def keys_in(paths: list[str]) -> list[str]:
    return [s["__key__"] for p in paths for s in wds.WebDataset(p, shardshuffle=False)]


# ------------------------------------------------------------------ splitting and order


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_read_disjoint_keys_covering_everything(tmp_path, clip_io, workers):
    preprocess, tokenizer = clip_io
    paths = write_shards(tmp_path, shards=4, per_shard=6)
    keys = keys_in(paths)
    cfg = config(tmp_path, f"{tmp_path}/s-{{00..03}}.tar", loader_workers=workers)
    texts = all_captions(keys)
    seen = []
    for rank in range(2):
        loader = make_loader(cfg, preprocess, tokenizer, rank, 2, epoch=0, skipped=SkipCounter())
        assert loader.num_workers == workers
        seen.append([texts[c] for c in captions_of(loader, tokenizer, texts)])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(keys)
    assert set(seen[0]) == set(keys_in(paths[0::2]))


@pytest.mark.parametrize("workers", [0, 2])
def test_order_is_seeded_by_seed_and_epoch(tmp_path, clip_io, workers):
    preprocess, tokenizer = clip_io
    paths = write_shards(tmp_path, shards=4, per_shard=8)
    keys = keys_in(paths)
    texts = all_captions(keys)

    def run(epoch: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
        cfg = config(tmp_path, paths, shuffle_buffer=16, loader_workers=workers, seed=seed)
        loader = make_loader(cfg, preprocess, tokenizer, 0, 1, epoch, SkipCounter())
        images = torch.cat([batch[0] for batch in loader])
        loader = make_loader(cfg, preprocess, tokenizer, 0, 1, epoch, SkipCounter())
        return captions_of(loader, tokenizer, texts), images

    state = torch.get_rng_state()
    order, images = run(epoch=3)
    assert torch.equal(torch.get_rng_state(), state)
    again, images_again = run(epoch=3)
    assert order == again and torch.equal(images, images_again)
    assert sorted(order) == sorted(caption(k) for k in keys)
    assert run(epoch=4)[0] != order
    assert run(epoch=3, seed=1)[0] != order


def test_fewer_shards_than_loader_workers_reduces_workers(tmp_path, clip_io, caplog):
    preprocess, tokenizer = clip_io
    paths = write_shards(tmp_path, shards=3, per_shard=4)
    cfg = config(tmp_path, paths, loader_workers=2)
    loader = make_loader(cfg, preprocess, tokenizer, 1, 2, 0, SkipCounter())
    assert loader.num_workers == 1
    assert "using 1 loader workers" in caplog.text
    assert len(list(loader)) == 2
    with pytest.raises(UserError, match="3 shards for 4 ranks"):
        make_loader(cfg, preprocess, tokenizer, 0, 4, 0, SkipCounter())


@pytest.mark.parametrize("workers", [0, 2])
def test_samples_per_epoch_resamples_to_an_exact_length(tmp_path, clip_io, workers):
    preprocess, tokenizer = clip_io
    paths = write_shards(tmp_path, shards=4, per_shard=3)
    texts = all_captions(keys_in(paths))
    cfg = config(tmp_path, paths, samples_per_epoch=21, batch_size=2, loader_workers=workers)
    for rank in range(2):
        loader = make_loader(cfg, preprocess, tokenizer, rank, 2, epoch=1, skipped=SkipCounter())
        assert loader.batches_per_epoch == 10
        got = captions_of(loader, tokenizer, texts)
        assert len(got) == 20  # 10 batches of 2, from 6 samples read round after round
        assert {texts[c] for c in got} == set(keys_in(paths[rank::2]))
    with pytest.raises(UserError, match="less than one batch"):
        make_loader(
            config(tmp_path, paths, samples_per_epoch=1, batch_size=2),
            preprocess,
            tokenizer,
            0,
            1,
            0,
            SkipCounter(),
        )


# ------------------------------------------------------------------ LaCLIP rewrites


def test_rewrite_probability(tmp_path, clip_io):
    preprocess, tokenizer = clip_io
    path = tmp_path / "r.tar"
    with wds.TarWriter(str(path)) as sink:
        for j in range(6):
            rewrites = [f"rewritten r{j} first", f"rewritten r{j} second"]
            sink.write(sample(f"r{j}", j, json=json.dumps({"rewrites": rewrites})))
        sink.write(sample("short", 7, json=json.dumps({"rewrites": ["single"]})))
        sink.write(sample("plain", 8))
    keys = [f"r{j}" for j in range(6)] + ["short", "plain"]
    texts = all_captions(keys)

    def captions(p: float, epoch: int = 0) -> list[str]:
        cfg = config(tmp_path, str(path), rewrite_prob=p, batch_size=1)
        loader = make_loader(cfg, preprocess, tokenizer, 0, 1, epoch, SkipCounter())
        return sorted(captions_of(loader, tokenizer, texts))

    originals = sorted(caption(k) for k in keys)
    assert captions(0.0) == originals
    rewritten = captions(1.0)
    assert len(rewritten) == 8
    assert {c for c in rewritten if not c.startswith("rewritten")} == {
        caption("short"),
        caption("plain"),
    }
    assert {c.split()[1] for c in rewritten if c.startswith("rewritten")} == {
        f"r{j}" for j in range(6)
    }
    assert captions(1.0) == rewritten
    both = {c.split()[-1] for e in range(6) for c in captions(1.0, e) if c.startswith("rewritten")}
    assert both == {"first", "second"}


def caption_options(shard: Path) -> dict[str, list[str]]:
    """Each sample's key -> [original caption, *its rewrites], read from the tar itself."""
    texts: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext in ("txt", "json"):
                texts.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {
        key: [t["txt"].decode().strip(), *json.loads(t.get("json", b"{}")).get("rewrites", [])]
        for key, t in texts.items()
    }


def draw_counts(shard: Path, tmp_path: Path, clip_io, accesses: int, **data) -> tuple:
    """Read ``shard`` round after round (``accesses`` samples in all, one epoch) and count
    each sample's options drawn: ``{(key, i): n}`` with i = 0 the original, i = j rewrite j.
    Samples whose options' tokens another sample shares are left out (they cannot be told
    apart); returns the counts and the options of the samples counted."""
    preprocess, tokenizer = clip_io
    options = caption_options(shard)
    owners: dict[tuple[int, ...], set[tuple[str, int]]] = {}
    for key, texts in options.items():
        for i, text in enumerate(texts):
            owners.setdefault(tuple(tokenizer([text])[0].tolist()), set()).add((key, i))
    shared = {key for owner in owners.values() if len(owner) > 1 for key, _ in owner}
    counted = {k: v for k, v in options.items() if k not in shared}
    cfg = config(tmp_path, str(shard), samples_per_epoch=accesses, batch_size=50, **data)
    counts: Counter[tuple[str, int]] = Counter()
    for _, texts in make_loader(cfg, preprocess, tokenizer, 0, 1, 0, SkipCounter()):
        for row in texts:
            owner = owners[tuple(row.tolist())]
            key, i = next(iter(owner))
            if key in counted:
                counts[(key, i)] += 1
    return counts, counted


@pytest.fixture(scope="module")
def synth_shard(tmp_path_factory) -> Path:
    """One training shard written by `smotune data synth` (2 or 3 rewrites a sample)."""
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, train_samples=40, shards=1, eval_per_class=1, seed=5)
    return out / "train-0000.tar"


def test_laclip_draws_the_original_and_each_rewrite_with_probability_one_over_k_plus_1(
    synth_shard, tmp_path, clip_io
):
    """Per sample and per access: the original and each of its k rewrites 1/(k+1) of the time,
    within 4 binomial standard errors, pooled over the samples with the same k."""
    counts, options = draw_counts(synth_shard, tmp_path, clip_io, 6000, rewrite="laclip")
    ks = sorted({len(o) - 1 for o in options.values()})
    assert ks == [2, 3] and len(options) >= 30
    for k in ks:
        keys = [key for key, o in options.items() if len(o) == k + 1]
        n = sum(counts[(key, i)] for key in keys for i in range(k + 1))
        p = 1 / (k + 1)
        se = math.sqrt(p * (1 - p) / n)
        assert n > 1000, n
        for i in range(k + 1):
            share = sum(counts[(key, i)] for key in keys) / n
            what = "the original" if i == 0 else f"rewrite {i}"
            assert abs(share - p) < 4 * se, (
                f"k={k}: {what} drawn {share:.3f}, not {p:.3f} ± {4 * se:.3f}"
            )


def test_laclip_falls_back_to_the_original_for_a_draw_under_two_words(tmp_path, clip_io):
    """A one-word rewrite drawn gives the original, as in LaCLIP: with k = 3 of which one is a
    single word the original comes 2/4 of the accesses; a sample without rewrites always."""
    path = tmp_path / "fallback.tar"
    with wds.TarWriter(str(path)) as sink:
        short = ["single", "rewritten short second", "rewritten short third"]
        sink.write(sample("short", 1, json=json.dumps({"rewrites": short})))
        sink.write(sample("none", 2, json=json.dumps({"rewrites": []})))
        sink.write(sample("plain", 3))
    counts, options = draw_counts(path, tmp_path, clip_io, 3000, rewrite="laclip", shuffle_buffer=0)
    assert counts[("none", 0)] == counts[("plain", 0)] == 1000
    n = sum(counts[("short", i)] for i in range(4))
    assert n == 1000 and counts[("short", 1)] == 0
    se = math.sqrt(0.5 * 0.5 / n)
    assert abs(counts[("short", 0)] / n - 0.5) < 4 * se, counts
    for i in (2, 3):
        assert abs(counts[("short", i)] / n - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n), counts


# ------------------------------------------------------------------ bad data


def truncate_inside(path: Path, key: str) -> None:
    """Cut a tar in the middle of the data of the first member of sample ``key``."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith(key + "."))
    with open(path, "r+b") as f:
        f.truncate(member.offset_data + member.size // 2)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_data_is_skipped_and_counted(tmp_path, clip_io, workers):
    preprocess, tokenizer = clip_io
    good = [f"g{i}" for i in range(12)]
    shard_a = tmp_path / "bad-00.tar"
    with wds.TarWriter(str(shard_a)) as sink:
        sink.write(sample(good[0], 0))
        sink.write({"__key__": "corrupt", "jpg": b"this is not a jpeg", "txt": caption("corrupt")})
        sink.write({"__key__": "notext", "png": png(1)})
        sink.write(sample(good[1], 2))
        sink.write({"__key__": "badjson", "png": png(3), "txt": "x y", "json": b"{oops"})
        sink.write(sample(good[2], 4))
    shard_b = tmp_path / "bad-01.tar"
    with wds.TarWriter(str(shard_b)) as sink:
        for i, key in enumerate(good[3:9] + ["lost0", "lost1"]):
            sink.write(sample(key, 10 + i))
    truncate_inside(shard_b, "lost0")
    shard_c = tmp_path / "bad-02.tar"
    with wds.TarWriter(str(shard_c)) as sink:
        for i, key in enumerate(good[9:]):
            sink.write(sample(key, 20 + i))
    shard_d = tmp_path / "bad-03.tar"
    shard_d.write_bytes(b"\x00garbage" * 300)

    cfg = config(tmp_path, f"{tmp_path}/bad-{{00..03}}.tar", batch_size=1, loader_workers=workers)
    skipped = SkipCounter()
    loader = make_loader(cfg, preprocess, tokenizer, 0, 1, 0, skipped)
    got = captions_of(loader, tokenizer, all_captions(good))
    assert sorted(got) == sorted(caption(k) for k in good)
    assert skipped.reasons == {
        "bad_image": 1,
        "no_caption": 1,
        "bad_json": 1,
        "unreadable_shard": 1,  # not a tar file
        "damaged_shard": 1,  # the truncated one, read up to its damage
    }
    assert (skipped.count, skipped.bad_shards) == (3, 2)
    assert (skipped.samples_read, skipped.shards_read) == (12, 3)

    again = make_loader(cfg, preprocess, tokenizer, 0, 1, 1, skipped)
    assert len(list(again)) == 12
    assert (skipped.count, skipped.bad_shards) == (6, 4)


def test_no_shards_or_missing_files_are_user_errors(tmp_path, clip_io):
    preprocess, tokenizer = clip_io

    def load(train):
        return make_loader(config(tmp_path, train), preprocess, tokenizer, 0, 1, 0, SkipCounter())

    with pytest.raises(UserError, match="data.train: expands to no shards"):
        load([])
    with pytest.raises(UserError, match=r"data.train: 3 of 3 shards do not exist, e.g. .*none-0"):
        load(f"{tmp_path}/none-{{0..2}}.tar")
    with pytest.raises(UserError, match=r"shards do not exist, e.g. .*none-\*"):
        load(f"{tmp_path}/none-*.tar")


def test_shard_list_expands_braces_lists_and_local_globs(tmp_path):
    paths = write_shards(tmp_path, shards=3, per_shard=1)
    assert shard_list(f"{tmp_path}/s-*.tar") == paths
    assert shard_list(f"{tmp_path}/s-{{00..01}}.tar::{paths[2]}") == paths
    remote = "s3://b/x-{0..1}.tar"
    assert shard_list([paths[2], remote]) == [paths[2], "s3://b/x-0.tar", "s3://b/x-1.tar"]


def test_samples_per_rank_counts_local_shards(tmp_path):
    paths = write_shards(tmp_path, shards=3, per_shard=4)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 300)
    assert samples_per_rank(paths, 2) == [8, 4]
    assert samples_per_rank([*paths, str(junk)], 2) == [8, 4]
    assert samples_per_rank(paths, 1) == [12]
    with pytest.raises(UserError, match="data.samples_per_epoch: is needed with remote shards"):
        samples_per_rank([*paths, "s3://bucket/x.tar"], 2)


@pytest.mark.parametrize("samples_per_epoch", [None, 4])
def test_nothing_readable_is_a_user_error_after_trying(tmp_path, clip_io, samples_per_epoch):
    preprocess, tokenizer = clip_io
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 300)
    train = [str(junk), str(junk)]
    cfg = config(tmp_path, train, samples_per_epoch=samples_per_epoch, loader_workers=2)
    loader = make_loader(cfg, preprocess, tokenizer, 0, 1, 0, SkipCounter())
    with pytest.raises(UserError, match="data.train: none of the 2 shards of rank 0 could be read"):
        list(loader)


@pytest.mark.parametrize("samples_per_epoch", [None, 4])
def test_all_samples_bad_is_a_user_error(tmp_path, clip_io, samples_per_epoch):
    preprocess, tokenizer = clip_io
    path = tmp_path / "allbad.tar"
    with wds.TarWriter(str(path)) as sink:
        for j in range(5):
            sink.write({"__key__": f"b{j}", "jpg": b"broken", "txt": "a caption"})
    cfg = config(tmp_path, str(path), samples_per_epoch=samples_per_epoch, shuffle_buffer=3)
    skipped = SkipCounter()
    loader = make_loader(cfg, preprocess, tokenizer, 0, 1, 0, skipped)
    with pytest.raises(UserError, match="every sample of rank 0 was skipped"):
        list(loader)
    assert skipped.reasons["bad_image"] >= 5


def test_too_few_samples_for_a_batch_is_a_user_error(tmp_path, clip_io):
    preprocess, tokenizer = clip_io
    paths = write_shards(tmp_path, shards=1, per_shard=3)
    cfg = config(tmp_path, paths, batch_size=4)
    loader = make_loader(cfg, preprocess, tokenizer, 0, 1, 0, SkipCounter())
    with pytest.raises(UserError, match="fewer than one batch of 4"):
        list(loader)


# ------------------------------------------------------------------ URLs


def test_shard_urls_for_object_stores_and_http():
    s3 = f"pipe:exec {sys.executable} -m smotune.data.objstore s3://bucket/cc3m/000.tar"
    assert shard_url("s3://bucket/cc3m/000.tar") == s3  # read by pyarrow: test_object_store.py
    assert shard_url("gs://bucket/a/001.tar") == "pipe:gsutil cat gs://bucket/a/001.tar"
    assert shard_url("gcs://bucket/a/001.tar") == "pipe:gsutil cat gs://bucket/a/001.tar"
    assert shard_url("https://host/d/002.tar") == "pipe:curl -s -L -f https://host/d/002.tar"
    assert shard_url("http://host/d/a b&c.tar") == "pipe:curl -s -L -f 'http://host/d/a b&c.tar'"
    assert shard_url("/data/cc3m/000.tar") == "/data/cc3m/000.tar"
    assert shard_url("pipe:cat /x.tar") == "pipe:cat /x.tar"


# ------------------------------------------------------------------ damaged shards


def damage(paths: list[str]) -> tuple[set[str], set[str]]:
    """Write 64 KiB of random bytes into the middle of ``paths[1]`` and cut ``paths[3]`` to half.

    Returns the keys of the two shards whose members all lie clear of the damage
    (the reader must recover those) and the keys that have a member inside it.
    """
    clear, hit = set(), set()
    garbage = Path(paths[1])
    start = garbage.stat().st_size // 2 + 100  # not block-aligned: it starts inside a member
    spans = {paths[1]: (start, start + 65536)}
    cut = Path(paths[3]).stat().st_size // 2 + 520  # inside a member
    spans[paths[3]] = (cut, None)
    for path, (a, b) in spans.items():
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key = m.name.split(".")[0]
                lo, hi = m.offset, m.offset_data + m.size
                outside = hi <= a if b is None else (hi <= a - 1024 or lo >= b)
                (clear if outside else hit).add(key)
    clear -= hit
    with open(paths[1], "r+b") as f:
        f.seek(start)
        f.write(random.Random(7).randbytes(65536))
    with open(paths[3], "r+b") as f:
        f.truncate(cut)
    return clear, hit


@pytest.mark.parametrize("sizes_json", [False, True])
def test_damaged_shards_are_read_through_and_every_lost_sample_counted(
    tmp_path, clip_io, caplog, sizes_json
):
    """One pass, two ranks, two real loader workers each: trained + data_skipped adds up."""
    preprocess, tokenizer = clip_io
    paths = write_shards(tmp_path, shards=4, per_shard=80)  # rank 0: 00, 02; rank 1: 01, 03
    keys = {p: keys_in([p]) for p in paths}
    clear, hit = damage(paths)
    if sizes_json:
        (tmp_path / "sizes.json").write_text(json.dumps({Path(p).name: 80 for p in paths}))
    counted = samples_per_rank(paths, 2)
    cfg = config(tmp_path, paths, batch_size=1, loader_workers=2, shuffle_buffer=0)
    texts = all_captions(k for ks in keys.values() for k in ks)
    trained, skipped = [], []
    for rank in (0, 1):
        counter = SkipCounter()
        loader = make_loader(cfg, preprocess, tokenizer, rank, 2, 0, counter)
        trained.append({texts[c] for c in captions_of(loader, tokenizer, texts)})
        skipped.append(counter)

    # rank 0 reads healthy shards only: all of them, nothing skipped
    assert trained[0] == set(keys[paths[0]] + keys[paths[2]])
    assert (skipped[0].count, skipped[0].bad_shards, counted[0]) == (0, 0, 160)
    # rank 1: every sample clear of the damage is trained, those after the garbage included
    assert clear <= trained[1] <= set(keys[paths[1]] + keys[paths[3]])
    after_garbage = {k for k in clear if k in keys[paths[1]] and k > min(hit)}
    assert after_garbage and after_garbage <= trained[1]
    assert skipped[1].reasons["damaged_shard"] == 2
    assert skipped[1].bad_shards == 2
    if sizes_json:
        # sizes.json says what the shards held: nothing lost goes uncounted
        assert counted[1] == 160
        assert len(trained[1]) + skipped[1].count == 160
        assert skipped[1].reasons["lost_in_damage"] > 0
    else:
        # the count reads the same headers: what it finds is trained or counted as skipped
        assert len(clear) < counted[1] < 160
        assert len(trained[1]) + skipped[1].count == counted[1]
    # one line a damaged shard, each naming it and what was met there (the console's lines)
    lines = damage_lines(skipped[1].damage)
    assert [ln.split(": ", 1)[0] for ln in lines] == [paths[1], paths[3]] and not skipped[0].damage
    assert re.match(rf"{paths[1]}: bytes \d+-\d+ of \d+ unreadable: invalid tar header", lines[0])
    assert lines[1].startswith(f"{paths[3]}: ends at byte {Path(paths[3]).stat().st_size} of ")
    assert ("samples sizes.json lists lost" in lines[1]) == sizes_json
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "bytes " in warned and "unreadable: invalid tar header" in warned
    assert f"{paths[3]}: ends at byte {Path(paths[3]).stat().st_size} of" in warned
    assert "truncated inside" in warned
