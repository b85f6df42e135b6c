"""A test-local writer of the pairs dataset format, with pairs rendered by the tiny32 teacher.

The real generator (``pairs/generate.py``) is written separately; this helper writes the same
binding format with plain ``tarfile`` so the student tests do not depend on it:

- ``manifest.json``: ``{"format": "toon-pairs", "format_version": 1, "resolution", "count",
  "shard_size", "num_shards", "shards": [{"name", "first", "count", "sha256"}], "config",
  "teachers": {"base": {"file", "sha256"}, "toon": {...}}}``
- ``shard-{i:06d}.tar`` with ``{key}.src.png``, ``{key}.dst.png`` and ``{key}.json`` per pair,
  ``key = f"{k:09d}"``.

Pairs: pair k renders ``z = default_rng([seed, k]).standard_normal(z_dim)`` mapped by the base
``tiny32`` generator with truncation 0.7; ``src`` is the base's synthesis (noise const, fp32),
``dst`` the synthesis of a "toon" teacher: ``blend_generators(low=perturbed, high=base,
swap_res=8)``, where ``perturbed`` is the base with its synthesis ``b4``/``b8`` tensors
perturbed (seeded Gaussian noise; see :func:`perturbed_copy`). The target differs from the
source in colour grading and a little in coarse structure, the way a layer-swapped toon model
differs from its base, and is a deterministic function of the latent.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

TRUNCATION = 0.7
PERTURB = 0.02
COLOR_SHIFT = 2.0


def perturbed_copy(
    base: torch.nn.Module, perturb: float, color_shift: float, seed: int = 1
) -> torch.nn.Module:
    """The base generator with its synthesis b4 and b8 tensors perturbed (a stand-in for the
    fine-tuned game-style model): the toRGB biases by ``color_shift * N(0, 1)`` (a colour
    grading of the whole image, the part a student can learn from the source alone), every
    other tensor by ``perturb`` times its standard deviation times N(0, 1) (a change of the
    coarse structure that depends on the latent)."""
    G = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if not name.startswith(("synthesis.b4.", "synthesis.b8.")):
                continue
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("torgb.bias"):
                p.add_(noise * color_shift)
            else:
                std = float(p.std()) if p.numel() > 1 else 1.0
                p.add_(noise * std * perturb)
    return G


def toon_teacher(
    base: torch.nn.Module, perturb: float = PERTURB, color_shift: float = COLOR_SHIFT, seed: int = 1
) -> torch.nn.Module:
    """The blended "toon" teacher: b4/b8 from the perturbed copy, the rest from the base."""
    from teacher.blend import blend_generators

    return blend_generators(perturbed_copy(base, perturb, color_shift, seed), base, swap_res=8)


@torch.no_grad()
def render_pairs(
    base: torch.nn.Module, toon: torch.nn.Module, ks: list[int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC (src, dst) of pairs ``ks``."""
    from teacher.sample import to_uint8

    z = np.stack([np.random.default_rng([seed, k]).standard_normal(base.z_dim) for k in ks])
    z = torch.from_numpy(z.astype(np.float32))
    ws = base.mapping(z, torch.zeros([len(ks), base.c_dim]), truncation_psi=TRUNCATION)
    src = base.synthesis(ws, noise_mode="const", force_fp32=True)
    dst = toon.synthesis(ws, noise_mode="const", force_fp32=True)
    return to_uint8(src), to_uint8(dst)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0
    tar.addfile(ti, io.BytesIO(data))


def write_shard(path: Path, items: list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]) -> str:
    """Write one shard (key, src HWC, dst HWC, json) and return its sha256."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, src, dst, meta in items:
            _add(tar, f"{key}.src.png", _png(src))
            _add(tar, f"{key}.dst.png", _png(dst))
            _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(
    folder: Path,
    resolution: int,
    shard_counts: list[int],
    shard_hashes: list[str],
    config: dict[str, Any],
    teachers: dict[str, Any],
    shard_size: int,
) -> Path:
    """Write ``manifest.json`` for shards ``shard-000000.tar``... with the given counts."""
    shards, first = [], 0
    for i, (n, h) in enumerate(zip(shard_counts, shard_hashes, strict=True)):
        shards.append({"name": f"shard-{i:06d}.tar", "first": first, "count": n, "sha256": h})
        first += n
    manifest = {
        "format": "toon-pairs",
        "format_version": 1,
        "resolution": resolution,
        "count": first,
        "shard_size": shard_size,
        "num_shards": len(shards),
        "shards": shards,
        "config": config,
        "teachers": teachers,
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def write_pairs(
    folder: Path,
    base_path: Path,
    count: int = 256,
    shard_size: int = 64,
    seed: int = 0,
    perturb: float = PERTURB,
    color_shift: float = COLOR_SHIFT,
) -> Path:
    """Render ``count`` tiny32 pairs into a pairs dataset at ``folder`` (see the module
    docstring) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small renders; more threads only contend on a busy machine
    try:
        return _write_pairs(folder, base_path, count, shard_size, seed, perturb, color_shift)
    finally:
        torch.set_num_threads(threads)


def _write_pairs(
    folder: Path,
    base_path: Path,
    count: int,
    shard_size: int,
    seed: int,
    perturb: float,
    color_shift: float,
) -> Path:
    from common.files import file_sha256
    from teacher import load_generator

    base = load_generator(base_path)
    toon = toon_teacher(base, perturb, color_shift)
    counts, hashes = [], []
    for i, start in enumerate(range(0, count, shard_size)):
        ks = list(range(start, min(start + shard_size, count)))
        src, dst = render_pairs(base, toon, ks, seed)
        items = [
            (
                f"{k:09d}",
                src[j],
                dst[j],
                {"seed": seed, "k": k, "truncation_psi": TRUNCATION, "noise_mode": "const"},
            )
            for j, k in enumerate(ks)
        ]
        hashes.append(write_shard(folder / f"shard-{i:06d}.tar", items))
        counts.append(len(ks))
    toon_digest = hashlib.sha256()
    for name, t in sorted(toon.state_dict().items()):
        toon_digest.update(name.encode())
        toon_digest.update(t.detach().cpu().numpy().tobytes())
    teachers = {
        "base": {"file": Path(base_path).name, "sha256": file_sha256(base_path)},
        "toon": {"file": "tiny32-toon (in memory)", "sha256": toon_digest.hexdigest()},
    }
    config = {
        "seed": seed,
        "truncation_psi": TRUNCATION,
        "noise_mode": "const",
        "perturb": perturb,
        "color_shift": color_shift,
        "swap_res": 8,
    }
    write_manifest(
        folder, base.img_resolution, counts, hashes, config, teachers, shard_size=shard_size
    )
    return folder
