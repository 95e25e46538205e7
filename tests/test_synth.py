"""The synthetic captioned-shapes data set: layout, determinism, caption variety."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import webdataset as wds

from smotune.data import synth, zeroshot
from smotune.errors import UserError

SMALL = {"train_samples": 256, "shards": 2, "eval_per_class": 2}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth-small")
    synth.generate(out, seed=0, **SMALL)
    return out


def _train_samples(out: Path) -> list[dict]:
    urls = [str(p) for p in sorted(out.glob("train-*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))


def test_classes_and_templates():
    assert len(synth.CLASSES) >= 40
    assert len(set(synth.CLASSES)) == len(synth.CLASSES)
    assert "red circle" in synth.CLASSES
    assert 4 <= len(synth.TEMPLATES) <= 10
    assert all("{c}" in t and t.format(c="x") for t in synth.TEMPLATES)


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    synth.generate(again, seed=0, **SMALL)
    synth.generate(other, seed=1, **SMALL)
    for rel in ["train-0000.tar", "train-0001.tar", "zeroshot/test/0.tar"]:
        assert (small / rel).read_bytes() == (again / rel).read_bytes(), rel
        assert (small / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_summary_names_files_counts_and_time(tmp_path):
    summary = synth.generate(tmp_path / "d", seed=0, **SMALL)
    assert summary.train_shards == [
        tmp_path / "d" / "train-0000.tar",
        tmp_path / "d/train-0001.tar",
    ]
    assert (summary.train_samples, summary.eval_samples) == (256, 2 * len(synth.CLASSES))
    text = str(summary)
    assert "256 training pairs" in text and str(tmp_path / "d") in text
    assert f"{summary.eval_samples} zero-shot eval images" in text
    assert text.rstrip().endswith(" s")


def test_training_shards_read_back(small):
    samples = _train_samples(small)
    assert len(samples) == 256
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(256)]
    for s in samples:
        assert s["jpg"].size == (64, 64) and s["jpg"].mode == "RGB"
        assert isinstance(s["txt"], str) and len(s["txt"].split()) >= 2
        rewrites = s["json"]["rewrites"]
        assert 2 <= len(rewrites) <= 3
        assert len({s["txt"], *rewrites}) == len(rewrites) + 1
        assert 0 <= s["json"]["class"] < len(synth.CLASSES)
    assert len({s["json"]["class"] for s in samples}) >= 40


def test_sizes_json_lists_what_each_shard_holds(small):
    """open_clip's sizes.json, checked against the shards as webdataset reads them."""
    sizes = json.loads((small / "sizes.json").read_text())
    shards = sorted(small.glob("train-*.tar"))
    read = {p.name: sum(1 for _ in wds.WebDataset(str(p), shardshuffle=False)) for p in shards}
    assert sizes == read
    assert sum(sizes.values()) == SMALL["train_samples"]


def test_captions_vary_and_often_use_class_names(small):
    by_class = defaultdict(list)
    for s in _train_samples(small):
        by_class[s["json"]["class"]].append(s["txt"])
    canonical = 0
    for cls, captions in by_class.items():
        if len(captions) >= 4:
            assert len(set(captions)) >= 0.75 * len(captions), captions
        colour, shape = synth.CLASSES[cls].split()
        canonical += sum(colour in c and shape in c for c in captions)
    total = sum(len(c) for c in by_class.values())
    assert 0.2 * total < canonical < 0.8 * total


def test_eval_set_loads_with_right_counts_and_labels(small):
    root = small / "zeroshot"
    assert (root / "classnames.txt").read_text().splitlines() == synth.CLASSES
    assert (root / "test" / "nshards.txt").read_text().strip() == "1"
    evalset = zeroshot.load(root)
    assert evalset.kind == "wds"
    assert evalset.classnames == synth.CLASSES
    assert evalset.templates == synth.TEMPLATES
    labels = [int(x) for _, y in evalset.loader(batch_size=40) for x in y]
    n = len(synth.CLASSES)
    assert labels == [i % n for i in range(2 * n)]
    keys = [s["__key__"] for s in wds.WebDataset(str(root / "test/0.tar"), shardshuffle=False)]
    assert keys[:2] == ["s0000000", "s0000001"]


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--shards"):
        synth.generate(tmp_path, train_samples=10, shards=0)
    with pytest.raises(UserError, match="--samples"):
        synth.generate(tmp_path, train_samples=3, shards=4)
