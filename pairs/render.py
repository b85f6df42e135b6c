"""Rendering pairs on the device: the rules that make pair k a function of (config, k) alone.

Holds the render recipe (below), the batch renderer that keeps the device busy while the host
encodes (:func:`launch_batch`, :func:`batch_stream`), each pair's ``json`` member
(:func:`pair_meta`) and :func:`render_pairs` (any pairs, exactly as in the dataset). The job
these read (the loaded teachers and the settings) comes from :func:`pairs.job.prepare_job`.

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
- *encoded pairs* (``--encoder FILE --photos DIR``): photo k is the k-th image of the folder in
  sorted order; ``ws`` = the encoder's code of it (Lanczos-resized to the encoder's resolution;
  a feedback encoder runs its passes with ``--base`` rendering the codes between them),
  computed in render batch order like everything else; ``src`` and ``dst`` as for projected.
- *delta targets* (``--target delta``, real-photo pairs only): ``dst`` = the photo (Lanczos-resized
  to the generator's resolution) plus ``toon.synthesis(ws) - base.synthesis(ws)`` in [-1, 1]
  units, then converted like a render: the teacher's change of the code applied to the photo
  itself, so the target keeps the photo's identity and detail where the code misses them.
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

"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pairs.photos import load_photo, resize_rgb
from pairs.shards import PairsError
from teacher.networks import Generator, SynthesisLayer
from teacher.sample import seed_latent

if TYPE_CHECKING:
    from pairs.job import Job

_MIX_STREAM, _PERTURB_STREAM, _NOISE_STREAM = 1, 2, 3


@dataclass
class RenderedBatch:
    """Render batch ``index``: pairs ``ks``, uint8 ``[B, H, W, 3]`` at the generator's size."""

    index: int
    ks: range
    src: np.ndarray | None  # None for projected pairs (the photos are the inputs)
    dst: np.ndarray
    style_mix: list[int | None]


def noise_layers(G: Generator) -> list[SynthesisLayer]:
    """The synthesis layers of ``G`` that take noise, in block order."""
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
    layers = [noise_layers(G) for G in models]
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


def _batch_photos(job: Job, ks: range, res: int) -> np.ndarray:
    """The photos of pairs ``ks`` at ``res`` px, uint8 ``[len(ks), res, res, 3]``; rows past the
    count (padding) are black."""
    assert job.photo_paths is not None
    photos = np.zeros([len(ks), res, res, 3], dtype=np.uint8)
    for i, k in enumerate(range(ks.start, min(ks.stop, job.count))):
        photos[i] = load_photo(job.photo_paths[k], res)
    return photos


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
    photos: np.ndarray | None = None  # real-photo pairs' inputs at some resolution, once read
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
    elif s["latent_kind"] == "encoded":
        E = job.encoder
        assert E is not None and job.photo_paths is not None
        photos = _batch_photos(job, ks, E.img_resolution)
        x = _to_device(photos, dev).permute(0, 3, 1, 2).float() / 127.5 - 1
        ws = E.invert(x, job.base)
        models = [job.toon]
    else:
        rows = job.ws_rows
        assert rows is not None
        w = np.zeros([B, *rows.shape[1:]], dtype=np.float32)
        valid = rows[ks.start : ks.stop]
        w[: len(valid)] = valid
        ws = _to_device(w, dev)
        models = [job.toon]
    delta = s.get("target") == "delta"
    if delta:  # photo + toon(ws) - base(ws), photos at the generator's resolution
        assert job.base is not None
        R = job.toon.img_resolution
        if photos is None or photos.shape[1] != R:  # encoded pairs read them above
            photos = _batch_photos(job, ks, R)
        models = [job.base, job.toon]

    noise_mode = s["noise_mode"]
    ctx = _pair_noise(models, seeds, dev) if noise_mode == "random" else nullcontext()
    with ctx:
        mode = "const" if noise_mode == "random" else noise_mode
        renders = [G.synthesis(ws, noise_mode=mode, force_fp32=force_fp32).float() for G in models]
    if delta:
        x = _to_device(photos, dev).permute(0, 3, 1, 2).float() / 127.5 - 1
        renders = [x + (renders[1] - renders[0])]
    # teacher.sample.to_uint8 without its host copy (a zero change gives the photo back exactly)
    imgs = [(x * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1) for x in renders]
    return _Launched(j, ks, imgs, style_mix)


def render_batch(job: Job, j: int) -> RenderedBatch:
    """Render batch ``j`` (see :func:`launch_batch`) and wait for it."""
    return launch_batch(job, j).get()


def batch_stream(job: Job, order: Sequence[int]) -> Iterator[RenderedBatch]:
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


def pair_meta(job: Job, k: int, style_mix: int | None) -> dict[str, Any]:
    """The ``json`` member of pair ``k``."""
    s = job.settings
    meta: dict[str, Any] = {
        "index": k,
        "seed": s["seed"] + k,
        # The one place the on-disk name differs: format 1's sample JSON says "truncation".
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
            src = resize_rgb(b.src[i], R)
        else:
            assert job.photo_paths is not None
            src = load_photo(job.photo_paths[k], R)
        out[k] = (src, resize_rgb(b.dst[i], R), pair_meta(job, k, b.style_mix[i]))
    return out
