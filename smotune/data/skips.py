"""Counting the bad data met while loading, exactly, across DataLoader worker processes."""

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

    def add(self, reason: str, detail: str, n: int = 1) -> None:
        """Count ``n`` skipped items; log the first ``WARN_FIRST`` (damage: every time)."""
        index = self.REASONS.index(reason)
        with self._counts.get_lock():
            self._counts[index] += n
            total = sum(self._counts[: len(self.REASONS)])
            if reason == "unreadable_shard" and not self._first_error.value:
                self._first_error.value = detail.encode("utf-8", "replace")[:511]
            if reason in self.SHARD_REASONS or reason == "lost_in_damage":
                self._note(f"{reason}: {detail}")
        if reason in self.SHARD_REASONS or reason == "lost_in_damage":
            log.warning("skipped (%s) %s", reason, detail)
        elif total <= WARN_FIRST:
            more = "; further skips are summarised per epoch" if total == WARN_FIRST else ""
            log.warning("skipped (%s) %s%s", reason, detail, more)

    def _note(self, line: str) -> None:
        held = self._shard_details.value.decode("utf-8", "replace")
        if line not in held.split("\n"):
            new = (held + "\n" + line if held else line).encode("utf-8", "replace")
            if len(new) < len(self._shard_details):
                self._shard_details.value = new

    @property
    def shard_details(self) -> list[str]:
        """Each distinct damaged or unreadable shard met and samples lost to it (up to 8 KiB)."""
        held = self._shard_details.value.decode("utf-8", "replace")
        return held.split("\n") if held else []

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
