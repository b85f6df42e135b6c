"""Sampling images from a teacher generator (seeds -> PNGs and a grid)."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import torch

from teacher.networks import Generator


def parse_seeds(text: str) -> list[int]:
    """Parse ``"0-3,7,10-11"`` into ``[0, 1, 2, 3, 7, 10, 11]`` (ranges are inclusive)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed list item {part!r}: use numbers and ranges like 0-15,20")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: end before start")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def seed_latent(seed: int, z_dim: int) -> np.ndarray:
    """The z of a seed: ``RandomState(seed).randn(z_dim)`` (the convention of StyleGAN tools)."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed {seed} out of range [0, 2**32)")
    return np.random.RandomState(seed).randn(z_dim).astype(np.float32)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` images in [-1, 1] -> ``[N, H, W, C]`` uint8 (value * 127.5 + 128)."""
    x = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def sample_images(
    G: Generator,
    seeds: Iterable[int],
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "const",
    class_idx: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    force_fp32: bool | None = None,
) -> Iterable[tuple[int, np.ndarray]]:
    """Yield ``(seed, HWC uint8 image)`` for each seed, rendering in batches on ``device``.

    ``force_fp32`` defaults to True on CPU (float16 is slow there) and False on CUDA.
    """
    device = torch.device(device)
    if force_fp32 is None:
        force_fp32 = device.type != "cuda"
    if G.c_dim > 0 and class_idx is None:
        raise ValueError(f"this generator is conditional ({G.c_dim} classes): pass a class index")
    if class_idx is not None and not 0 <= class_idx < max(G.c_dim, 1):
        raise ValueError(f"class index {class_idx} out of range for c_dim={G.c_dim}")
    seeds = list(seeds)
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        z = torch.from_numpy(np.stack([seed_latent(s, G.z_dim) for s in chunk])).to(device)
        c = torch.zeros([len(chunk), G.c_dim], device=device)
        if G.c_dim > 0:
            c[:, class_idx] = 1
        if noise_mode == "random":
            torch.manual_seed(chunk[0])
        ws = G.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        img = G.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)
        yield from zip(chunk, to_uint8(img), strict=True)
