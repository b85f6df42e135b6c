"""``toon-pairs verify``: check a dataset folder's shards against their sidecars (torch-free).

Each shard is checked in the order a resumed job trusts it: sidecar present and of this
manifest's config and layout, tar present, size and sha256 as recorded, member names in key
order; ``deep`` also decodes every image and JSON with the dataset reader
(:func:`pairs.shards.read_samples`). The manifest is compared with what the sidecars make of it
(out of date after processes that were killed before rebuilding it): a verify reads and never
writes, unless asked to bring the manifest up to date (``update_manifest``, the CLI's
``--update-manifest``).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairs.shards import (
    MEMBER_EXTS,
    TEMP_RE,
    PairsError,
    decode_pair,
    manifest_from_sidecars,
    pair_key,
    read_manifest,
    read_samples,
    rebuild_manifest,
    shard_name,
    shard_problem,
    shard_range,
)


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``shards`` holds ``{"name", "status", "detail"}`` per shard."""

    path: str
    count: int
    num_shards: int
    ok_pairs: int = 0
    shards: list[dict[str, str]] = field(default_factory=list)
    stray_temps: list[str] = field(default_factory=list)
    manifest_stale: bool = False  # manifest.json does not list the finished shards as it should
    manifest_updated: bool = False  # ... and was rewritten (``update_manifest``)

    @property
    def ok(self) -> bool:
        """True when every shard is present and intact and the manifest lists them (what
        readers such as :func:`pairs.shards.complete_shards` need)."""
        return all(s["status"] == "ok" for s in self.shards) and not self.manifest_stale

    def problems(self) -> list[dict[str, str]]:
        """The shards that are not ok."""
        return [s for s in self.shards if s["status"] != "ok"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "ok": self.ok,
            "count": self.count,
            "ok_pairs": self.ok_pairs,
            "num_shards": self.num_shards,
            "ok_shards": sum(s["status"] == "ok" for s in self.shards),
            "problems": self.problems(),
            "stray_temps": self.stray_temps,
            "manifest_stale": self.manifest_stale,
            "manifest_updated": self.manifest_updated,
        }


def _check_members(path: Path, man: Mapping[str, Any], index: int, deep: bool) -> str:
    """What is wrong with the members of an intact shard tar ("" when nothing)."""
    r = shard_range(index, man["count"], man["shard_size"])
    try:
        with tarfile.open(path) as tf:
            names = [m.name for m in tf.getmembers()]
    except (tarfile.TarError, OSError, ValueError) as e:
        return f"unreadable tar: {type(e).__name__}: {e}"
    expected = [f"{pair_key(k)}.{ext}" for k in r for ext in MEMBER_EXTS]
    if names != expected:
        return f"{len(names)} members, expected {len(expected)} in key order"
    if deep:
        try:
            for sample in read_samples([path]):
                decode_pair(sample, man["resolution"])
                if json.loads(sample["json"]).get("index") != int(sample["__key__"]):
                    return f"{sample['__key__']}.json has another index"
        except PairsError as e:
            return str(e)
        except (ValueError, AttributeError) as e:
            return f"unreadable json: {type(e).__name__}: {e}"
    return ""


def _listing(man: Mapping[str, Any]) -> tuple[Any, ...]:
    return man.get("shards"), man.get("complete"), man.get("finished_count")


def verify(
    path: str | os.PathLike, deep: bool = False, update_manifest: bool = False
) -> VerifyReport:
    """Check every shard of a dataset: sidecar, size, sha256, member names and order (``deep``:
    also decode every image and JSON), and whether ``manifest.json`` lists the finished shards
    (``manifest_stale`` when not, as after processes that were killed before rebuilding it).
    Writes nothing, unless ``update_manifest``: then a stale manifest is rewritten from the
    sidecars."""
    path = Path(path)
    man = read_manifest(path)
    rep = VerifyReport(str(path), man["count"], man["num_shards"])
    fresh = manifest_from_sidecars(path, man)
    rep.manifest_stale = _listing(fresh) != _listing(man)
    if rep.manifest_stale and update_manifest:
        man = rebuild_manifest(path)
        rep.manifest_updated = True
        rep.manifest_stale = _listing(manifest_from_sidecars(path, man)) != _listing(man)
    rep.stray_temps = sorted(p.name for p in path.iterdir() if TEMP_RE.match(p.name))
    for index in range(man["num_shards"]):
        status, detail = shard_problem(path, man, index, check_hash=True)
        if status == "ok":
            detail = _check_members(path / shard_name(index), man, index, deep)
            status = "corrupt" if detail else "ok"
        rep.shards.append({"name": shard_name(index), "status": status, "detail": detail})
        if status == "ok":
            rep.ok_pairs += len(shard_range(index, man["count"], man["shard_size"]))
    return rep
