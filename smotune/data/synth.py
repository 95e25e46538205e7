"""The procedural captioned-shapes data set that the demo and the tests train on.

Every image is one coloured shape (8 shapes x 6 colours = 48 classes) drawn at
64x64 px on a noisy background of varying tone, with varying size, position and,
where the shape allows it, rotation. Training shards follow img2dataset's layout
(``%09d`` keys, ``.jpg``, ``.txt`` caption, ``.json`` with LaCLIP-style
``rewrites`` and the ``class``); captions use canonical class words most of the
time and synonyms, size, position and distractor words otherwise. The held-out
zero-shot set is written in clip_benchmark's webdataset layout under
``zeroshot/``. Output is a pure function of the arguments: every shard has its
own RNG stream, so the bytes do not depend on how many processes wrote them.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from smotune.errors import UserError

SIZE = 64
_SUPER = 2  # shapes are drawn at 2x and reduced, for anti-aliased edges
EVAL_SHARD_SIZE = 500
_TRAIN_STREAM, _EVAL_STREAM = 0, 1
_PARALLEL_MIN_SAMPLES = 2000  # below this, a process pool costs more than it saves

# name -> (RGB, synonyms)
_COLOURS: dict[str, tuple[tuple[int, int, int], list[str]]] = {
    "red": ((215, 30, 35), ["crimson", "scarlet", "cherry-red"]),
    "orange": ((250, 135, 15), ["tangerine", "amber", "bright orange"]),
    "yellow": ((245, 225, 30), ["golden", "lemon", "lemon-yellow"]),
    "green": ((35, 165, 55), ["emerald", "grass-green", "leafy green"]),
    "blue": ((30, 75, 225), ["cobalt", "sapphire", "royal blue"]),
    "purple": ((140, 45, 185), ["violet", "plum", "lilac"]),
}
# name -> synonyms
_SHAPES: dict[str, list[str]] = {
    "circle": ["disc", "round dot", "filled circle"],
    "square": ["box", "square tile", "block"],
    "triangle": ["three-sided shape", "wedge", "triangular shape"],
    "star": ["five-pointed star", "starburst", "star shape"],
    "cross": ["plus sign", "plus", "plus shape"],
    "hexagon": ["six-sided shape", "hex", "hexagonal tile"],
    "diamond": ["rhombus", "lozenge", "diamond shape"],
    "ring": ["hoop", "donut", "hollow circle"],
}
CLASSES: list[str] = [f"{c} {s}" for s in _SHAPES for c in _COLOURS]
_CLASS_PARTS = [(c, s) for s in _SHAPES for c in _COLOURS]

TEMPLATES: list[str] = [
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "a {c}.",
    "a picture of the {c}.",
    "a small {c}.",
    "a large {c}.",
]

_CANONICAL_P = 0.6
_SIZE_WORDS = {
    "small": ["small", "tiny", "little"],
    "medium": ["medium", "medium-sized", "mid-size"],
    "large": ["large", "big", "huge"],
}
_POSITIONS = [
    ["top left", "top", "top right"],
    ["left", "centre", "right"],
    ["bottom left", "bottom", "bottom right"],
]
_POSITION_SYNONYMS = {"top": "upper", "bottom": "lower", "left": "left", "right": "right"}
_CENTRE_PHRASES = ["in the centre", "in the middle", "at the center", "right in the middle"]
_CAPTIONS = [
    "{obj}",
    "{obj} on {bg}",
    "photo of {obj}",
    "a photo of {obj}.",
    "there is {obj} {where}",
    "{obj} {where} of the image",
    "{obj}, {where}, on {bg}",
    "an image showing {obj} {where}",
    "a drawing of {obj} on {bg}",
    "simple geometric picture: {obj}",
    "{bare} {where}",
    "you can see {obj} {where}",
    "{obj} against {bg}",
    "close-up of {obj}",
    "a picture with {obj} {where}",
]
_PREFIXES = ["stock image: ", "free clipart - ", "hd wallpaper ", "img 2041 ", "new! "]
_SUFFIXES = [" #shapes", " | free download", " (2019)", " - geometry worksheet", " art print"]


@dataclass
class Summary:
    """What :func:`generate` wrote."""

    out: Path
    train_shards: list[Path]
    train_samples: int
    eval_dir: Path
    eval_shards: int
    eval_samples: int
    classes: int
    seconds: float
    bytes_written: int

    def __str__(self) -> str:
        first, last = self.train_shards[0].name, self.train_shards[-1].name
        return "\n".join(
            [
                f"wrote {self.train_samples} training pairs in {len(self.train_shards)} shards: "
                f"{self.out}/{{{first} .. {last}}}",
                f"wrote {self.eval_samples} zero-shot eval images ({self.classes} classes) "
                f"in {self.eval_shards} shards: {self.eval_dir}",
                f"{self.bytes_written / 1e6:.1f} MB in {self.seconds:.1f} s",
            ]
        )


# ---------------------------------------------------------------- images


def _polygon(n: int, radius: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular n-gon (or an n-pointed star with ``inner`` radius ratio)."""
    if inner is None:
        t = angle + np.arange(n) * 2 * math.pi / n
        r = np.full(n, radius)
    else:
        t = angle + np.arange(2 * n) * math.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, radius, radius * inner)
    return np.stack([r * np.sin(t), -r * np.cos(t)], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _outline(shape: str, r: float, rng: np.random.Generator) -> np.ndarray | None:
    """Polygon vertices around (0, 0) for ``shape``; None for the round shapes."""
    small_tilt = rng.uniform(-0.26, 0.26)  # +-15 degrees keeps squares, diamonds, crosses upright
    free = rng.uniform(0, 2 * math.pi)
    if shape == "square":
        return _polygon(4, r, math.pi / 4 + small_tilt)
    if shape == "diamond":
        pts = np.array([[0, -r], [0.62 * r, 0], [0, r], [-0.62 * r, 0]])
        return _rotate(pts, small_tilt)
    if shape == "triangle":
        return _polygon(3, 1.1 * r, free)
    if shape == "star":
        return _polygon(5, 1.1 * r, free, inner=0.45)
    if shape == "hexagon":
        return _polygon(6, r, free)
    if shape == "cross":
        a, b = r, 0.36 * r
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b)]
        pts += [(b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        return _rotate(np.array(pts), small_tilt)
    return None


def _mask(shape: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape, (SIZE, SIZE)."""
    k = _SUPER
    img = Image.new("L", (SIZE * k, SIZE * k), 0)
    draw = ImageDraw.Draw(img)
    box = [k * (cx - r), k * (cy - r), k * (cx + r), k * (cy + r)]
    outline = _outline(shape, r, rng)
    if outline is None:
        draw.ellipse(box, fill=255)
        if shape == "ring":
            h = 0.55 * r
            draw.ellipse([k * (cx - h), k * (cy - h), k * (cx + h), k * (cy + h)], fill=0)
    else:
        draw.polygon([(k * (cx + x), k * (cy + y)) for x, y in outline], fill=255)
    return np.asarray(img.reduce(k), dtype=np.float32) / 255.0


@dataclass
class _Scene:
    cls: int
    radius: float
    row: int
    col: int
    tone: float
    noise: float


def _render(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, _Scene]:
    """One (SIZE, SIZE, 3) uint8 image of class ``cls`` and what it shows."""
    colour, shape = _CLASS_PARTS[cls]
    r = rng.uniform(12.0, 26.0)
    cx, cy = rng.uniform(r + 1, SIZE - 1 - r, size=2)
    tone = rng.uniform(30, 220)
    noise = rng.uniform(3, 22)
    bg = tone + rng.uniform(-18, 18, size=3) + rng.normal(0, noise, size=(SIZE, SIZE, 3))
    fg = np.array(_COLOURS[colour][0], dtype=np.float32) + rng.uniform(-18, 18, size=3)
    alpha = _mask(shape, cx, cy, r, rng)[..., None]
    img = bg * (1 - alpha) + fg * alpha + rng.normal(0, 3, size=(SIZE, SIZE, 3))
    scene = _Scene(cls, r, int(cy * 3 // SIZE), int(cx * 3 // SIZE), tone, noise)
    return np.clip(img, 0, 255).astype(np.uint8), scene


# ---------------------------------------------------------------- captions


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _word(rng: np.random.Generator, canonical: str, synonyms: list[str]) -> str:
    return canonical if rng.random() < _CANONICAL_P else _pick(rng, synonyms)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_class(radius: float) -> str:
    return "small" if radius < 16.5 else "medium" if radius < 21.5 else "large"


def _where(scene: _Scene, rng: np.random.Generator) -> str:
    if (scene.row, scene.col) == (1, 1):
        return _pick(rng, _CENTRE_PHRASES)
    place = _POSITIONS[scene.row][scene.col]
    if rng.random() < 0.3:
        place = " ".join(_POSITION_SYNONYMS[w] for w in place.split())
    corner = scene.row != 1 and scene.col != 1
    phrases = ["near the {p}", "in the {p}", "towards the {p}"]
    if corner:
        phrases.append("in the {p} corner")
    return _pick(rng, phrases).format(p=place)


def _background(scene: _Scene, rng: np.random.Generator) -> str:
    tone = "dark" if scene.tone < 90 else "light" if scene.tone > 165 else "grey"
    words = [_pick(rng, {"dark": ["dark", "black"], "light": ["light", "pale"]}.get(tone, [tone]))]
    if scene.noise > 12 and rng.random() < 0.7:
        words.insert(0, _pick(rng, ["noisy", "grainy", "speckled"]))
    return _article(" ".join(words) + " " + _pick(rng, ["background", "backdrop"]))


def _caption(scene: _Scene, rng: np.random.Generator) -> str:
    colour, shape = _CLASS_PARTS[scene.cls]
    words = [_word(rng, colour, _COLOURS[colour][1]), _word(rng, shape, _SHAPES[shape])]
    if rng.random() < 0.5:
        words.insert(0, _pick(rng, _SIZE_WORDS[_size_class(scene.radius)]))
    bare = " ".join(words)
    text = _pick(rng, _CAPTIONS).format(
        obj=_article(bare), bare=bare, where=_where(scene, rng), bg=_background(scene, rng)
    )
    if rng.random() < 0.15:
        text = _pick(rng, _PREFIXES) + text
    if rng.random() < 0.15:
        text += _pick(rng, _SUFFIXES)
    return text


def _rewrites(scene: _Scene, caption: str, rng: np.random.Generator) -> list[str]:
    """2 or 3 paraphrases of the same scene, distinct from the caption and each other."""
    want = int(rng.integers(2, 4))
    seen, out = {caption}, []
    for _ in range(20 * want):
        text = _caption(scene, rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == want:
                break
    return out


# ---------------------------------------------------------------- shards


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
    else:
        Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _train_samples(seed: int, shard: int, start: int, stop: int) -> list[dict[str, bytes | str]]:
    rng = np.random.default_rng([seed, _TRAIN_STREAM, shard])
    samples = []
    for index in range(start, stop):
        img, scene = _render(int(rng.integers(len(CLASSES))), rng)
        caption = _caption(scene, rng)
        meta = {"rewrites": _rewrites(scene, caption, rng), "class": scene.cls}
        samples.append(
            {
                "__key__": f"{index:09d}",
                "jpg": _encode(img, "jpeg"),
                "txt": caption.encode(),
                "json": json.dumps(meta).encode(),
            }
        )
    return samples


def _eval_samples(seed: int, shard: int, start: int, stop: int) -> list[dict[str, bytes | str]]:
    """Held-out images; sample i shows class i % len(CLASSES), so any prefix covers all."""
    rng = np.random.default_rng([seed, _EVAL_STREAM, shard])
    samples = []
    for index in range(start, stop):
        cls = index % len(CLASSES)
        img, _ = _render(cls, rng)
        samples.append(
            {"__key__": f"s{index:07d}", "png": _encode(img, "png"), "cls": str(cls).encode()}
        )
    return samples


def _job(args: tuple[str, int, int, int, int]) -> list[dict[str, bytes | str]]:
    kind, seed, shard, start, stop = args
    make = _train_samples if kind == "train" else _eval_samples
    return make(seed, shard, start, stop)


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    return [(i * total // parts, (i + 1) * total // parts) for i in range(parts)]


def _processes(jobs: int, samples: int) -> int:
    if samples < _PARALLEL_MIN_SAMPLES:
        return 1
    return max(1, min(jobs, len(os.sched_getaffinity(0))))


def _write_tar(path: Path, samples: list[dict[str, bytes | str]]) -> None:
    import webdataset as wds

    tmp = path.with_name(path.name + ".tmp")
    with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:
        for sample in samples:
            sink.write(sample)
    tmp.replace(path)


def generate(
    out: str | Path,
    train_samples: int = 20000,
    shards: int = 8,
    eval_per_class: int = 20,
    seed: int = 0,
) -> Summary:
    """Write the training shards and the zero-shot eval set under ``out`` (always rewritten)."""
    started = time.perf_counter()
    where = "smotune data synth"
    if shards < 1:
        raise UserError(where, "--shards", f"must be at least 1, got {shards}", "pass --shards 1")
    if train_samples < shards:
        raise UserError(
            where,
            "--samples",
            f"{train_samples} training pairs cannot fill {shards} shards",
            "pass more samples or fewer shards",
        )
    if eval_per_class < 1:
        raise UserError(
            where, "--eval-per-class", f"must be at least 1, got {eval_per_class}", "pass 1 or more"
        )
    out = Path(out)
    eval_dir = out / "zeroshot"
    (eval_dir / "test").mkdir(parents=True, exist_ok=True)

    eval_total = eval_per_class * len(CLASSES)
    eval_shards = math.ceil(eval_total / EVAL_SHARD_SIZE)
    train_paths = [out / f"train-{i:04d}.tar" for i in range(shards)]
    eval_paths = [eval_dir / "test" / f"{i}.tar" for i in range(eval_shards)]
    jobs = [("train", seed, i, a, b) for i, (a, b) in enumerate(_split(train_samples, shards))]
    jobs += [("eval", seed, i, a, b) for i, (a, b) in enumerate(_split(eval_total, eval_shards))]
    paths = train_paths + eval_paths

    processes = _processes(len(jobs), train_samples + eval_total)
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for path, samples in zip(paths, pool.imap(_job, jobs), strict=True):
                _write_tar(path, samples)
    else:
        for path, job in zip(paths, jobs, strict=True):
            _write_tar(path, _job(job))

    # open_clip's sizes.json: what each shard holds, so damage to one is counted exactly
    spans = _split(train_samples, shards)
    sizes = {p.name: b - a for p, (a, b) in zip(train_paths, spans, strict=True)}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    (eval_dir / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (eval_dir / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (eval_dir / "test" / "nshards.txt").write_text(f"{eval_shards}\n")
    return Summary(
        out=out,
        train_shards=train_paths,
        train_samples=train_samples,
        eval_dir=eval_dir,
        eval_shards=eval_shards,
        eval_samples=eval_total,
        classes=len(CLASSES),
        seconds=time.perf_counter() - started,
        bytes_written=sum(p.stat().st_size for p in paths),
    )
