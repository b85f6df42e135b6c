"""Reading the pairs dataset: the manifest, the held-out split, and the shard streams.

Format (written by ``toon-pairs generate``; read here with ``webdataset``'s tar iterators, no
dependency on the writer): a folder with ``manifest.json`` and shards ``shard-{i:06d}.tar``.
Each sample has the key ``f"{k:09d}"`` (k = pair index) and the tar members ``{key}.src.png``
(input, RGB uint8 R x R), ``{key}.dst.png`` (the teacher's target) and ``{key}.json``. The
manifest: ``{"format": "toon-pairs", "format_version": 1, "resolution": R, "count": N,
"shard_size": S, "num_shards": n, "shards": [{"name", "first", "count", "sha256"}, ...],
"config": {...}, "teachers": {...}}``.

**Held-out split** (deterministic by key, independent of shards, processes and order): pair
``key`` is held out when ``int.from_bytes(sha256(key.encode("ascii")).digest()[:8], "big") %
10000 < round(100 * holdout_percent)``. Training never reads a held-out pair; evaluation reads
only held-out pairs. The default 5% holds out about one pair in twenty.

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

import hashlib
import io
import itertools
import json
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from student.ops import draw_augment_params

FORMAT = "toon-pairs"
FORMAT_VERSION = 1
HOLDOUT_BUCKETS = 10000


class PairsError(Exception):
    """The pairs dataset is missing, malformed or unreadable (one-line message)."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    name: str
    first: int
    count: int
    sha256: str


@dataclass(frozen=True)
class PairsInfo:
    """A checked pairs dataset: its folder, manifest and the manifest file's sha256."""

    root: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    resolution: int
    count: int
    shards: tuple[ShardInfo, ...]

    @property
    def teachers(self) -> dict[str, Any]:
        """The manifest's ``teachers`` entry (files and hashes of the teacher networks)."""
        return dict(self.manifest.get("teachers") or {})

    def shard_path(self, shard: ShardInfo) -> Path:
        """Where a shard's tar file is."""
        return self.root / shard.name


def pair_key(k: int) -> str:
    """The sample key of pair ``k``: nine zero-padded digits."""
    return f"{k:09d}"


def holdout_bucket(key: str) -> int:
    """A pair's bucket in [0, 10000): the first 8 bytes of ``sha256(key)``, big-endian, mod
    10000."""
    digest = hashlib.sha256(key.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % HOLDOUT_BUCKETS


def is_held_out(key: str, percent: float) -> bool:
    """Whether pair ``key`` belongs to the held-out split of ``percent`` percent."""
    return holdout_bucket(key) < round(percent * HOLDOUT_BUCKETS / 100)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_pairs(path: str | os.PathLike, verify: bool = False) -> PairsInfo:
    """Read and check ``manifest.json`` of a pairs folder; ``verify`` also checks every shard's
    sha256 (reads all the data). Raises :class:`PairsError`."""
    root = Path(path)
    if not root.exists():
        raise PairsError(f"{root}: pairs dataset not found")
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise PairsError(f"{root}: no manifest.json (not a pairs dataset from toon-pairs generate)")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PairsError(f"{mpath}: not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PairsError(f"{mpath}: not a toon-pairs manifest (format is not {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PairsError(
            f"{mpath}: unsupported format_version {manifest.get('format_version')!r} "
            f"(this reader knows {FORMAT_VERSION})"
        )
    try:
        resolution = int(manifest["resolution"])
        count = int(manifest["count"])
        shards = tuple(
            ShardInfo(str(s["name"]), int(s["first"]), int(s["count"]), str(s.get("sha256", "")))
            for s in manifest["shards"]
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PairsError(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None
    if resolution < 1 or count < 0:
        raise PairsError(f"{mpath}: bad resolution {resolution} or count {count}")
    num_shards = int(manifest.get("num_shards", len(shards)))
    if manifest.get("complete") is False or len(shards) < num_shards:
        done = sum(s.count for s in shards)
        raise PairsError(
            f"{root}: dataset is incomplete ({len(shards)} of {num_shards} shards, {done} of "
            f"{count} pairs); finish it by running the same toon-pairs generate command again"
        )
    if num_shards != len(shards):
        raise PairsError(
            f"{mpath}: num_shards is {manifest['num_shards']} but {len(shards)} shards are listed"
        )
    expected_first = 0
    for s in shards:
        if s.first != expected_first:
            raise PairsError(
                f"{mpath}: shard {s.name} starts at pair {s.first}, expected {expected_first}"
            )
        expected_first += s.count
        if "/" in s.name or "\\" in s.name or s.name.startswith("."):
            raise PairsError(f"{mpath}: bad shard name {s.name!r}")
        if not (root / s.name).is_file():
            raise PairsError(f"{root / s.name}: shard listed in the manifest is missing")
    if expected_first != count:
        raise PairsError(f"{mpath}: shards hold {expected_first} pairs but count is {count}")
    if verify:
        for s in shards:
            if s.sha256 and _sha256(root / s.name) != s.sha256:
                raise PairsError(f"{root / s.name}: sha256 differs from the manifest (corrupt?)")
    return PairsInfo(
        root=root,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        resolution=resolution,
        count=count,
        shards=shards,
    )


def split_counts(info: PairsInfo, holdout_percent: float) -> dict[str, int]:
    """How many pairs fall in each split: ``{"train": ..., "heldout": ...}``."""
    held = sum(is_held_out(pair_key(k), holdout_percent) for k in range(info.count))
    return {"train": info.count - held, "heldout": held}


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode_png(data: bytes, resolution: int, what: str) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PairsError(f"{what}: unreadable PNG ({e})") from None
    if img.mode != "RGB" or img.size != (resolution, resolution):
        raise PairsError(
            f"{what}: expected RGB {resolution}x{resolution}, got {img.mode} "
            f"{img.size[0]}x{img.size[1]}"
        )
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_pair(sample: dict[str, Any], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` uint8 CHW arrays of a webdataset sample."""
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', 'shard')}: pair {key}"
    out = []
    for part in ("src.png", "dst.png"):
        if part not in sample:
            raise PairsError(f"{where} has no {part}")
        out.append(_decode_png(sample[part], resolution, f"{where} {part}"))
    return out[0], out[1]


def _tar_samples(urls: Iterator[dict[str, str]], select=None) -> Iterator[dict[str, Any]]:
    """webdataset's tar reader (samples grouped by key), with read errors as PairsError."""
    import webdataset as wds

    samples = wds.tarfile_samples(urls, select_files=select)
    while True:
        try:
            sample = next(samples)
        except StopIteration:
            return
        except (tarfile.TarError, OSError, ValueError, EOFError) as e:
            first = str(e.args[0]) if e.args else type(e).__name__
            raise PairsError(f"unreadable shard: {first}") from None
        yield sample


def iter_pairs(
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

    def select(fname: str) -> bool:
        return wanted(os.path.basename(fname).split(".", 1)[0])

    urls = ({"url": str(info.shard_path(s))} for s in info.shards)
    n = 0
    for sample in _tar_samples(urls, select):
        if limit is not None and n >= limit:
            return
        src, dst = decode_pair(sample, info.resolution)
        yield sample["__key__"], src, dst
        n += 1


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

    def _shard_urls(self, slot: int, num_slots: int, seen: list[int]) -> Iterator[dict[str, str]]:
        n = len(self.info.shards)
        for epoch in itertools.count():
            before = seen[0]
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            mine = order[slot::num_slots] if n >= num_slots else order
            for i in mine:
                yield {"url": str(self.info.shard_path(self.info.shards[int(i)]))}
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
        samples = _tar_samples(self._shard_urls(slot, num_slots, seen))
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
            src, dst = decode_pair(sample, self.info.resolution)
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
    "FORMAT",
    "FORMAT_VERSION",
    "PairStream",
    "PairsError",
    "PairsInfo",
    "ShardInfo",
    "decode_pair",
    "holdout_bucket",
    "is_held_out",
    "iter_pairs",
    "open_pairs",
    "pair_key",
    "split_counts",
    "train_loader",
    "worker_skip",
]
