"""Pair generation with ``--precision fp16`` (the generators' float16 blocks), on CPU, against
the same job in fp32.

The teachers are built here: random ``tiny`` generators at 32 px whose two highest
resolutions run in float16 (``num_fp16_res=2``), so fp16 changes the arithmetic of the 16 and
32 px blocks. Tolerance: float16 keeps 11 significant bits, so a render in [-1, 1] moves by
about 1e-3 (a fraction of a uint8 level) per block; measured here: PSNR 60-62 dB, at most 2
levels. We require 40 dB and at most 8 levels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pairs.generate import generate
from pairs.job import GenerateConfig
from pairs.shards import iter_pairs, read_manifest
from tests.conftest import randomize_, tiny_generator


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[str, str]:
    from teacher.blend import blend_generators
    from teacher.io import save_network

    folder = tmp_path_factory.mktemp("fp16_teachers")
    torch.manual_seed(3)
    base = randomize_(tiny_generator(img_resolution=32, num_fp16_res=2), seed=3)
    other = randomize_(tiny_generator(img_resolution=32, num_fp16_res=2), seed=4)
    toon = blend_generators(other, base, swap_res=8)
    return (
        str(save_network(base, folder / "base.safetensors")),
        str(save_network(toon, folder / "toon.safetensors")),
    )


def _generate(teachers: tuple[str, str], out: Path, precision: str, device: str = "cpu") -> Path:
    cfg = GenerateConfig(
        out=str(out),
        base=teachers[0],
        toon=teachers[1],
        count=12,
        seed=7,
        truncation_psi=0.7,
        noise="const",
        shard_size=6,
        batch=4,
        device=device,
        workers=0,
        threads=1,
        precision=precision,
    )
    assert generate(cfg, progress=False, log=None).complete
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_fp16_pairs_match_fp32_pairs_within_tolerance(teachers, tmp_path, device):
    """On CUDA this also runs the pinned host copies and the ``cuda.Event`` that hands a
    rendered batch over while the next one renders; the reference is always CPU fp32."""
    fp32 = _generate(teachers, tmp_path / "fp32", "fp32")
    fp16 = _generate(teachers, tmp_path / "fp16", "fp16", device)
    assert read_manifest(fp16)["config"]["precision"] == "fp16"
    assert read_manifest(fp32)["config"]["precision"] == "fp32"
    a = {key: (src, dst) for key, src, dst, _ in iter_pairs(fp32)}
    b = {key: (src, dst) for key, src, dst, _ in iter_pairs(fp16)}
    assert a.keys() == b.keys() and len(a) == 12
    for i in (0, 1):  # src (base), dst (blend)
        x = np.stack([a[k][i] for k in sorted(a)]).astype(int)
        y = np.stack([b[k][i] for k in sorted(b)]).astype(int)
        assert not np.array_equal(x, y)  # the float16 blocks did run
        psnr = _psnr(x, y)
        print(f"\n{'src' if i == 0 else 'dst'}: fp16 vs fp32 {psnr:.1f} dB, max {abs(x - y).max()}")
        assert psnr >= 40 and np.abs(x - y).max() <= 8


def test_fp16_channels_last_renders_like_fp32():
    """``fp16_channels_last`` (channels-last float16 blocks, as NVIDIA's training uses): the
    same image as the fp32 render within float16 rounding (2e-2 on images whose largest values
    here reach about 5.5; measured 6e-3), on CPU."""
    torch.manual_seed(0)
    plain = randomize_(tiny_generator(img_resolution=32, num_fp16_res=2))
    last = tiny_generator(img_resolution=32, num_fp16_res=2, fp16_channels_last=True)
    last.load_state_dict(plain.state_dict())
    assert [b.channels_last for b in last.synthesis.children()] == [False, False, True, True]
    with torch.no_grad():
        ws = plain.mapping(torch.randn(4, plain.z_dim), None)
        ref = plain.synthesis(ws, noise_mode="const", force_fp32=True)
        got = last.synthesis(ws, noise_mode="const", force_fp32=False)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert 0 < (got - ref).abs().max() < 2e-2
