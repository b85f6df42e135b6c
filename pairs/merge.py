"""One pairs dataset from several (``toon-pairs merge``): the student reads a single dataset.

The pairs of the sources are copied in order (source by source, key order within each) without
decoding or re-encoding their images, and renumbered from 0. Each pair's ``json`` member gains
``"merged_from": {"dataset": <source folder name>, "key": <its key there>}`` and its ``index``
becomes the new one. The manifest's ``config`` lists the sources (folder name, count,
``config_sha256`` and the sha256 of their manifests), so the merged set says exactly what it was
made of; ``teachers`` lists each source's. Every shard gets its sidecar, so ``toon-pairs
verify`` checks a merged dataset like a generated one.

The result is written into a hidden temporary folder beside ``out`` and renamed into place when
complete, so a killed merge leaves nothing under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.files import atomic_write_bytes, file_sha256
from pairs import shards
from pairs.shards import PairsError

DEFAULT_SHARD_SIZE = 1000


def merge_datasets(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    shard_size: int = DEFAULT_SHARD_SIZE,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Write every pair of the finished datasets ``sources`` into a new dataset ``out``; returns
    its manifest. Raises PairsError (one line) for a missing, unfinished or mismatched source or
    an existing ``out``."""
    if len(sources) < 2:
        raise PairsError("merge needs at least two datasets")
    if shard_size < 1:
        raise PairsError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out)
    if out.exists():
        raise PairsError(f"{out}: already exists; merge into a new folder")
    opened = []
    for src in sources:
        root = Path(src)
        man = shards.read_manifest(root)
        entries = shards.complete_shards(root, man)
        opened.append((root, man, entries))
    resolutions = {int(m["resolution"]) for _, m, _ in opened}
    if len(resolutions) > 1:
        listed = ", ".join(f"{r.name} {m['resolution']} px" for r, m, _ in opened)
        raise PairsError(f"the datasets differ in resolution ({listed}); regenerate with --size")
    count = sum(int(m["count"]) for _, m, _ in opened)
    config = {
        "kind": "merged",
        "sources": [
            {
                "folder": root.name,
                "count": int(man["count"]),
                "config_sha256": man.get("config_sha256"),
                "manifest_sha256": file_sha256(root / shards.MANIFEST_NAME),
            }
            for root, man, _ in opened
        ],
    }
    static = {
        "format": shards.FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "resolution": resolutions.pop(),
        "count": count,
        "shard_size": shard_size,
        "num_shards": shards.num_shards_for(count, shard_size),
        "config": config,
        "config_sha256": shards.config_sha256(config),
        "teachers": {root.name: man.get("teachers") for root, man, _ in opened},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        done = _copy(opened, tmp, shard_size, count, log)
        for entry in done:  # the finished-shard records toon-pairs verify checks
            record = {"format": shards.SIDECAR_FORMAT, "format_version": shards.FORMAT_VERSION}
            record.update(config_sha256=static["config_sha256"], written={"by": "merge"})
            shards.write_sidecar(tmp, {**record, **entry})
        atomic_write_bytes(tmp / shards.MANIFEST_NAME, shards.manifest_bytes(static, done))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return shards.read_manifest(out)


def _copy(opened: list, tmp: Path, shard_size: int, count: int, log) -> list[dict[str, Any]]:
    """Copy the samples of ``opened`` into shards of ``tmp``; returns the manifest entries."""
    done: list[dict[str, Any]] = []
    writer: shards.ShardWriter | None = None
    k = 0
    try:
        for root, _man, entries in opened:
            log(f"copying {root}")
            for sample in shards.read_samples(root / e.name for e in entries):
                if k % shard_size == 0:
                    if writer is not None:
                        done.append(_commit(writer, len(done), k - shard_size, shard_size))
                    writer = shards.ShardWriter(tmp, k // shard_size)
                members = {x: sample[x] for x in ("src.png", "dst.png") if x in sample}
                if len(members) != 2:
                    raise PairsError(f"{sample['__url__']}: pair {sample['__key__']} is incomplete")
                try:
                    meta = json.loads(sample.get("json", b"{}") or b"{}")
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise PairsError(
                        f"{sample['__url__']}: pair {sample['__key__']} has unreadable JSON"
                    ) from None
                meta["merged_from"] = {"dataset": root.name, "key": sample["__key__"]}
                meta["index"] = k
                members["json"] = json.dumps(meta, sort_keys=True).encode()
                assert writer is not None
                writer.add(shards.pair_key(k), members)
                k += 1
        if writer is not None:
            last = (len(done)) * shard_size
            done.append(_commit(writer, len(done), last, k - last))
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    if k != count:
        raise PairsError(f"the sources hold {k} pairs but their manifests list {count}")
    return done


def _commit(writer: shards.ShardWriter, index: int, first: int, n: int) -> dict[str, Any]:
    sha, size = writer.commit()
    return {"name": writer.final.name, "index": index, "first": first, "count": n,
            "sha256": sha, "bytes": size}  # fmt: skip
