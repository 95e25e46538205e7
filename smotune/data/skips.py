"""Counting the bad data met while loading, exactly, across DataLoader worker processes, and
naming each damaged or unreadable shard in one line (what the console and MLflow show)."""

from __future__ import annotations

import logging
import multiprocessing

log = logging.getLogger(__name__)

WARN_FIRST = 5


class SkipCounter:
    """Bad data met while loading: ``count`` samples not trained on, ``bad_shards``, ``reasons``.

    Sample reasons count samples: a member that cannot be grouped, a sample
    without an image or caption or that fails to decode, and ``lost_in_damage``
    (samples ``sizes.json`` lists for a shard that its damage or unreadability
    hid). Shard reasons count shards: ``unreadable_shard`` (could not be opened
    or read) and ``damaged_shard`` (one per damaged span or truncation, see
    :mod:`smotune.data.tars`); without ``sizes.json`` how many samples such a
    shard lost is not known, and only the shard is counted.

    The counts live in shared memory (a ``multiprocessing.Array``) that the
    DataLoader hands to its worker processes when it starts them, so every
    worker adds to the same numbers and the sums are exact; they are complete
    once an epoch's iteration has ended (while it runs they may be a few
    prefetched batches ahead of the consumer). Create the counter in the
    process that iterates the loaders (it reaches loader workers only as they
    start, so it cannot be pickled to e.g. a Ray task) and reuse it across
    epochs for a running total. It also counts the shards read and the good
    samples decoded, for the end-of-epoch checks.

    Shard reasons and ``lost_in_damage`` name their shard (``shard=``): :attr:`damage`
    holds what each shard suffered, one text per distinct event, for :func:`damage_lines`.
    """

    SHARD_REASONS = ("unreadable_shard", "damaged_shard")
    SAMPLE_REASONS = (
        "bad_tar_member",
        "no_image",
        "bad_image",
        "no_caption",
        "bad_json",
        "lost_in_damage",
    )
    REASONS = SHARD_REASONS + SAMPLE_REASONS
    _SHARDS = len(REASONS)
    _SAMPLES = len(REASONS) + 1

    def __init__(self) -> None:
        self._counts = multiprocessing.Array("q", len(self.REASONS) + 2)
        self._first_error = multiprocessing.Array("c", 512)
        self._shard_details = multiprocessing.Array("c", 8192)  # distinct, one a line

    def add(self, reason: str, detail: str, n: int = 1, shard: str | None = None) -> None:
        """Count ``n`` skipped items; log the first ``WARN_FIRST`` (damage: every time).

        ``shard`` names the shard ``detail`` is about (shard reasons, ``lost_in_damage``).
        """
        index = self.REASONS.index(reason)
        noted = reason in self.SHARD_REASONS or reason == "lost_in_damage"
        with self._counts.get_lock():
            self._counts[index] += n
            total = sum(self._counts[: len(self.REASONS)])
            if reason == "unreadable_shard" and not self._first_error.value:
                named = f"{shard}: {detail}" if shard else detail
                self._first_error.value = named.encode("utf-8", "replace")[:511]
            if noted:
                flat = " ".join(detail.split())  # one line, no tab: the note's separators
                self._note(f"{shard or ''}\t{reason}\t{flat}")
        if noted:
            log.warning("skipped (%s) %s", reason, f"{shard}: {detail}" if shard else detail)
        elif total <= WARN_FIRST:
            more = "; further skips are summarised per epoch" if total == WARN_FIRST else ""
            log.warning("skipped (%s) %s%s", reason, detail, more)

    def _note(self, line: str) -> None:
        held = self._shard_details.value.decode("utf-8", "replace")
        if line not in held.split("\n"):
            new = (held + "\n" + line if held else line).encode("utf-8", "replace")
            if len(new) < len(self._shard_details):
                self._shard_details.value = new

    def _noted(self) -> list[tuple[str, str, str]]:
        held = self._shard_details.value.decode("utf-8", "replace")
        return [tuple(line.split("\t", 2)) for line in held.split("\n")] if held else []

    @property
    def shard_details(self) -> list[str]:
        """Each distinct damage or unreadable shard met and samples lost to it (up to 8 KiB),
        as ``reason: shard: detail``."""
        return [f"{r}: {s}: {d}" if s else f"{r}: {d}" for s, r, d in self._noted()]

    @property
    def damage(self) -> dict[str, list[str]]:
        """Shard -> what was met in it, in words (``unreadable: ...``, a tar reader's
        :class:`~smotune.data.tars.Damage`, ``N of the M samples sizes.json lists lost``)."""
        out: dict[str, list[str]] = {}
        for shard, reason, detail in self._noted():
            text = {"unreadable_shard": f"unreadable: {detail}"}.get(reason, detail)
            out.setdefault(shard, []).append(text)
        return out

    def shard_read(self) -> None:
        self._bump(self._SHARDS)

    def sample_read(self) -> None:
        self._bump(self._SAMPLES)

    def _bump(self, index: int) -> None:
        with self._counts.get_lock():
            self._counts[index] += 1

    def snapshot(self) -> list[int]:
        with self._counts.get_lock():
            return list(self._counts)

    @property
    def count(self) -> int:
        """Samples not trained on (the sample reasons)."""
        counts = self.snapshot()
        return sum(counts[self.REASONS.index(r)] for r in self.SAMPLE_REASONS)

    @property
    def bad_shards(self) -> int:
        """Unreadable shards and damaged spans met (the shard reasons)."""
        counts = self.snapshot()
        return sum(counts[self.REASONS.index(r)] for r in self.SHARD_REASONS)

    @property
    def reasons(self) -> dict[str, int]:
        counts = self.snapshot()
        return {r: counts[i] for i, r in enumerate(self.REASONS) if counts[i]}

    @property
    def shards_read(self) -> int:
        return self.snapshot()[self._SHARDS]

    @property
    def samples_read(self) -> int:
        return self.snapshot()[self._SAMPLES]

    @property
    def first_shard_error(self) -> str:
        return self._first_error.value.decode("utf-8", "replace")


def describe(exc: BaseException) -> str:
    """``Type: message``, without the stream repr webdataset appends after `` @ ``."""
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return f"{type(exc).__name__}: {message.split(' @ <')[0]}"


def damage_lines(damage: dict[str, list[str]]) -> list[str]:
    """One line a shard, sorted: ``<shard>: <what was met>; <what else>``."""
    return [f"{shard}: {'; '.join(texts)}" for shard, texts in sorted(damage.items())]


def merge_damage(*parts: dict[str, list[str]]) -> dict[str, list[str]]:
    """Shard -> distinct texts over several counters' :attr:`SkipCounter.damage` (e.g. ranks)."""
    out: dict[str, list[str]] = {}
    for part in parts:
        for shard, texts in part.items():
            held = out.setdefault(shard, [])
            held.extend(t for t in texts if t not in held)
    return out
