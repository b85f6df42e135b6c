"""The student's pairs reading: manifest checks, the held-out split, and the deterministic
training stream."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pairs.shards import PairsError, holdout_bucket, is_held_out, pair_key
from student.config import make_config
from student.data import (
    PairStream,
    open_pairs,
    split_counts,
    split_pairs,
    train_loader,
    worker_skip,
)
from tests.conftest import TINY_TEACHER_NAME, tiny_teacher_file
from tests.pairs_fixture import write_pairs

_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 pairs of the tests' tiny32-shaped teacher in 6 shards of 16."""
    if "p" not in _CACHE:
        _CACHE["p"] = write_pairs(tmp_path_factory.mktemp("pairs"), tiny_teacher_file(), 96, 16)
    return _CACHE["p"]


def _cfg(pairs: Path, **over):
    values = dict(pairs=str(pairs), outdir="unused", holdout_percent=20.0, shuffle_buffer=8)
    values.update(over)
    return make_config("tiny", values)


def test_manifest_is_read_and_checked(pairs_dir: Path, tmp_path: Path) -> None:
    info = open_pairs(pairs_dir, verify=True)
    assert info.resolution == 32 and info.count == 96 and len(info.shards) == 6
    assert info.teachers["base"]["file"] == TINY_TEACHER_NAME and len(info.manifest_sha256) == 64

    bad = tmp_path / "bad"
    shutil.copytree(pairs_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())

    def write(m) -> None:
        (bad / "manifest.json").write_text(json.dumps(m))

    write(dict(manifest, format="other"))
    with pytest.raises(PairsError, match="not a toon-pairs manifest"):
        open_pairs(bad)
    write(dict(manifest, format_version=9))
    with pytest.raises(PairsError, match="unsupported format_version 9"):
        open_pairs(bad)
    write(dict(manifest, complete=False))
    with pytest.raises(PairsError, match="dataset is incomplete"):
        open_pairs(bad)
    write(dict(manifest, shards=manifest["shards"][:5]))
    with pytest.raises(PairsError, match=r"incomplete \(5 of 6 shards, 80 of 96 pairs\)"):
        open_pairs(bad)
    write(dict(manifest, count=95))
    with pytest.raises(PairsError, match="shards hold 96 pairs but count is 95"):
        open_pairs(bad)
    write(manifest)
    (bad / "shard-000003.tar").unlink()
    with pytest.raises(
        PairsError, match="shard-000003.tar: shard listed in the manifest is missing"
    ):
        open_pairs(bad)
    shutil.copy(pairs_dir / "shard-000004.tar", bad / "shard-000003.tar")
    open_pairs(bad)  # sizes are not checked without verify
    with pytest.raises(PairsError, match="sha256 differs"):
        open_pairs(bad, verify=True)
    with pytest.raises(PairsError, match="pairs dataset not found"):
        open_pairs(tmp_path / "nothing")
    with pytest.raises(PairsError, match="no manifest.json"):
        open_pairs(tmp_path)


def test_holdout_split_is_a_fixed_function_of_the_key() -> None:
    keys = [pair_key(k) for k in range(20000)]
    held = [k for k in keys if is_held_out(k, 5.0)]
    assert 0.045 < len(held) / len(keys) < 0.055
    # nested: a larger percentage holds out a superset
    assert set(held) <= {k for k in keys if is_held_out(k, 10.0)}
    assert not any(is_held_out(k, 0.0) for k in keys)
    # Pinned, so the split cannot change silently between versions (computed with this rule:
    # int.from_bytes(sha256(key)[:8], "big") % 10000 < 500).
    assert [int(k) for k in keys[:200] if is_held_out(k, 5.0)] == [
        32, 35, 50, 51, 65, 87, 100, 116, 123, 194, 198
    ]  # fmt: skip
    assert holdout_bucket("000000000") == 9525
    assert pair_key(7) == "000000007"


def test_iter_pairs_reads_the_splits_in_key_order(pairs_dir: Path) -> None:
    info = open_pairs(pairs_dir)
    held = list(split_pairs(info, "heldout", 20.0))
    train = list(split_pairs(info, "train", 20.0))
    counts = split_counts(info, 20.0)
    assert len(held) == counts["heldout"] > 0 and len(train) == counts["train"]
    assert sorted(k for k, _, _ in held + train) == [pair_key(k) for k in range(96)]
    assert [k for k, _, _ in held] == sorted(k for k, _, _ in held)
    key, src, dst = held[0]
    assert src.shape == dst.shape == (3, 32, 32) and src.dtype == np.uint8
    assert not np.array_equal(src, dst)
    assert len(list(split_pairs(info, "all", limit=5))) == 5


def _keys(stream, n: int) -> list[str]:
    return [s["key"] for s in itertools.islice(stream, n)]


def test_training_stream_is_deterministic_and_never_held_out(pairs_dir: Path) -> None:
    info = open_pairs(pairs_dir)
    cfg = _cfg(pairs_dir)
    a = list(itertools.islice(iter(PairStream(info, cfg)), 200))
    b = list(itertools.islice(iter(PairStream(info, cfg)), 200))
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert all(torch.equal(x["aug"], y["aug"]) for x, y in zip(a, b, strict=True))
    assert not any(is_held_out(s["key"], 20.0) for s in a)
    # Without a shuffle buffer, one epoch visits every training pair exactly once.
    n_train = split_counts(info, 20.0)["train"]
    epoch = _keys(iter(PairStream(info, _cfg(pairs_dir, shuffle_buffer=1))), n_train)
    assert sorted(epoch) == sorted(k for k, _, _ in split_pairs(info, "train", 20.0))
    # The seed changes the order.
    other = _keys(iter(PairStream(info, _cfg(pairs_dir, seed=1))), 50)
    assert other != [s["key"] for s in a[:50]]


def test_processes_read_disjoint_shards(pairs_dir: Path) -> None:
    info = open_pairs(pairs_dir)
    cfg = _cfg(pairs_dir, shuffle_buffer=1)
    per_epoch = split_counts(info, 20.0)["train"]

    def shard_of(key: str) -> int:
        return int(key) // 16

    r0 = _keys(iter(PairStream(info, cfg, rank=0, world=2)), per_epoch // 4)
    r1 = _keys(iter(PairStream(info, cfg, rank=1, world=2)), per_epoch // 4)
    assert not {shard_of(k) for k in r0} & {shard_of(k) for k in r1}


def test_worker_skip_counts_round_robin_batches() -> None:
    assert [worker_skip(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert worker_skip(0, 0, 1) == 0 and worker_skip(5, 0, 1) == 5


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_continues_the_same_batches(pairs_dir: Path, workers: int) -> None:
    """A loader started at batch k yields exactly batches k, k+1, ... of a loader started at 0
    (with worker processes too: batch j comes from worker j % workers)."""
    info = open_pairs(pairs_dir)
    cfg = _cfg(pairs_dir, workers=workers, xflip=True, affine_prob=0.5, jitter_prob=0.5)
    full = list(itertools.islice(iter(train_loader(info, cfg, 0, 1, 4, 0)), 9))
    tail = list(itertools.islice(iter(train_loader(info, cfg, 0, 1, 4, 5)), 4))
    for x, y in zip(full[5:], tail, strict=True):
        assert x["key"] == y["key"]
        assert torch.equal(x["src"], y["src"]) and torch.equal(x["aug"], y["aug"])
