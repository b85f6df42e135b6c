"""``toon-pairs stats`` and ``preview``: what a dataset holds, in numbers and as a picture.

Torch-free; reads through :mod:`pairs.shards` (the manifest and :func:`pairs.shards.iter_pairs`),
so it works on unfinished datasets too (their finished shards).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.images import make_grid
from pairs.shards import PairsError, iter_pairs, read_manifest


def dataset_stats(path: str | os.PathLike, sample: int = 64) -> dict[str, Any]:
    """Counts, sizes on disk (from tar headers), the config, and pixel statistics over the
    first ``sample`` pairs (mean RGB of inputs and targets, mean |dst - src|)."""
    path = Path(path)
    man = read_manifest(path)
    src_bytes = dst_bytes = total = 0
    for entry in man["shards"]:
        total += int(entry["bytes"])
        with tarfile.open(path / entry["name"]) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".src.png"):
                    src_bytes += m.size
                elif m.name.endswith(".dst.png"):
                    dst_bytes += m.size
    pairs = int(man["finished_count"])
    src_sum = np.zeros(3)
    dst_sum = np.zeros(3)
    diff = 0.0
    n = 0
    kinds: dict[str, int] = {}
    mixed = 0
    if sample > 0 and pairs:
        for _, src, dst, meta in iter_pairs(path, keys=_first_keys(man, sample)):
            src_sum += src.reshape(-1, 3).mean(0)
            dst_sum += dst.reshape(-1, 3).mean(0)
            diff += float(np.abs(dst.astype(np.int16) - src.astype(np.int16)).mean())
            kinds[meta.get("latent_kind", "?")] = kinds.get(meta.get("latent_kind", "?"), 0) + 1
            mixed += meta.get("style_mix") is not None
            n += 1
    cfg = man["config"]
    return {
        "path": str(path),
        "resolution": man["resolution"],
        "count": man["count"],
        "finished_pairs": pairs,
        "num_shards": man["num_shards"],
        "finished_shards": len(man["shards"]),
        "complete": man["complete"],
        "bytes": total,
        "bytes_per_pair": round(total / pairs) if pairs else None,
        "src_png_bytes_mean": round(src_bytes / pairs) if pairs else None,
        "dst_png_bytes_mean": round(dst_bytes / pairs) if pairs else None,
        "config": cfg,
        "teachers": man["teachers"],
        "sample": {
            "pairs": n,
            "latent_kinds": kinds,
            "style_mixed": mixed,
            "src_mean_rgb": [round(float(v) / n, 2) for v in src_sum] if n else None,
            "dst_mean_rgb": [round(float(v) / n, 2) for v in dst_sum] if n else None,
            "mean_abs_dst_minus_src": round(diff / n, 3) if n else None,
        },
    }


def _first_keys(man: Mapping[str, Any], n: int, start: int = 0) -> list[int]:
    """The first ``n`` finished pair indices from ``start``."""
    keys: list[int] = []
    for entry in man["shards"]:
        for k in range(max(entry["first"], start), entry["first"] + entry["count"]):
            if len(keys) >= n:
                return keys
            keys.append(k)
    return keys


def preview_grid(
    path: str | os.PathLike, n: int = 16, start: int = 0, cols: int | None = None
) -> np.ndarray:
    """The first ``n`` finished pairs from pair ``start`` as one HWC uint8 image.

    Each cell is ``src | dst`` side by side (``R x 2R``); cells fill rows of ``cols`` (default
    ``ceil(sqrt(m))`` for the ``m`` pairs found), so the image is
    ``ceil(m / cols) * R`` high and ``cols * 2R`` wide.
    """
    man = read_manifest(path)
    keys = _first_keys(man, n, start)
    if not keys:
        raise PairsError(f"{path}: no finished pairs to preview")
    cells = [np.concatenate([src, dst], axis=1) for _, src, dst, _ in iter_pairs(path, keys)]
    return make_grid(cells, cols)
