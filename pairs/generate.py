"""Pair generation jobs: the teacher's paired dataset, sharded, deterministic and resumable.

A job renders ``count`` pairs into a folder of tar shards (format: :mod:`pairs.shards`).

**Pair k** (``S`` = ``--seed``, ``B`` = ``--batch``):

- *z pairs* (latent kind ``z``): ``z = RandomState(S + k).randn(z_dim)``
  (:func:`teacher.sample.seed_latent`: pair k's z is the z of seed ``S + k`` in
  ``toon-teacher sample``); ``ws = base.mapping(z, truncation_psi, truncation_cutoff)``.
  Style mixing (``mix_prob > 0``): ``rs = RandomState([S + k, 1])``, ``u = rs.rand()``,
  ``z2 = rs.randn(z_dim)``, ``cross = rs.randint(1, num_ws)``; when ``u < mix_prob`` the ws from
  layer ``cross`` on come from ``base.mapping(z2)`` (same truncation). Perturbation
  (``perturb_std > 0``): ``ws += perturb_std * RandomState([S + k, 2]).randn(num_ws, w_dim)``.
  Input ``src`` = ``base.synthesis(ws)``, target ``dst`` = ``toon.synthesis(ws)``.
- *projected pairs* (``--latents projected_w.npz --photos DIR``): ``ws`` = row k of the npz's
  ``w``; ``src`` = the aligned photo of row k (Lanczos-resized to the resolution when needed),
  ``dst`` = ``toon.synthesis(ws)``.
- *noise*: ``const`` (default) or ``none`` as in the generator; ``random`` draws pair k's noise
  maps from ``RandomState([S + k, 3])``, layer by layer in block order, identical for base and
  toon, and feeds them through the layers' noise buffers, so it is deterministic too.
- Renders are converted with :func:`teacher.sample.to_uint8`, then resized to ``--size`` with
  Lanczos when that differs from the generator's resolution.

**Render batches.** Float kernels round differently for different batch sizes (measured on CPU
at ``paper256``: up to 1.5e-5 between batch 1 and batch 4, enough to flip uint8 pixels), so
bit-exact pairs need a fixed batch composition: render batch ``j`` always holds pairs
``[j*B, (j+1)*B)``, padded past ``count`` (z: the following seeds; projected: zero rows), whatever
the shard layout or the process asking. ``B`` is therefore part of the config, and pair k is a
function of (config, k) alone: :func:`render_pairs` of one pair equals that pair in the dataset,
and any split across processes writes the same shard bytes as one process.

**Devices.** ``precision`` ``fp32`` (default on CPU, ``force_fp32=True``) or ``fp16`` (default
on CUDA: the generator's fp16 blocks) is part of the config. Byte identity across processes and
machines needs the same device type and the same torch, Pillow and zlib builds, and on CPU the
same number of torch threads (``--threads``: oneDNN's convolutions round differently with 1 and
2 threads). A dataset may mix devices; each shard's sidecar records where and how it was made.

**Sharding.** ``--shard-index LIST`` writes the given shards; ``--task I/T`` (or a Slurm array:
``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``) writes the shards
``i`` with ``i % T == I``; the default is all. Finished shards are verified by sha256 and skipped,
so rerunning a killed command completes the set. Two processes must not be given the same shard
at the same time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import queue
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import features

from common.files import file_sha256
from pairs import shards
from pairs.shards import PairsError
from teacher.io import CheckpointError, load_generator
from teacher.networks import Generator, SynthesisLayer
from teacher.sample import seed_latent

PAIR_RECIPE = 1  # version of the rules above; part of the config
DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH = 16
DEFAULT_TRUNCATION = 0.7
NOISE_MODES = ("const", "random", "none")
PRECISIONS = ("auto", "fp32", "fp16")
_MIX_STREAM, _PERTURB_STREAM, _NOISE_STREAM = 1, 2, 3

__all__ = [
    "GenerateConfig",
    "GenerateResult",
    "Job",
    "PairsError",
    "generate",
    "prepare_job",
    "render_pairs",
    "select_shards",
]


@dataclass(frozen=True)
class GenerateConfig:
    """A pair generation job as the user states it (``toon-pairs generate`` flags one to one).

    Fields that decide the pairs' bytes become the manifest's ``config``; ``device``,
    ``workers`` and the shard selection (``shard_index``, ``task``, ``use_slurm``) only decide
    how and where they are made.
    """

    out: str  # dataset folder
    toon: str  # the blended teacher (targets)
    base: str | None = None  # the base generator (inputs and mapping); needed for z pairs
    count: int | None = None  # pairs (z: required; projected: default all rows)
    seed: int = 0  # pair k uses seed + k
    trunc: float | None = None  # truncation psi for z pairs (default 0.7)
    trunc_cutoff: int | None = None  # truncate only the first N ws (default all)
    noise: str = "const"  # const | random | none
    size: int | None = None  # output resolution (default the generator's)
    shard_size: int | None = None  # pairs per shard (default 1000, or from num_shards)
    num_shards: int | None = None  # alternatively: the number of shards
    batch: int = DEFAULT_BATCH  # render batch (fixed batches: part of the config)
    precision: str = "auto"  # fp32 | fp16 | auto (an existing job's, else fp16 on CUDA)
    mix_prob: float = 0.0  # probability of style mixing per z pair
    perturb_std: float = 0.0  # std of Gaussian noise added to ws of z pairs
    png_level: int = shards.DEFAULT_PNG_LEVEL  # Pillow PNG compress_level
    latents: str | None = None  # projected_w.npz (real-photo pairs)
    photos: str | None = None  # folder of aligned photos for --latents
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # PNG encoding processes (0: inline; default cores - 1, <= 16)
    threads: int | None = None  # torch CPU threads while rendering (default: torch's)
    shard_index: tuple[int, ...] | None = None  # shards this process writes (default all)
    task: tuple[int, int] | None = None  # (I, T): shards i with i % T == I
    use_slurm: bool = True  # take (I, T) from a Slurm array's environment when set


@dataclass
class Job:
    """A resolved job: loaded teachers, inputs and the static manifest (see :func:`prepare_job`)."""

    config: GenerateConfig
    manifest: dict[str, Any]
    device: torch.device
    toon: Generator
    base: Generator | None = None
    ws_rows: np.ndarray | None = None  # projected latents [rows, num_ws, w_dim]
    photo_paths: list[str] | None = None  # absolute paths, one per row
    photo_names: list[str] | None = None  # names relative to the photo folder
    _cache: dict[int, RenderedBatch] = field(default_factory=dict, repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        """The generating config (the manifest's ``config``)."""
        return self.manifest["config"]

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    @property
    def num_shards(self) -> int:
        return int(self.manifest["num_shards"])

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])


@dataclass
class RenderedBatch:
    """Render batch ``index``: pairs ``ks``, uint8 ``[B, H, W, 3]`` at the generator's size."""

    index: int
    ks: range
    src: np.ndarray | None  # None for projected pairs (the photos are the inputs)
    dst: np.ndarray
    style_mix: list[int | None]


@dataclass
class GenerateResult:
    """What one :func:`generate` call did."""

    out: str
    selected: list[int]
    skipped: list[int]
    written: list[int]
    pairs_written: int
    seconds: float  # rendering, encoding and writing (after setup)
    setup_seconds: float
    finished_shards: int
    num_shards: int
    complete: bool

    @property
    def pairs_per_s(self) -> float:
        return self.pairs_written / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Setup


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PairsError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PairsError("--device cuda was asked for but no CUDA GPU is available")
    return dev


def _load(path: str, role: str, device: torch.device) -> tuple[Generator, dict[str, str]]:
    try:
        G = load_generator(path)
    except CheckpointError as e:
        raise PairsError(f"--{role}: {e}") from None
    if G.c_dim > 0:
        raise PairsError(f"--{role} {path}: conditional generators are not supported")
    G = G.to(device).eval().requires_grad_(False)
    return G, {"file": Path(path).name, "sha256": file_sha256(path)}


def _layout(cfg: GenerateConfig, count: int) -> tuple[int, int]:
    if cfg.shard_size is not None and cfg.shard_size < 1:
        raise PairsError(f"--shard-size must be at least 1, got {cfg.shard_size}")
    if cfg.num_shards is None:
        size = cfg.shard_size or DEFAULT_SHARD_SIZE
        return size, shards.num_shards_for(count, size)
    if not 1 <= cfg.num_shards <= count:
        raise PairsError(
            f"--num-shards must be from 1 to the count ({count}), got {cfg.num_shards}"
        )
    size = cfg.shard_size or -(-count // cfg.num_shards)
    if shards.num_shards_for(count, size) != cfg.num_shards:
        raise PairsError(
            f"{count} pairs in shards of {size} make {shards.num_shards_for(count, size)} shards, "
            f"not --num-shards {cfg.num_shards}; give one of --shard-size and --num-shards"
        )
    return size, cfg.num_shards


def _match_photos(names: Sequence[str] | None, folder: Path, rows: int) -> list[str]:
    files = shards.list_photos(folder)
    if names is None:
        if len(files) != rows:
            raise PairsError(
                f"{folder} holds {len(files)} photos for {rows} latents; save the latents with "
                "names (teacher project does) or give exactly one photo per row, in name order"
            )
        return files
    index: dict[str, list[str]] = defaultdict(list)
    for f in files:
        p = Path(f)
        for alias in {f, p.with_suffix("").as_posix(), p.stem}:
            index[alias].append(f)
    matched = []
    for i, name in enumerate(names):
        for alias in (name, Path(name).with_suffix("").as_posix(), f"{Path(name).stem}_target"):
            hits = index.get(alias, [])
            if len(hits) == 1:
                matched.append(hits[0])
                break
            if len(hits) > 1:
                raise PairsError(f"latent row {i} ({name}): several photos match in {folder}")
        else:
            raise PairsError(f"latent row {i} ({name}): no photo of that name in {folder}")
    return matched


def _load_latents(cfg: GenerateConfig, toon: Generator) -> tuple[np.ndarray, list[str], dict]:
    path = Path(cfg.latents or "")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "w" not in npz:
                raise PairsError(
                    f"{path}: no key 'w' (expected projected_w.npz from teacher project)"
                )
            w = np.asarray(npz["w"], dtype=np.float32)
            names = [str(n) for n in npz["names"]] if "names" in npz else None
    except (OSError, ValueError) as e:
        raise PairsError(f"{path}: cannot read latents ({e})") from None
    if w.ndim == 2:
        w = np.repeat(w[:, None, :], toon.num_ws, axis=1)
    if w.ndim != 3 or w.shape[1:] != (toon.num_ws, toon.w_dim):
        raise PairsError(
            f"{path}: w has shape {w.shape}, expected [N, {toon.num_ws}, {toon.w_dim}] for --toon"
        )
    if names is not None and len(names) != len(w):
        raise PairsError(f"{path}: {len(names)} names for {len(w)} latents")
    info = {"file": path.name, "sha256": file_sha256(path), "rows": int(len(w))}
    return w, names, info


def _existing_precision(out: Path) -> str | None:
    try:
        return shards.read_manifest(out)["config"].get("precision")
    except (PairsError, KeyError, TypeError):
        return None


def prepare_job(cfg: GenerateConfig) -> Job:
    """Check the config, load the teachers and inputs, resolve defaults; returns the job with
    its static manifest (raises PairsError with a one-line message on any problem)."""
    if cfg.noise not in NOISE_MODES:
        raise PairsError(f"--noise must be one of {', '.join(NOISE_MODES)}, got {cfg.noise!r}")
    if cfg.precision not in PRECISIONS:
        raise PairsError(f"--precision must be one of {', '.join(PRECISIONS)}")
    if cfg.batch < 1:
        raise PairsError(f"--batch must be at least 1, got {cfg.batch}")
    if not 0 <= cfg.png_level <= 9:
        raise PairsError(f"--png-level must be from 0 to 9, got {cfg.png_level}")
    if not 0.0 <= cfg.mix_prob <= 1.0 or cfg.perturb_std < 0:
        raise PairsError("--mix-prob must be in [0, 1] and --perturb-std at least 0")
    if cfg.seed < 0:
        raise PairsError(f"--seed must be at least 0, got {cfg.seed}")
    projected = cfg.latents is not None
    if projected != (cfg.photos is not None):
        raise PairsError("real-photo pairs need both --latents projected_w.npz and --photos DIR")
    if projected and (cfg.trunc is not None or cfg.trunc_cutoff is not None):
        raise PairsError("--trunc and --trunc-cutoff apply to z pairs, not to --latents")
    if projected and (cfg.mix_prob > 0 or cfg.perturb_std > 0):
        raise PairsError("--mix-prob and --perturb-std apply to z pairs, not to --latents")
    if not projected and cfg.base is None:
        raise PairsError("z pairs need --base (the generator that renders the inputs)")
    if not projected and cfg.count is None:
        raise PairsError("z pairs need --count")
    if cfg.count is not None and cfg.count < 1:
        raise PairsError(f"--count must be at least 1, got {cfg.count}")

    device = pick_device(cfg.device)
    toon, toon_info = _load(cfg.toon, "toon", device)
    base, base_info = _load(cfg.base, "base", device) if cfg.base else (None, None)
    if base is not None:
        mine = (base.img_resolution, base.num_ws, base.w_dim)
        theirs = (toon.img_resolution, toon.num_ws, toon.w_dim)
        if mine != theirs:
            raise PairsError(
                f"--base and --toon differ in (resolution, num_ws, w_dim): {mine} vs {theirs}"
            )
        if cfg.noise == "random":
            a = [m.resolution for m in _noise_layers(base)]
            if a != [m.resolution for m in _noise_layers(toon)]:
                raise PairsError("--noise random needs the same noise layers in --base and --toon")
    psi = None if projected else (DEFAULT_TRUNCATION if cfg.trunc is None else cfg.trunc)
    if cfg.trunc_cutoff is not None and not 1 <= cfg.trunc_cutoff <= toon.num_ws:
        raise PairsError(f"--trunc-cutoff must be from 1 to {toon.num_ws}")

    ws_rows = photo_paths = photo_names = None
    latents_info = photos_info = None
    if projected:
        ws_rows, names, latents_info = _load_latents(cfg, toon)
        folder = Path(cfg.photos or "")
        photo_names = _match_photos(names, folder, len(ws_rows))
        count = cfg.count or len(ws_rows)
        if count > len(ws_rows):
            raise PairsError(f"--count {count} exceeds the {len(ws_rows)} latents")
        ws_rows, photo_names = ws_rows[:count], photo_names[:count]
        photo_paths = [str((folder / n).resolve()) for n in photo_names]
        digest = shards.config_sha256(
            [[n, file_sha256(p)] for n, p in zip(photo_names, photo_paths, strict=True)]
        )
        photos_info = {"folder": folder.resolve().name, "count": count, "sha256": digest}
    else:
        count = int(cfg.count or 0)
    batches = -(-count // cfg.batch)
    if cfg.seed + batches * cfg.batch > 2**32:
        raise PairsError(f"--seed {cfg.seed} + the padded count exceeds 2**32")
    shard_size, num_shards = _layout(cfg, count)
    resolution = cfg.size or toon.img_resolution
    if resolution < 1:
        raise PairsError(f"--size must be positive, got {resolution}")
    precision = cfg.precision
    if precision == "auto":
        precision = _existing_precision(Path(cfg.out)) or (
            "fp16" if device.type == "cuda" else "fp32"
        )

    settings = {
        "pair_recipe": PAIR_RECIPE,
        "latent_kind": "projected" if projected else "z",
        "count": count,
        "seed": cfg.seed,
        "truncation_psi": psi,
        "truncation_cutoff": cfg.trunc_cutoff,
        "noise_mode": cfg.noise,
        "resolution": resolution,
        "shard_size": shard_size,
        "batch": cfg.batch,
        "precision": precision,
        "mix_prob": cfg.mix_prob,
        "perturb_std": cfg.perturb_std,
        "png_compress_level": cfg.png_level,
        "base": base_info,
        "toon": toon_info,
        "latents": latents_info,
        "photos": photos_info,
    }
    manifest = {
        "format": shards.FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "resolution": resolution,
        "count": count,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "config": settings,
        "config_sha256": shards.config_sha256(settings),
        "teachers": {"base": base_info, "toon": toon_info},
    }
    return Job(cfg, manifest, device, toon, base, ws_rows, photo_paths, photo_names)


# ---------------------------------------------------------------------------------------------
# Rendering


def _noise_layers(G: Generator) -> list[SynthesisLayer]:
    return [m for m in G.synthesis.modules() if isinstance(m, SynthesisLayer) and m.use_noise]


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array -> device tensor; on CUDA through pinned memory without waiting for the
    stream (a pageable copy would wait for the batch still rendering)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


@contextmanager
def _pair_noise(models: Sequence[Generator], seeds: Sequence[int], device: torch.device):
    """Swap every noise buffer for per-pair maps ``[B, 1, res, res]`` drawn from
    ``RandomState([seed, 3])`` (same maps for all models); restores the buffers after."""
    layers = [_noise_layers(G) for G in models]
    resolutions = [m.resolution for m in layers[0]]
    maps = [np.empty([len(seeds), 1, r, r], dtype=np.float32) for r in resolutions]
    for i, s in enumerate(seeds):
        rs = np.random.RandomState([s, _NOISE_STREAM])
        for m, r in zip(maps, resolutions, strict=True):
            m[i, 0] = rs.randn(r, r)
    tensors = [_to_device(m, device) for m in maps]
    saved = [[m.noise_const for m in group] for group in layers]
    try:
        for group in layers:
            for m, t in zip(group, tensors, strict=True):
                m.noise_const = t
        yield
    finally:
        for group, old in zip(layers, saved, strict=True):
            for m, t in zip(group, old, strict=True):
                m.noise_const = t


class _Launched:
    """A batch whose renders may still be running on the device; :meth:`get` waits for it."""

    def __init__(self, j: int, ks: range, imgs: list[torch.Tensor], style_mix: list) -> None:
        self.j, self.ks, self.style_mix = j, ks, style_mix
        self.event = None
        if imgs[0].device.type == "cuda":  # copy out asynchronously; get() waits for this only
            self.host = [torch.empty(x.shape, dtype=x.dtype, pin_memory=True) for x in imgs]
            for h, x in zip(self.host, imgs, strict=True):
                h.copy_(x, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = [x.contiguous() for x in imgs]

    def get(self) -> RenderedBatch:
        if self.event is not None:
            self.event.synchronize()
        arrays = [h.numpy() for h in self.host]
        src = arrays[0] if len(arrays) == 2 else None
        return RenderedBatch(self.j, self.ks, src, arrays[-1], self.style_mix)


@torch.no_grad()
def launch_batch(job: Job, j: int) -> _Launched:
    """Start rendering batch ``j``: pairs ``[j*B, (j+1)*B)`` (padded past the count, see the
    module docstring), at the generator's resolution; on CUDA this returns before it is done."""
    s = job.settings
    B = s["batch"]
    ks = range(j * B, (j + 1) * B)
    seeds = [s["seed"] + k for k in ks]
    dev = job.device
    force_fp32 = s["precision"] == "fp32"
    style_mix: list[int | None] = [None] * B
    if s["latent_kind"] == "z":
        G = job.base
        assert G is not None
        z = _to_device(np.stack([seed_latent(x, G.z_dim) for x in seeds]), dev)
        kw = dict(truncation_psi=s["truncation_psi"], truncation_cutoff=s["truncation_cutoff"])
        ws = G.mapping(z, None, **kw)
        if s["mix_prob"] > 0:
            z2 = np.empty([B, G.z_dim], dtype=np.float32)
            first = np.full([B, 1], G.num_ws)  # first layer taken from z2 (num_ws: none)
            for i, x in enumerate(seeds):
                rs = np.random.RandomState([x, _MIX_STREAM])
                u = rs.rand()
                z2[i] = rs.randn(G.z_dim)
                cross = int(rs.randint(1, G.num_ws))
                if u < s["mix_prob"]:
                    style_mix[i] = first[i, 0] = cross
            ws2 = G.mapping(_to_device(z2, dev), None, **kw)
            mask = _to_device(np.arange(G.num_ws)[None, :] >= first, dev)
            ws = torch.where(mask[:, :, None], ws2, ws)
        if s["perturb_std"] > 0:
            eps = np.stack(
                [
                    np.random.RandomState([x, _PERTURB_STREAM]).randn(G.num_ws, G.w_dim)
                    for x in seeds
                ]
            ).astype(np.float32)
            ws = ws + s["perturb_std"] * _to_device(eps, dev)
        models = [G, job.toon]
    else:
        rows = job.ws_rows
        assert rows is not None
        w = np.zeros([B, *rows.shape[1:]], dtype=np.float32)
        valid = rows[ks.start : ks.stop]
        w[: len(valid)] = valid
        ws = _to_device(w, dev)
        models = [job.toon]

    noise_mode = s["noise_mode"]
    ctx = _pair_noise(models, seeds, dev) if noise_mode == "random" else _null()
    imgs = []
    with ctx:
        mode = "const" if noise_mode == "random" else noise_mode
        for G in models:
            img = G.synthesis(ws, noise_mode=mode, force_fp32=force_fp32)
            # teacher.sample.to_uint8 without its host copy
            imgs.append(
                (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            )
    return _Launched(j, ks, imgs, style_mix)


def render_batch(job: Job, j: int) -> RenderedBatch:
    """Render batch ``j`` (see :func:`launch_batch`) and wait for it."""
    return launch_batch(job, j).get()


def _batch_stream(job: Job, order: Sequence[int]) -> Iterator[RenderedBatch]:
    """Render batches ``order`` one ahead: batch ``j+1`` is launched before ``j`` is handed
    out, so the device renders while the host encodes and writes."""
    ahead: _Launched | None = None
    for j in order:
        nxt = launch_batch(job, j)
        if ahead is not None:
            yield ahead.get()
        ahead = nxt
    if ahead is not None:
        yield ahead.get()


@contextmanager
def _null():
    yield


def pair_meta(job: Job, k: int, style_mix: int | None) -> dict[str, Any]:
    """The ``json`` member of pair ``k``."""
    s = job.settings
    meta: dict[str, Any] = {
        "index": k,
        "seed": s["seed"] + k,
        "truncation": s["truncation_psi"],
        "noise_mode": s["noise_mode"],
        "latent_kind": s["latent_kind"],
        "teachers": {
            "base": s["base"]["sha256"] if s["base"] else None,
            "toon": s["toon"]["sha256"],
        },
    }
    if s["truncation_cutoff"] is not None:
        meta["truncation_cutoff"] = s["truncation_cutoff"]
    if job.photo_names is not None:
        meta["source"] = job.photo_names[k]
    if s["mix_prob"] > 0:
        meta["style_mix"] = style_mix
    if s["perturb_std"] > 0:
        meta["perturb_std"] = s["perturb_std"]
    return meta


def _batch_for(job: Job, j: int) -> RenderedBatch:
    if j not in job._cache:
        job._cache.clear()  # keep one: a batch may straddle two consecutive shards
        job._cache[j] = render_batch(job, j)
    return job._cache[j]


def render_pairs(
    job: Job, ks: Iterable[int]
) -> dict[int, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Pairs ``ks`` as ``{k: (src, dst, meta)}``, HWC uint8 at the output resolution, exactly
    as in the dataset (each rendered in its fixed batch; no PNG round trip: PNG is lossless)."""
    out = {}
    for k in sorted(set(ks)):
        if not 0 <= k < job.count:
            raise PairsError(f"pair {k} is outside [0, {job.count})")
        b = _batch_for(job, k // job.settings["batch"])
        i = k - b.ks.start
        R = job.resolution
        if b.src is not None:
            src = shards.resize_rgb(b.src[i], R)
        else:
            assert job.photo_paths is not None
            src = shards.load_photo(job.photo_paths[k], R)
        out[k] = (src, shards.resize_rgb(b.dst[i], R), pair_meta(job, k, b.style_mix[i]))
    return out


# ---------------------------------------------------------------------------------------------
# Which shards


def select_shards(
    num_shards: int,
    shard_index: Sequence[int] | None = None,
    task: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
    use_slurm: bool = True,
) -> tuple[list[int], str]:
    """The shards this process writes and why: ``shard_index``, else ``task`` (I, T), else a
    Slurm array task from ``env``, else all."""
    if shard_index is not None:
        bad = [i for i in shard_index if not 0 <= i < num_shards]
        if bad:
            raise PairsError(f"--shard-index {bad[0]} is outside [0, {num_shards})")
        return sorted(set(shard_index)), f"shards {_ranges(sorted(set(shard_index)))}"
    env = os.environ if env is None else env
    how = "--task"
    if task is None and use_slurm and env.get("SLURM_ARRAY_TASK_ID"):
        try:
            tid = int(env["SLURM_ARRAY_TASK_ID"])
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
            count = int(env.get("SLURM_ARRAY_TASK_COUNT") or 0) or (
                (int(env["SLURM_ARRAY_TASK_MAX"]) - lo) // step + 1
            )
        except (KeyError, ValueError):
            raise PairsError("cannot read the Slurm array task from the environment") from None
        task, how = ((tid - lo) // step, count), "Slurm array task"
    if task is None:
        return list(range(num_shards)), f"all {num_shards} shards"
    i, t = task
    if not (t >= 1 and 0 <= i < t):
        raise PairsError(f"task {i}/{t}: need 0 <= I < T")
    mine = list(range(i, num_shards, t))
    return mine, f"{how} {i}/{t}: shards {_ranges(mine) or 'none'}"


def _ranges(xs: Sequence[int]) -> str:
    parts: list[str] = []
    for x in xs:
        if parts and parts[-1][1] == x - 1:
            parts[-1][1] = x
        else:
            parts.append([x, x])  # type: ignore[arg-type]
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Running


class _InlineExecutor(Executor):
    """Runs each task at submit time (``--workers 0``)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            fut.set_exception(e)
        return fut


def _noop(x: int) -> int:
    return x


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def default_workers() -> int:
    """PNG encoding processes by default: the cores less one, from 1 to 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def encoder_pool(workers: int) -> Executor:
    """A started process pool for PNG encoding, or an inline executor for ``workers == 0``.

    Workers are forked where the platform can (as torch's DataLoader does: fast, and no
    ``if __name__ == "__main__"`` guard needed in callers' scripts); they only run numpy and
    Pillow, never torch. Elsewhere they are spawned.
    """
    if workers == 0:
        return _InlineExecutor()
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_worker_init)
    list(pool.map(_noop, range(workers)))  # start the workers now, not mid-job
    return pool


def _writer_info(job: Job, seconds: float) -> dict[str, Any]:
    dev = job.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    return {
        "device": f"{dev.type} ({name or platform.machine()})",
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "host": platform.node(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "zlib": features.version("zlib"),
        "zlib_ng": features.version("zlib_ng") if "zlib_ng" in features.features else None,
        "seconds": round(seconds, 3),
    }


def _batches_of(job: Job, index: int) -> range:
    r = shards.shard_range(index, job.count, job.shard_size)
    B = job.settings["batch"]
    return range(r.start // B, (r.stop - 1) // B + 1)


class _ShardSink:
    """Writes one shard in a thread of its own: takes ``(k, encode future, meta)`` in key
    order, waits for each encoding, appends it to the tar (file writes and hashing release the
    GIL, so the main thread keeps the device busy meanwhile)."""

    def __init__(self, out: Path, index: int, bar: Any, max_pending: int) -> None:
        self.writer = shards.ShardWriter(out, index)
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.bar = bar
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"shard-{index}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (item := self.queue.get()) is not None and not self.stop.is_set():
                k, fut, meta = item
                src_png, dst_png = fut.result()
                self.writer.add(
                    shards.pair_key(k), {"src.png": src_png, "dst.png": dst_png, "json": meta}
                )
                self.bar.update(1)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
            self.stop.set()

    def _offer(self, item: tuple[int, Future, bytes] | None) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def put(self, item: tuple[int, Future, bytes]) -> None:
        """Queue a sample (blocks while the queue is full); raises what stopped the thread."""
        if not self._offer(item):
            self.finish()

    def finish(self) -> tuple[str, int]:
        """Wait for the queued samples and commit; raises what went wrong in the thread."""
        self._offer(None)
        self.thread.join()
        if isinstance(self.error, BrokenProcessPool):
            raise PairsError("a PNG encoding worker died (out of memory?); rerun to resume")
        if self.error is not None:
            raise self.error
        if self.stop.is_set():
            raise PairsError(f"writing {self.writer.final.name} was stopped")
        return self.writer.commit()

    def abort(self) -> None:
        """Stop the thread, cancel what is queued and drop the temporary tar."""
        self.stop.set()
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        try:
            self.queue.put_nowait(None)  # wake the thread if it waits for an item
        except queue.Full:
            pass
        self.thread.join(timeout=60)
        self.writer.abort()


def _write_shard(
    job: Job, index: int, batches: Callable[[int], RenderedBatch], pool: Executor, bar: Any
) -> None:
    """Render, encode and write shard ``index``, then record it with its sidecar."""
    out = Path(job.config.out)
    r = shards.shard_range(index, job.count, job.shard_size)
    R, level = job.resolution, job.settings["png_compress_level"]
    t0 = time.perf_counter()
    workers = getattr(pool, "_max_workers", 1)
    sink = _ShardSink(out, index, bar, max_pending=max(2 * job.settings["batch"], 4 * workers))
    try:
        for j in _batches_of(job, index):
            b = batches(j)
            for k in b.ks:
                if k not in r:
                    continue
                i = k - b.ks.start
                src = b.src[i] if b.src is not None else job.photo_paths[k]  # type: ignore[index]
                fut = pool.submit(shards.encode_pair, src, b.dst[i], R, level)
                sink.put((k, fut, shards.canonical_json(pair_meta(job, k, b.style_mix[i]))))
        sha, size = sink.finish()
    except BaseException:
        sink.abort()
        raise
    record = {
        "format": shards.SIDECAR_FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "config_sha256": job.manifest["config_sha256"],
        "index": index,
        "name": shards.shard_name(index),
        "first": r.start,
        "count": len(r),
        "sha256": sha,
        "bytes": size,
        "written": _writer_info(job, time.perf_counter() - t0),
    }
    shards.write_sidecar(out, record)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="pair",
        desc="pairs",
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
        file=sys.stderr,
    )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def generate(
    cfg: GenerateConfig | Job,
    progress: bool = True,
    log: Callable[[str], None] | None = _stderr,
) -> GenerateResult:
    """Run (or resume) a pair generation job; see the module docstring.

    Creates or checks ``manifest.json`` (a changed config or layout is refused), skips shards
    whose sidecar and sha256 check out, writes the others (temporary name, then rename, then
    sidecar), and rebuilds the manifest from the sidecars. Interrupting it keeps every finished
    shard; the same call again completes the set.
    """
    t_setup = time.perf_counter()
    log = log or (lambda msg: None)
    job = cfg if isinstance(cfg, Job) else prepare_job(cfg)
    cfg = job.config
    out = Path(cfg.out)
    man = shards.init_manifest(out, job.manifest)
    selected, how = select_shards(
        job.num_shards, cfg.shard_index, cfg.task, use_slurm=cfg.use_slurm
    )
    for i in selected:
        shards.remove_stale_temps(out, i)
    with ThreadPoolExecutor(max(1, min(8, len(selected)))) as ex:
        states = list(ex.map(lambda i: shards.shard_problem(out, man, i), selected))
    todo, skipped = [], []
    for i, (status, detail) in zip(selected, states, strict=True):
        if status == "ok":
            skipped.append(i)
            continue
        todo.append(i)
        if status not in ("missing",):
            log(f"{shards.shard_name(i)}: {status} ({detail}); writing it again")
    total = sum(len(shards.shard_range(i, job.count, job.shard_size)) for i in todo)
    log(
        f"{out}: {job.count} pairs in {job.num_shards} shards; this process: {how}; "
        f"{len(skipped)} finished, {len(todo)} to write ({total} pairs) on {job.device}"
    )
    workers = default_workers() if cfg.workers is None else cfg.workers
    written: list[int] = []
    seconds = 0.0
    setup_seconds = time.perf_counter() - t_setup
    if todo:
        order = [j for i in todo for j in _batches_of(job, i)]
        order = [j for n, j in enumerate(order) if n == 0 or order[n - 1] != j]
        stream = _batch_stream(job, order)
        held: list[RenderedBatch] = []

        def batches(j: int) -> RenderedBatch:  # batches in stream order; one may serve 2 shards
            if not held or held[0].index != j:
                held[:] = [next(stream)]
            return held[0]

        pool = encoder_pool(workers)
        bar = _progress(total, progress)
        threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        try:
            for i in todo:
                _write_shard(job, i, batches, pool, bar)
                written.append(i)
            seconds = time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
            shards.rebuild_manifest(out)
    man = shards.rebuild_manifest(out) if not todo else shards.read_manifest(out)
    res = GenerateResult(
        out=str(out),
        selected=selected,
        skipped=skipped,
        written=written,
        pairs_written=total if todo else 0,
        seconds=seconds,
        setup_seconds=setup_seconds,
        finished_shards=len(man["shards"]),
        num_shards=job.num_shards,
        complete=bool(man["complete"]),
    )
    rate = f", {res.pairs_per_s:.1f} pairs/s" if res.pairs_written else ""
    log(
        f"wrote {len(written)} shards ({res.pairs_written} pairs) in {seconds:.1f} s{rate}; "
        f"dataset: {res.finished_shards}/{res.num_shards} shards finished"
        + (" (complete)" if res.complete else "")
    )
    return res


def describe(job: Job) -> dict[str, Any]:
    """The resolved job for ``--dry-run``: the static manifest, the shard selection and how it
    runs."""
    cfg = job.config
    selected, how = select_shards(
        job.num_shards, cfg.shard_index, cfg.task, use_slurm=cfg.use_slurm
    )
    return {
        "manifest": job.manifest,
        "out": cfg.out,
        "device": str(job.device),
        "workers": default_workers() if cfg.workers is None else cfg.workers,
        "shards": how,
        "request": asdict(cfg),
    }
