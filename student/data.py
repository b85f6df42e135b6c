"""The student's side of the pairs dataset: the held-out split in use, and the training stream.

The format and its reader are :mod:`pairs.shards` (manifest checks, the held-out rule
:func:`pairs.shards.is_held_out`, the sample reader :func:`pairs.shards.read_samples`); this
module opens a finished dataset for training (:func:`open_pairs`), reads one split of it in key
order (:func:`split_pairs`) and streams training batches with augmentation parameters
(:class:`PairStream`, :func:`train_loader`). Training never reads a held-out pair; evaluation
reads only held-out pairs. The default 5% holds out about one pair in twenty.

**Training stream** (:class:`PairStream`): an endless, deterministic stream per *reader slot*
(one per data-loader worker per process; ``slot = rank * workers + worker``). Epoch e visits the
shards in the order ``default_rng([seed, e]).permutation(num_shards)``; with at least as many
shards as slots, slot s reads every ``num_slots``-th shard of that order starting at s;
with fewer, every slot reads all shards and keeps every ``num_slots``-th sample. Held-out pairs
are dropped, a shuffle buffer of ``shuffle_buffer`` samples (``random.Random`` seeded by
``(seed, slot)``) mixes neighbours, and sample i of the slot's stream gets the augmentation
parameters drawn from ``default_rng([seed, slot, i])``. Batch j of the run comes from reader
slot ``j % workers`` of its process (a resumed loader rotates its workers' roles to keep
this), so after ``step`` batches each slot's position is known exactly:
resuming skips that many samples (reading tar bytes, decoding nothing) and continues with the
same batches an uninterrupted run would have seen. Use a shard count that is a multiple of
processes x workers for even coverage.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import file_sha256
from pairs.shards import (
    MANIFEST_NAME,
    PairsError,
    ShardEntry,
    complete_shards,
    decode_pair,
    is_held_out,
    pair_key,
    read_manifest,
    read_samples,
)
from student.ops import draw_augment_params


@dataclass(frozen=True)
class PairsInfo:
    """A finished pairs dataset opened for training: its folder, manifest, the manifest file's
    sha256 (the student file records it as its source) and the checked shards."""

    root: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    resolution: int
    count: int
    shards: tuple[ShardEntry, ...]

    @property
    def teachers(self) -> dict[str, Any]:
        """The manifest's ``teachers`` entry (files and hashes of the teacher networks)."""
        return dict(self.manifest.get("teachers") or {})

    def shard_path(self, shard: ShardEntry) -> Path:
        """Where a shard's tar file is."""
        return self.root / shard.name


def open_pairs(path: str | os.PathLike, verify: bool = False) -> PairsInfo:
    """Open a finished pairs dataset (:func:`pairs.shards.read_manifest` and
    :func:`pairs.shards.complete_shards`); ``verify`` also checks every shard's sha256 (reads
    all the data). Raises :class:`pairs.shards.PairsError`."""
    root = Path(path)
    manifest = read_manifest(root)
    shards = complete_shards(root, manifest, verify=verify)
    return PairsInfo(
        root=root,
        manifest=manifest,
        manifest_sha256=file_sha256(root / MANIFEST_NAME),
        resolution=int(manifest["resolution"]),
        count=int(manifest["count"]),
        shards=shards,
    )


def split_counts(info: PairsInfo, holdout_percent: float) -> dict[str, int]:
    """How many pairs fall in each split: ``{"train": ..., "heldout": ...}``."""
    held = sum(is_held_out(pair_key(k), holdout_percent) for k in range(info.count))
    return {"train": info.count - held, "heldout": held}


def _chw_pair(sample: Mapping[str, Any], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` of a sample as uint8 CHW arrays (the layout the networks take)."""
    src, dst = decode_pair(sample, resolution)
    return src.transpose(2, 0, 1).copy(), dst.transpose(2, 0, 1).copy()


def split_pairs(
    info: PairsInfo,
    split: str = "heldout",
    holdout_percent: float = 5.0,
    limit: int | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(key, src, dst)`` (uint8 CHW) of the ``heldout``, ``train`` or ``all`` split in key
    order, at most ``limit``; members of other pairs are skipped without reading their bytes."""
    if split not in ("heldout", "train", "all"):
        raise ValueError(f"split must be heldout, train or all, got {split!r}")

    def wanted(key: str) -> bool:
        if split == "all":
            return True
        return is_held_out(key, holdout_percent) == (split == "heldout")

    paths = (info.shard_path(s) for s in info.shards)
    for sample in itertools.islice(read_samples(paths, wanted), limit):
        src, dst = _chw_pair(sample, info.resolution)
        yield sample["__key__"], src, dst


# ---------------------------------------------------------------------------------------------
# Training stream


def worker_skip(start_batches: int, worker: int, workers: int) -> int:
    """How many of the first ``start_batches`` batches came from ``worker`` (round robin)."""
    return len(range(worker, start_batches, workers))


class PairStream(torch.utils.data.IterableDataset):
    """The endless training stream of one process (see the module docstring).

    Yields dicts ``{"key": str, "src": uint8 [3, R, R], "dst": uint8 [3, R, R],
    "aug": float32 [len(AUG_FIELDS)]}``; a ``DataLoader`` with ``batch_size=local_batch`` and
    ``num_workers=workers`` batches them.

    Args:
        info: the dataset.
        cfg: a :class:`student.config.StudentConfig` (seed, holdout_percent, shuffle_buffer and
            the augmentation fields).
        rank, world: this process and the process count.
        local_batch: batch size of this process.
        start_batches: batches this process already consumed (resume position).
    """

    def __init__(
        self,
        info: PairsInfo,
        cfg: Any,
        rank: int = 0,
        world: int = 1,
        local_batch: int = 1,
        start_batches: int = 0,
    ) -> None:
        super().__init__()
        self.info = info
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.local_batch = local_batch
        self.start_batches = start_batches

    def _shard_paths(self, slot: int, num_slots: int, seen: list[int]) -> Iterator[Path]:
        """The slot's shards, epoch after epoch (endless)."""
        n = len(self.info.shards)
        for epoch in itertools.count():
            before = seen[0]
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            mine = order[slot::num_slots] if n >= num_slots else order
            for i in mine:
                yield self.info.shard_path(self.info.shards[int(i)])
            if seen[0] == before:
                raise PairsError(
                    f"{self.info.root}: reader slot {slot} of {num_slots} found no training "
                    "pairs (too few pairs or shards for this many processes and workers, or "
                    "everything is held out)"
                )

    def raw_stream(self, slot: int, num_slots: int) -> Iterator[dict[str, Any]]:
        """The slot's shuffled training samples, undecoded (``__key__``, ``src.png``, ...)."""
        import webdataset as wds

        seen = [0]
        samples = read_samples(self._shard_paths(slot, num_slots, seen))
        if len(self.info.shards) < num_slots:
            samples = (s for j, s in enumerate(samples) if j % num_slots == slot)
        pct = self.cfg.holdout_percent

        def train_only(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for s in src:
                if not is_held_out(s["__key__"], pct):
                    seen[0] += 1
                    yield s

        buf = max(int(self.cfg.shuffle_buffer), 1)
        rng = random.Random(f"{self.cfg.seed}-{slot}")
        return wds.shuffle(bufsize=buf, initial=buf, rng=rng)(train_only(samples))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        winfo = torch.utils.data.get_worker_info()
        worker, workers = (winfo.id, winfo.num_workers) if winfo is not None else (0, 1)
        # The loader's batch i comes from its worker i % workers; a loader started at batch
        # start_batches must hand batch start_batches + i to the worker that produced it in an
        # uninterrupted run, so loader worker w plays the role of (w + start_batches) % workers.
        worker = (worker + self.start_batches) % workers
        slot = self.rank * workers + worker
        num_slots = self.world * workers
        skip = worker_skip(self.start_batches, worker, workers) * self.local_batch
        stream = itertools.islice(self.raw_stream(slot, num_slots), skip, None)
        for i, sample in enumerate(stream, start=skip):
            src, dst = _chw_pair(sample, self.info.resolution)
            aug = draw_augment_params(np.random.default_rng([self.cfg.seed, slot, i]), self.cfg)
            yield {
                "key": sample["__key__"],
                "src": torch.from_numpy(src),
                "dst": torch.from_numpy(dst),
                "aug": torch.from_numpy(aug),
            }


def train_loader(
    info: PairsInfo,
    cfg: Any,
    rank: int,
    world: int,
    local_batch: int,
    start_batches: int,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over :class:`PairStream` (``cfg.workers`` worker processes)."""
    stream = PairStream(info, cfg, rank, world, local_batch, start_batches)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=local_batch,
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


__all__ = [
    "PairStream",
    "PairsInfo",
    "open_pairs",
    "split_counts",
    "split_pairs",
    "train_loader",
    "worker_skip",
]
