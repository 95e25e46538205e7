"""Zero-shot eval sets: clip_benchmark webdataset layout, ImageNet-style folders, user errors."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from smotune.data import synth, zeroshot
from smotune.errors import UserError


@pytest.fixture(scope="module")
def synth_eval(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zs-synth")
    synth.generate(out, train_samples=16, shards=1, eval_per_class=2, seed=3)
    return out / "zeroshot"


def _png(colour=(200, 30, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _image(path: Path, fmt: str = "PNG", colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)


def _folder_set(root: Path, classes=("big_dog", "cat", "red_fox"), per_class=2) -> Path:
    for i, name in enumerate(classes):
        for j in range(per_class):
            _image(root / "test" / name / f"{j}.png", colour=(40 * i, 10 * j, 90))
    return root


def _wds_set(root: Path, samples: list[dict], classnames=("a", "b")) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\nthe {c}\n")
    (root / "test" / "nshards.txt").write_text("1")
    with wds.TarWriter(str(root / "test" / "0.tar"), encoder=False) as sink:
        for i, sample in enumerate(samples):
            sink.write({"__key__": f"s{i:07d}", **sample})
    return root


def _labels(evalset, batch_size=5, num_workers=0) -> list[int]:
    return [int(y) for _, ys in evalset.loader(batch_size, num_workers) for y in ys]


def test_wds_set_loads_in_order(synth_eval):
    evalset = zeroshot.load(synth_eval)
    assert (evalset.kind, evalset.root) == ("wds", synth_eval)
    assert evalset.classnames == synth.CLASSES
    assert evalset.templates == synth.TEMPLATES
    batches = list(evalset.loader(batch_size=32))
    assert [len(y) for _, y in batches] == [32, 32, 32]
    images, labels = batches[0]
    assert images.shape == (32, 3, 64, 64) and labels.dtype == torch.long
    n = len(synth.CLASSES)
    assert _labels(evalset, 32) == [i % n for i in range(2 * n)]
    assert _labels(evalset, 7, num_workers=1) == _labels(evalset, 7)
    assert evalset.skipped == 0


def test_wds_transform_and_max_samples(synth_eval):
    from torchvision import transforms

    evalset = zeroshot.load(
        synth_eval,
        transform=transforms.Compose([transforms.Resize(32), transforms.ToTensor()]),
        max_samples=10,
    )
    batches = list(evalset.loader(batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 3, 32, 32)
    assert _labels(evalset, 4) == list(range(10))


def test_a_pass_that_fits_cache_bytes_is_read_once(tmp_path):
    """The eval set's first whole pass is kept (the next read no file) when it fits; a bigger
    one, a pass with another batch size or an unfinished pass is read from the files."""
    import shutil

    from torchvision import transforms

    root = tmp_path / "zs"
    synth.generate(tmp_path, train_samples=16, shards=1, eval_per_class=2, seed=3)
    to_tensor = transforms.Compose([transforms.Resize(16), transforms.ToTensor()])
    pass_bytes = 2 * len(synth.CLASSES) * (3 * 16 * 16 * 4 + 8)  # float images, long labels

    def load(cache_bytes):
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(tmp_path / "zeroshot", root)
        return zeroshot.load(root, transform=to_tensor, cache_bytes=cache_bytes)

    kept = load(pass_bytes)
    next(iter(kept.loader(batch_size=8)))  # a pass left unfinished keeps nothing
    first = list(kept.loader(batch_size=8))
    streamed = load(pass_bytes - 1)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, streamed.loader(8), strict=True))
    shutil.rmtree(root)
    again = list(kept.loader(batch_size=8))  # no file left: from memory
    assert all(
        torch.equal(a, b) and torch.equal(y, z) for (a, y), (b, z) in zip(again, first, strict=True)
    )
    assert kept.skipped == 0
    with pytest.raises(FileNotFoundError):  # another batch size reads the (deleted) files
        list(kept.loader(batch_size=4))
    with pytest.raises(FileNotFoundError):  # too big to keep: the second pass reads the files
        list(streamed.loader(batch_size=8))


def test_wds_image_keys_and_corrupt_images_are_skipped(tmp_path, caplog):
    jpg, webp = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpg, format="JPEG")
    Image.new("RGB", (8, 8)).save(webp, format="WEBP")
    samples = [
        {"png": _png(), "cls": b"0"},
        {"jpg": jpg.getvalue(), "cls": b"1"},
        {"png": b"not an image", "cls": b"1"},
        {"webp": webp.getvalue(), "cls": b"0"},
        {"jpeg": jpg.getvalue(), "cls": b"1"},
    ]
    evalset = zeroshot.load(_wds_set(tmp_path / "wds", samples))
    with caplog.at_level(logging.WARNING, logger="smotune.data.zeroshot"):
        assert _labels(evalset, 2) == [0, 1, 0, 1]
        assert evalset.skipped == 1
        assert _labels(evalset, 2) == [0, 1, 0, 1]
    assert evalset.skipped == 1
    warnings = [r for r in caplog.records if "skipped 1 unreadable" in r.getMessage()]
    assert len(warnings) == 1


def test_wds_label_outside_classnames_is_user_error(tmp_path):
    evalset = zeroshot.load(_wds_set(tmp_path / "wds", [{"png": _png(), "cls": b"7"}]))
    with pytest.raises(UserError, match="label 7 is outside the 2 classes"):
        _labels(evalset)


def test_folder_set_uses_folder_names_and_openai_templates(tmp_path):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    evalset = zeroshot.load(_folder_set(tmp_path / "imgs"))
    assert evalset.kind == "folder"
    assert evalset.classnames == ["big dog", "cat", "red fox"]
    assert evalset.templates == [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert all("{c}" in t for t in evalset.templates)
    assert _labels(evalset, 4) == [0, 0, 1, 1, 2, 2]
    images, _ = next(iter(evalset.loader(6)))
    assert images.shape == (6, 3, 8, 8)


def test_folder_without_split_dir_and_overrides(tmp_path):
    root = tmp_path / "flat"
    for name in ["n01", "n02"]:
        _image(root / name / "x.JPEG", fmt="JPEG")
        _image(root / name / "y.jpg", fmt="JPEG")
    (root / "n02" / "notes.txt").write_text("not an image")
    (root / "classnames.txt").write_text("goldfish\nshark\n")
    (root / "zeroshot_classification_templates.txt").write_text("itap of a {c}.\n\n")
    evalset = zeroshot.load(root)
    assert evalset.classnames == ["goldfish", "shark"]
    assert evalset.templates == ["itap of a {c}."]
    assert _labels(evalset) == [0, 0, 1, 1]


def test_folder_max_samples_spreads_over_classes(tmp_path):
    evalset = zeroshot.load(_folder_set(tmp_path / "imgs", per_class=4), max_samples=3)
    assert _labels(evalset) == [0, 1, 2]


def _class_by_class(root: Path, sizes: list[int], shards: int = 2) -> Path:
    """A clip_benchmark webdataset set written class by class (as ImageNet's val in folder
    order), ``sizes[c]`` samples of class c, over ``shards`` shards."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("".join(f"class {c}\n" for c in range(len(sizes))))
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\n")
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    per_shard = -(-len(labels) // shards)
    for k in range(shards):
        with wds.TarWriter(str(root / "test" / f"{k}.tar"), encoder=False) as sink:
            for i in range(k * per_shard, min(len(labels), (k + 1) * per_shard)):
                sample = {"png": _png((labels[i] * 40, i % 256, 9)), "cls": str(labels[i]).encode()}
                sink.write({"__key__": f"s{i:07d}", **sample})
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return root


def _per_class(labels: list[int]) -> list[int]:
    return [labels.count(c) for c in range(max(labels) + 1)]


@pytest.mark.parametrize(
    "sizes, cap, expected",
    [
        ([6, 6, 6, 6, 6], 10, [2, 2, 2, 2, 2]),
        ([6, 6, 6, 6, 6], 12, [3, 3, 2, 2, 2]),
        ([1, 6, 6, 6, 6], 9, [1, 2, 2, 2, 2]),
        ([1, 6, 2, 6, 6], 17, [1, 5, 2, 5, 4]),
    ],
)
def test_a_capped_wds_set_holds_every_class_evenly(tmp_path, sizes, cap, expected):
    """The first ``cap`` samples of a set written class by class would hold two or three
    classes; the cap takes ``cap // C`` of each (one more for the lowest ids), all of a
    class that has fewer, in the set's order."""
    root = _class_by_class(tmp_path / "wds", sizes)
    evalset = zeroshot.load(root, max_samples=cap)
    labels = _labels(evalset)
    assert len(labels) == cap and labels == sorted(labels)
    assert _per_class(labels) == expected
    whole = _samples(evalset)
    for world in (2, 3):
        parts = [
            _samples(zeroshot.load(root, max_samples=cap, part=(r, world))) for r in range(world)
        ]
        for i, (label, image) in enumerate(whole):
            got_label, got_image = parts[i % world][i // world]
            assert got_label == label and torch.equal(got_image, image), (world, i)


def test_a_capped_wds_set_keeps_samples_evenly_spaced_within_a_class(tmp_path):
    root = _class_by_class(tmp_path / "wds", [8, 8], shards=1)
    evalset = zeroshot.load(root, max_samples=4)
    kept = [evalset.keep[i] for i in range(4)]
    assert kept == [0, 4, 8, 12]  # samples 0-7 are class 0, 8-15 class 1


def test_a_capped_folder_set_holds_every_class_evenly(tmp_path):
    root = _folder_set(tmp_path / "imgs", classes=("a", "b", "c"), per_class=6)
    for j in range(1, 6):  # a keeps one image, c two: evenly spaced files would be [1, 4, 1]
        (root / "test" / "a" / f"{j}.png").unlink()
        if j > 1:
            (root / "test" / "c" / f"{j}.png").unlink()
    assert _per_class(_labels(zeroshot.load(root, max_samples=6))) == [1, 3, 2]


def test_a_cap_under_the_number_of_classes_says_so(tmp_path, caplog):
    root = _class_by_class(tmp_path / "wds", [2, 2, 2, 2])
    with caplog.at_level(logging.WARNING):
        assert _labels(zeroshot.load(root, max_samples=3)) == [0, 1, 2]
    assert "eval.max_samples keeps 3 samples of 3 classes (1 classes have none)" in caplog.text


def test_a_capped_wds_set_with_an_unreadable_shard_is_a_user_error(tmp_path):
    root = _class_by_class(tmp_path / "wds", [2, 2])
    (root / "test" / "1.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(UserError, match=r"1\.tar: data.zeroshot: cannot read its tar headers"):
        zeroshot.load(root, max_samples=2)


def _samples(evalset) -> list[tuple[int, torch.Tensor]]:
    return [(int(y), x) for xs, ys in evalset.loader(4) for x, y in zip(xs, ys, strict=True)]


@pytest.mark.parametrize("layout", ["wds", "folder"])
def test_the_ranks_parts_are_the_whole_set_each_sample_once(synth_eval, tmp_path, layout):
    """Part r of W holds sample i (of the capped set's order) iff i % W == r: interleaved
    back, the parts are the whole set; each part reads only its own images."""
    root = synth_eval if layout == "wds" else _folder_set(tmp_path / "imgs", per_class=5)
    cap = 10 if layout == "wds" else 13  # 96 and 15 samples before the cap
    whole = _samples(zeroshot.load(root, max_samples=cap))
    assert len(whole) == cap
    for world in (2, 3):
        parts = [
            _samples(zeroshot.load(root, max_samples=cap, part=(r, world))) for r in range(world)
        ]
        assert [len(p) for p in parts] == [len(range(r, cap, world)) for r in range(world)]
        for i, (label, image) in enumerate(whole):
            got_label, got_image = parts[i % world][i // world]
            assert got_label == label and torch.equal(got_image, image), (world, i)


def test_folder_with_1000_classes_uses_imagenet_names(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    root = tmp_path / "in1k"
    for i in range(1000):
        (root / "val" / f"n{i:08d}").mkdir(parents=True)
    _image(root / "val" / "n00000999" / "a.png")
    evalset = zeroshot.load(root, split="val")
    assert evalset.classnames == list(IMAGENET_CLASSNAMES)
    assert len(evalset.templates) == 80
    assert _labels(evalset) == [999]


def test_folder_corrupt_image_is_skipped(tmp_path):
    root = _folder_set(tmp_path / "imgs")
    (root / "test" / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")
    evalset = zeroshot.load(root)
    assert _labels(evalset, 3) == [0, 0, 1, 1, 2, 2]
    assert evalset.skipped == 1


@pytest.mark.parametrize(
    "remove, message",
    [
        ("classnames.txt", "classnames.txt: data.zeroshot: file not found"),
        ("zeroshot_classification_templates.txt", "templates.txt: data.zeroshot: file not found"),
        ("test/nshards.txt", "nshards.txt: data.zeroshot: file not found"),
    ],
)
def test_missing_wds_files_are_user_errors(tmp_path, remove, message):
    root = _wds_set(tmp_path / "wds", [{"png": _png(), "cls": b"0"}])
    (root / remove).unlink()
    with pytest.raises(UserError, match=message) as err:
        zeroshot.load(root)
    assert str(root / remove) in str(err.value)
    assert "fix:" in str(err.value) and "\n" not in str(err.value)


def test_other_user_errors(tmp_path):
    root = _wds_set(tmp_path / "wds", [{"png": _png(), "cls": b"0"}])
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {}.\n")
    with pytest.raises(UserError, match="only {c}"):
        zeroshot.load(root)
    (root / "test" / "nshards.txt").write_text("2")
    with pytest.raises(UserError, match="1.tar: data.zeroshot: shard missing"):
        zeroshot.load(root)
    with pytest.raises(UserError, match="directory not found"):
        zeroshot.load(tmp_path / "nowhere")
    with pytest.raises(UserError, match="only local directories"):
        zeroshot.load("s3://bucket/eval")
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="hold no .jpg"):
        zeroshot.load(tmp_path / "empty")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="neither nshards.txt nor class folders"):
        zeroshot.load(tmp_path / "nothing")
    root = _folder_set(tmp_path / "imgs")
    (root / "classnames.txt").write_text("one\ntwo\n")
    with pytest.raises(UserError, match="names 2 classes but .* has 3 class folders"):
        zeroshot.load(root)
