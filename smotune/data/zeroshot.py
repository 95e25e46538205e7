"""Zero-shot eval sets: clip_benchmark's webdataset layout and ImageNet-style folders.

clip_benchmark layout (``kind == "wds"``)::

    root/classnames.txt                            line i = class i
    root/zeroshot_classification_templates.txt     one template per line, with {c}
    root/<split>/nshards.txt                       n
    root/<split>/0.tar ... <n-1>.tar               key s0000000: webp/png/jpg/jpeg + cls

Folders (``kind == "folder"``): ``root/<split>/<class_dir>/*.jpg|jpeg|png`` (or
``root/<class_dir>/...`` when ``root/<split>`` does not exist), classes in
sorted directory order. With exactly 1000 class dirs (ImageNet wnids) the class
names are open_clip's ``IMAGENET_CLASSNAMES``; otherwise the directory names with
``_`` read as spaces. ``root/classnames.txt`` overrides either. Templates come
from ``root/zeroshot_classification_templates.txt`` if present, else OpenAI's 80
ImageNet templates.

Only local roots are supported. Unreadable images are skipped and counted in
:attr:`EvalSet.skipped`. With ``cache_bytes`` an eval set keeps the batches of
its first whole pass in memory when they fit, and later passes (the next
epochs' evals) read them instead of decoding every image again; the eval
transform is deterministic, so the batches are the same.

An eval set can be read in parts (``part=(rank, world)``): part ``r`` of ``W``
holds the samples whose index in the whole set's order (after the
``max_samples`` cap) is ``r`` modulo ``W``, so the parts of all ranks are the
whole set, each sample once, and each rank decodes only its own.

The ``max_samples`` cap (``eval.max_samples``) is spread evenly over the classes,
in either layout: every class keeps ``max_samples // C`` samples or one more (a
class with fewer keeps all it has and the others share the rest), evenly spaced
within the class, and the kept samples are read in the set's order. Sets are often
written class by class (ImageNet's val in folder order), where the first
``max_samples`` samples would hold only the first classes. For a webdataset set
the labels are read first: every shard's tar headers and its ``.cls`` members,
seeking past the images. Samples without a readable ``cls`` are left out of a
capped set; with fewer samples than classes, only the first classes keep one.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from smotune.config import is_remote
from smotune.data import evalcap
from smotune.errors import UserError

FIELD = "data.zeroshot"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
_LAYOUT_FIX = (
    "point data.zeroshot at a clip_benchmark webdataset dir (<root>/<split>/nshards.txt) "
    "or an ImageNet-style folder (<root>/<split>/<class>/*.jpg)"
)
_NAMES_FIX = "write one class name per line (line i = class i)"
_TEMPLATES_FIX = "write one template per line, e.g. a photo of a {c}."
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

Batch = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger(__name__)


def _error(where: Path | str, problem: str, fix: str) -> UserError:
    return UserError(str(where), FIELD, problem, fix)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()]


def _read_classnames(path: Path) -> list[str]:
    names = _lines(path)
    while names and not names[-1]:
        names.pop()
    if not names:
        raise _error(path, "holds no class names", "write one class name per line")
    if "" in names:
        line = names.index("") + 1
        raise _error(path, f"line {line} is empty", _NAMES_FIX)
    return names


def _read_templates(path: Path) -> list[str]:
    templates = [t for t in _lines(path) if t]
    if not templates:
        raise _error(path, "holds no templates", _TEMPLATES_FIX)
    for template in templates:
        _check_template(path, template)
    return templates


def _check_template(where: Path, template: str) -> None:
    try:
        ok = "{c}" in template and bool(template.format(c="x"))
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise _error(
            where,
            f"template {template!r} is not a format string with only {{c}}",
            "write templates like: a photo of a {c}.",
        )


def _openai_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]


def _rgb(data: bytes | Path) -> Image.Image:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        return img.convert("RGB")


def _collate(batch: list[tuple[torch.Tensor | None, int]]):
    """Stack the readable samples; the third item counts the unreadable ones."""
    good = [(img, label) for img, label in batch if img is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images = torch.stack([img for img, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return images, labels, skipped


class _Decode:
    """PIL RGB image -> ``transform(image)``; None when the image cannot be read."""

    def __init__(self, transform: Callable | None):
        if transform is None:
            from torchvision.transforms.functional import to_tensor

            transform = to_tensor
        self.transform = transform

    def __call__(self, data: bytes | Path | None) -> torch.Tensor | None:
        if data is None:
            return None
        try:
            return self.transform(_rgb(data))
        except _READ_ERRORS:
            return None


class _Files(Dataset):
    def __init__(self, items: list[tuple[Path, int]], decode: _Decode):
        self.items = items
        self.decode = decode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        path, label = self.items[index]
        return self.decode(path), label


def _no_split(src):
    return src


class _Part:
    """A webdataset stage keeping the raw samples ``keep`` names (all when None), and of
    those the ones at positions ``rank`` mod ``world``."""

    def __init__(self, rank: int, world: int, keep: list[int] | None):
        self.rank, self.world = rank, world
        self.keep = None if keep is None else set(keep)
        self.last = None if keep is None else max(keep, default=-1)

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        position = 0
        for i, sample in enumerate(samples):
            if self.keep is not None:
                if i > self.last:
                    return
                if i not in self.keep:
                    continue
            if position % self.world == self.rank:
                yield sample
            position += 1


class _WdsSample:
    """A raw webdataset sample -> (decoded image or None, label or -1)."""

    def __init__(self, decode: _Decode):
        self.decode = decode

    def __call__(self, sample: dict) -> tuple[torch.Tensor | None, int]:
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        try:
            label = int(sample["cls"])
        except (KeyError, ValueError):
            return None, -1
        return self.decode(data), label


@dataclass
class EvalSet:
    """A zero-shot eval set: class names, templates and a deterministic loader."""

    root: Path
    kind: str
    classnames: list[str]
    templates: list[str]
    transform: Callable | None = None
    max_samples: int | None = None
    shards: list[Path] = field(default_factory=list)
    files: list[tuple[Path, int]] = field(default_factory=list)
    cache_bytes: int = 0  # keep a whole pass's batches in memory when they fit (0: never)
    part: tuple[int, int] = (0, 1)  # (rank, world): this rank's share of the samples
    keep: list[int] | None = None  # wds: the raw sample indices max_samples keeps (None: all)
    skipped: int = field(default=0, init=False)
    _warned: bool = field(default=False, init=False, repr=False)
    _cache: tuple[int, list[Batch], int] | None = field(default=None, init=False, repr=False)

    def _dataset(self):
        decode = _Decode(self.transform)
        rank, world = self.part
        if self.kind == "folder":  # already capped (evenly spread) by load()
            return _Files(self.files[rank::world], decode)
        import webdataset as wds

        return (
            wds.WebDataset(
                [str(p) for p in self.shards],
                shardshuffle=False,
                nodesplitter=_no_split,
                empty_check=False,
            )
            .compose(_Part(rank, world, self.keep))
            .map(_WdsSample(decode))
        )

    def loader(self, batch_size: int, num_workers: int = 0) -> Iterator[Batch]:
        """Batches ``(images [B,3,H,W], labels [B])`` in a fixed order; counts skipped images."""
        if self._cache is not None and self._cache[0] == batch_size:
            _, batches, self.skipped = self._cache
            return iter(batches)
        data = DataLoader(
            self._dataset(),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate,
        )
        if self.cache_bytes > 0:
            return self._kept(self._batches(data), batch_size)
        return self._batches(data)

    def _kept(self, batches: Iterator[Batch], batch_size: int) -> Iterator[Batch]:
        """``batches`` as they come, kept as the cache once the pass ends within ``cache_bytes``."""
        kept: list[Batch] | None = []
        size = 0
        for images, labels in batches:
            if kept is not None:
                size += images.nbytes + labels.nbytes
                if size <= self.cache_bytes:
                    kept.append((images, labels))
                else:
                    kept = None
            yield images, labels
        if kept is not None:
            self._cache = (batch_size, kept, self.skipped)

    def _batches(self, data: DataLoader) -> Iterator[Batch]:
        self.skipped = 0
        for images, labels, skipped in data:
            self.skipped += skipped
            if images is None:
                continue
            bad = (labels < 0) | (labels >= len(self.classnames))
            if bad.any():
                raise _error(
                    self.root,
                    f"label {int(labels[bad][0])} is outside the {len(self.classnames)} classes",
                    f"make {CLASSNAMES_FILE} match the labels of the images",
                )
            yield images, labels
        if self.skipped and not self._warned:
            self._warned = True
            log.warning("%s: skipped %d unreadable images", self.root, self.skipped)


def _load_wds(root: Path, split_dir: Path) -> tuple[list[str], list[str], list[Path]]:
    nshards_file = split_dir / "nshards.txt"
    if not nshards_file.is_file():
        raise _error(nshards_file, "file not found", "write the number of shards into it")
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError:
        raise _error(nshards_file, "is not an integer", "write the number of shards") from None
    if nshards < 1:
        raise _error(nshards_file, f"says {nshards} shards", "write the number of shards (>= 1)")
    shards = [split_dir / f"{i}.tar" for i in range(nshards)]
    missing = [p for p in shards if not p.is_file()]
    if missing:
        raise _error(
            missing[0],
            f"shard missing ({len(missing)} of {nshards} named by nshards.txt)",
            "copy the shards or correct nshards.txt",
        )
    names_file, templates_file = root / CLASSNAMES_FILE, root / TEMPLATES_FILE
    if not names_file.is_file():
        raise _error(names_file, "file not found", _NAMES_FIX)
    if not templates_file.is_file():
        raise _error(templates_file, "file not found", _TEMPLATES_FIX)
    return _read_classnames(names_file), _read_templates(templates_file), shards


def _load_folder(root: Path, folder: Path) -> tuple[list[str], list[str], list[tuple[Path, int]]]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise _error(folder, "holds neither nshards.txt nor class folders", _LAYOUT_FIX)
    names_file, templates_file = root / CLASSNAMES_FILE, root / TEMPLATES_FILE
    if names_file.is_file():
        classnames = _read_classnames(names_file)
        if len(classnames) != len(dirs):
            raise _error(
                names_file,
                f"names {len(classnames)} classes but {folder} has {len(dirs)} class folders",
                "write one name per class folder, in sorted folder order",
            )
    elif len(dirs) == 1000:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        classnames = list(IMAGENET_CLASSNAMES)
    else:
        classnames = [d.name.replace("_", " ") for d in dirs]
    templates = _read_templates(templates_file) if templates_file.is_file() else _openai_templates()
    files = [
        (path, label)
        for label, d in enumerate(dirs)
        for path in sorted(d.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not files:
        raise _error(folder, "class folders hold no .jpg/.jpeg/.png/.webp images", _LAYOUT_FIX)
    return classnames, templates, files


def load(
    root: str | Path,
    split: str = "test",
    transform: Callable | None = None,
    max_samples: int | None = None,
    cache_bytes: int = 0,
    part: tuple[int, int] = (0, 1),
) -> EvalSet:
    """Open the eval set at ``root`` (either layout); ``max_samples`` caps one pass, and a
    pass of at most ``cache_bytes`` is kept in memory for the next ones; ``part`` is the
    ``(rank, world)`` share this process reads (the whole set by default).

    The cap is spread evenly over the classes (:func:`evalcap.even_over_classes`); for a
    webdataset set that reads every shard's tar headers and labels once, here.
    """
    if is_remote(str(root)):
        raise _error(
            root,
            "only local directories are supported for the zero-shot eval set",
            "copy the eval set to a local directory (on every node) and point data.zeroshot at it",
        )
    root = Path(root)
    if not root.is_dir():
        raise _error(root, "directory not found", _LAYOUT_FIX)
    split_dir = root / split
    if (split_dir / "nshards.txt").is_file() or any(split_dir.glob("*.tar")):
        classnames, templates, shards = _load_wds(root, split_dir)
        keep = None
        if max_samples is not None:
            labels = evalcap.wds_labels(shards)
            keep = evalcap.even_over_classes(labels, max_samples)
            evalcap.warn_if_classes_left_out(root, len(classnames), [labels[i] for i in keep])
        return EvalSet(
            root,
            "wds",
            classnames,
            templates,
            transform,
            max_samples,
            shards,
            [],
            cache_bytes,
            part,
            keep,
        )
    folder = split_dir if split_dir.is_dir() else root
    classnames, templates, files = _load_folder(root, folder)
    if max_samples is not None:
        kept = evalcap.even_over_classes([label for _, label in files], max_samples)
        files = [files[i] for i in kept]
        evalcap.warn_if_classes_left_out(root, len(classnames), [label for _, label in files])
    return EvalSet(
        root, "folder", classnames, templates, transform, max_samples, [], files, cache_bytes, part
    )
