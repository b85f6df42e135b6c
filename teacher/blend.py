"""Blending two generators by resolution (layer swapping).

Pinkney & Adler 2020, "Resolution Dependent GAN Interpolation for Controllable Image Synthesis
Between Domains": the coarse synthesis blocks of one generator and the fine blocks of another,
both of the same architecture (typically a base and a model fine-tuned from it), make a new
generator. ``low`` gives the coarse structure (head shape, proportions, pose) and ``high`` the
fine rendering (texture, colour, lighting, line work); a higher R takes more from ``low``. Both
directions are useful. ``low`` = base, ``high`` = fine-tuned keeps the base's structure (the
face's identity) with the game rendering: the README recipe and the demo use it, with
``mapping_from="low"`` (the base's mapping). ``low`` = fine-tuned, ``high`` = base gives the
game's structure with realistic rendering: the published toonify way. ``toon-teacher
blend-search`` (:mod:`teacher.blend_search`) measures both directions at every level.

Name -> resolution map (:func:`block_resolution_of`). Every tensor named ``synthesis.bK.*``
belongs to resolution K, with no exceptions:

- ``synthesis.b4.const``, ``synthesis.b4.conv1.*``, ``synthesis.b4.torgb.*`` and
  ``synthesis.b4.resample_filter`` belong to 4.
- For K > 4, ``synthesis.bK.conv0.*`` belongs to K although it reads the K/2 x K/2 features of
  block K/2: it is the 2x upsampling conv *into* K (its ``noise_const`` is K x K). So do
  ``bK.conv1``, ``bK.torgb`` (the RGB output added at K), ``bK.skip`` (resnet: the upsampling
  shortcut into K) and ``bK.resample_filter``.
- Buffers follow their layer: ``synthesis.bK.conv0.noise_const`` belongs to K like the conv.

A known pitfall of published blending code is to count layers (conv0 of block K taken as part of
K/2, or torgb of block K as part of 2K), which puts the switch one block off; here the block
name alone decides. ``mapping.*`` (including ``mapping.w_avg``) has no resolution: it comes whole
from the parent named by ``mapping_from``.

Hard switch (``width == 0``): block K comes from ``low`` iff K <= R, so R equal to the output
resolution gives ``low`` exactly (its synthesis; the mapping is ``mapping_from``'s) and R = 0 gives
``high`` exactly. Smooth switch (``width > 0``): every tensor of block K is
``(1 - a) * low + a * high`` with the high share
``a = sigmoid((log2 K - log2 R - 0.5) / width)`` (R = 0: a = 1), which tends to the hard switch as
``width -> 0``. A tensor equal in both parents (FIR filters; ``noise_const`` of a model fine-tuned
from the other) is copied unchanged; unequal ``noise_const`` buffers are mixed like any tensor.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from common.files import file_sha256
from teacher.io import load_generator, save_network
from teacher.networks import Generator
from teacher.sample import seed_latent, to_uint8

MAPPING_CHOICES = ("low", "high")
_SYNTHESIS_BLOCK = re.compile(r"synthesis\.b(\d+)\.")


def block_resolution_of(param_name: str) -> int | None:
    """The resolution a generator tensor belongs to, from its state-dict name.

    ``synthesis.bK.<anything>`` -> K (``bK.conv0``, the upsampling conv into K, included; see the
    module docstring); ``mapping.<anything>`` -> None. Any other name is a ValueError.
    """
    m = _SYNTHESIS_BLOCK.match(param_name)
    if m:
        return int(m.group(1))
    if param_name.startswith("mapping."):
        return None
    raise ValueError(f"{param_name!r} is not a synthesis block or mapping tensor of a generator")


def check_swap_res(swap_res: int, img_resolution: int) -> None:
    """Raise ValueError unless ``swap_res`` is 0 or a power of two in [4, img_resolution]."""
    ok = isinstance(swap_res, int) and (
        swap_res == 0 or (4 <= swap_res <= img_resolution and swap_res & (swap_res - 1) == 0)
    )
    if not ok:
        raise ValueError(
            f"swap resolution must be 0 or a power of two from 4 to {img_resolution} "
            f"(the output resolution), got {swap_res}"
        )


def high_share(block_res: int, swap_res: int, width: float = 0.0) -> float:
    """The ``high`` parent's weight ``a`` for block ``block_res`` (0 = all low, 1 = all high).

    ``width == 0``: 1 if ``block_res > swap_res`` else 0. ``width > 0``:
    ``sigmoid((log2 block_res - log2 swap_res - 0.5) / width)``, with ``swap_res == 0`` read as
    log2 0 = -inf (a = 1). Exactly 0 or 1 once the sigmoid saturates in float64.
    """
    if swap_res == 0:
        return 1.0
    if width == 0:
        return 1.0 if block_res > swap_res else 0.0
    x = (math.log2(block_res) - math.log2(swap_res) - 0.5) / width
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def arch_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Fields where two arch dicts differ, as ``"name (low X, high Y)"`` strings."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            out.append(f"{key} (low {va!r}, high {vb!r})")
    return out


def check_same_arch(low: Generator, high: Generator) -> None:
    """Raise ValueError, listing the differing fields, unless both ``arch`` dicts are equal."""
    diff = arch_differences(low.arch, high.arch)
    if diff:
        raise ValueError(
            "cannot blend generators of different architectures (blend a model with one "
            f"fine-tuned from it); differing fields: {'; '.join(diff)}"
        )


def blended_state(
    low: dict[str, torch.Tensor],
    high: dict[str, torch.Tensor],
    swap_res: int,
    width: float = 0.0,
    mapping_from: str = "high",
) -> dict[str, torch.Tensor]:
    """Blend two generator state dicts with the same names and shapes (see the module docstring).

    Selected tensors are the parents' own tensors (not copies); mixed ones are new.
    """
    if mapping_from not in MAPPING_CHOICES:
        raise ValueError(f"mapping_from must be 'low' or 'high', got {mapping_from!r}")
    if set(low) != set(high):
        raise ValueError("low and high state dicts hold different tensor names")
    out: dict[str, torch.Tensor] = {}
    for name, lo in low.items():
        hi = high[name]
        if lo.shape != hi.shape:
            raise ValueError(f"{name}: low shape {tuple(lo.shape)} != high {tuple(hi.shape)}")
        res = block_resolution_of(name)
        if res is None:
            out[name] = lo if mapping_from == "low" else hi
            continue
        a = high_share(res, swap_res, width)
        if a == 0.0 or torch.equal(lo, hi):
            out[name] = lo
        elif a == 1.0:
            out[name] = hi
        else:
            out[name] = lo * (1.0 - a) + hi * a
    return out


def blend_generators(
    low: Generator,
    high: Generator,
    swap_res: int,
    width: float = 0.0,
    mapping_from: str = "high",
) -> Generator:
    """Layer swapping: synthesis blocks ``bK`` with K <= ``swap_res`` from ``low``, the rest from
    ``high`` (smoothly with ``width > 0``), the mapping network from ``mapping_from``.

    Args:
        low: generator for the coarse blocks (recipe and demo: the base; published toonify:
            the fine-tuned model).
        high: generator for the fine blocks (recipe and demo: the fine-tuned model; published
            toonify: the base).
        swap_res: R, 0 or a power of two from 4 to the output resolution; R = resolution gives
            ``low``'s synthesis exactly, R = 0 gives ``high``'s exactly.
        width: 0 (default) for the hard switch, else the sigmoid width in octaves.
        mapping_from: ``"high"`` (default) or ``"low"``: whose mapping network and ``w_avg``
            the blend keeps (the recipe and demo: ``"low"``, the base's).

    Returns a new generator in eval mode on the parents' device; the parents are not changed.
    Both parents need identical ``arch`` (a ValueError lists the differing fields) and the same
    device.
    """
    check_same_arch(low, high)
    check_swap_res(swap_res, low.img_resolution)
    if not (math.isfinite(width) and width >= 0):
        raise ValueError(f"smooth width must be >= 0, got {width}")
    lo_state, hi_state = low.state_dict(), high.state_dict()
    devices = {t.device for t in lo_state.values()} | {t.device for t in hi_state.values()}
    if len(devices) != 1:
        raise ValueError(f"low and high generators must be on one device, found {devices}")
    with torch.no_grad():
        state = blended_state(lo_state, hi_state, swap_res, width, mapping_from)
    # Constructing draws random initial weights; keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        G = Generator(**low.arch)
    G.load_state_dict(state, strict=True)
    G.source = {}
    return G.to(next(iter(devices))).eval()


def blend_source(
    low_path: str | os.PathLike,
    high_path: str | os.PathLike,
    swap_res: int,
    width: float,
    mapping_from: str,
) -> dict[str, Any]:
    """The ``source`` metadata of a blended model file: both parents (file name and sha256)
    and the settings."""
    return {
        "blend": {
            "low": {"file": Path(low_path).name, "sha256": file_sha256(low_path)},
            "high": {"file": Path(high_path).name, "sha256": file_sha256(high_path)},
            "swap_res": swap_res,
            "smooth_width": width,
            "mapping_from": mapping_from,
        }
    }


def blend_files(
    low_path: str | os.PathLike,
    high_path: str | os.PathLike,
    out: str | os.PathLike,
    swap_res: int,
    width: float = 0.0,
    mapping_from: str = "high",
) -> Path:
    """Load two generator files (any supported format), blend them, and write ``out``
    (safetensors, atomically) with the parents and settings in its ``toon`` metadata."""
    low = load_generator(low_path)
    high = load_generator(high_path)
    G = blend_generators(low, high, swap_res, width=width, mapping_from=mapping_from)
    source = blend_source(low_path, high_path, swap_res, width, mapping_from)
    return save_network(G, out, source=source)


# ---------------------------------------------------------------------------------------------
# Grid over swap levels


def parse_levels(text: str) -> list[int]:
    """Parse ``"4,8,16"`` into ``[4, 8, 16]``."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"bad swap levels {text!r}: use numbers like 4,8,16,32") from None
    if not levels:
        raise ValueError("no swap levels given")
    return levels


def default_levels(resolution: int) -> list[int]:
    """Every swap level strictly between the parents: 4, 8, ..., ``resolution // 2``."""
    return [2**k for k in range(2, int(math.log2(resolution)))]


def grid_header_height(resolution: int) -> int:
    """Height in pixels of the label row above a blend grid: ``max(16, resolution // 8)``."""
    return max(16, resolution // 8)


def draw_header(labels: Sequence[str], cell: int, height: int, channels: int) -> np.ndarray:
    """A white ``[height, len(labels) * cell, channels]`` uint8 strip with each label centred
    over its column, in Pillow's default font (shrunk until it fits the column)."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"grids need 1 or 3 image channels, got {channels}")
    strip = Image.new(mode, (len(labels) * cell, height), color=255 if mode == "L" else "white")
    draw = ImageDraw.Draw(strip)
    black = 0 if mode == "L" else "black"
    for i, label in enumerate(labels):
        size = max(6, height * 5 // 8)
        font = ImageFont.load_default(size=size)
        while size > 6 and draw.textlength(label, font=font) > cell - 2:
            size -= 1
            font = ImageFont.load_default(size=size)
        draw.text((i * cell + cell / 2, height / 2), label, fill=black, font=font, anchor="mm")
    arr = np.asarray(strip, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


@torch.no_grad()
def blend_grid(
    low: Generator,
    high: Generator,
    seeds: Sequence[int],
    levels: Sequence[int] | None = None,
    truncation_psi: float = 1.0,
    width: float = 0.0,
    mapping_from: str = "high",
    class_idx: int | None = None,
    batch_size: int = 8,
    force_fp32: bool | None = None,
) -> np.ndarray:
    """Render seeds through the high parent, a blend per swap level, and the low parent.

    Layout (HWC uint8, height x width, cell = the output resolution, header =
    :func:`grid_header_height`): ``(header + len(seeds) * cell) x ((len(levels) + 2) * cell)``.
    The top row holds the labels ``high``, ``R=<level>``..., ``low``; below it one row per seed,
    columns in the same order. ``levels`` defaults to :func:`default_levels`.
    Every column renders the same ws: z from :func:`teacher.sample.seed_latent`, mapped by
    ``mapping_from``'s mapping with ``truncation_psi``; noise mode ``const``. ``force_fp32``
    defaults to True on CPU. Both parents must be on one device.
    """
    if mapping_from not in MAPPING_CHOICES:
        raise ValueError(f"mapping_from must be 'low' or 'high', got {mapping_from!r}")
    check_same_arch(low, high)
    if levels is None:
        levels = default_levels(high.img_resolution)
    for level in levels:
        check_swap_res(level, high.img_resolution)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds given")
    if high.c_dim > 0 and class_idx is None:
        raise ValueError(f"these generators are conditional ({high.c_dim} classes): pass a class")
    if class_idx is not None and not 0 <= class_idx < max(high.c_dim, 1):
        raise ValueError(f"class index {class_idx} out of range for c_dim={high.c_dim}")
    device = next(high.parameters()).device
    if force_fp32 is None:
        force_fp32 = device.type != "cuda"

    mapper = low if mapping_from == "low" else high
    z = torch.from_numpy(np.stack([seed_latent(s, mapper.z_dim) for s in seeds])).to(device)
    c = torch.zeros([len(seeds), mapper.c_dim], device=device)
    if class_idx is not None and mapper.c_dim > 0:
        c[:, class_idx] = 1
    ws = mapper.mapping(z, c, truncation_psi=truncation_psi)

    def render(G: Generator) -> np.ndarray:
        parts = [
            to_uint8(G.synthesis(ws[i : i + batch_size], noise_mode="const", force_fp32=force_fp32))
            for i in range(0, len(seeds), batch_size)
        ]
        return np.concatenate(parts)  # [N, H, W, C]

    labels = ["high"] + [f"R={level}" for level in levels] + ["low"]
    columns = [render(high)]
    for level in levels:
        columns.append(render(blend_generators(low, high, level, width, mapping_from)))
    columns.append(render(low))

    cell = high.img_resolution
    body = np.concatenate([np.concatenate(list(col), axis=0) for col in columns], axis=1)
    header = draw_header(labels, cell, grid_header_height(cell), high.img_channels)
    return np.concatenate([header, body], axis=0)
