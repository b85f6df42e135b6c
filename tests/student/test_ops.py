"""Student ops: aligned augmentation, input-only jitter, image metrics against references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from student.config import make_config
from student.ops import (
    AUG_FIELDS,
    AUG_IDENTITY,
    augment_pair,
    draw_augment_params,
    float_to_uint8,
    l1_uint8,
    photometric,
    psnr_uint8,
    ssim_uint8,
    uint8_to_float,
)


def _params(n: int, **fields: float) -> torch.Tensor:
    p = torch.as_tensor(np.tile(AUG_IDENTITY, (n, 1)))
    for name, value in fields.items():
        p[:, AUG_FIELDS.index(name)] = value
    return p


def test_uint8_conversion_round_trips() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(1, 3, 1, 1)
    assert torch.equal(float_to_uint8(uint8_to_float(x)), x)
    assert float(uint8_to_float(x).min()) == -1 and float(uint8_to_float(x).max()) == 1


def test_identity_parameters_change_nothing() -> None:
    src, dst = torch.rand([2, 3, 16, 16]) * 2 - 1, torch.rand([2, 3, 16, 16]) * 2 - 1
    a, b = augment_pair(src, dst, _params(2))
    assert torch.equal(a, src) and torch.equal(b, dst)


def test_flip_is_exact_and_shared() -> None:
    src, dst = torch.rand([2, 3, 8, 8]), torch.rand([2, 3, 8, 8])
    p = _params(2)
    p[1, 0] = 1  # flip only the second pair
    a, b = augment_pair(src, dst, p)
    assert torch.equal(a[0], src[0]) and torch.equal(b[0], dst[0])
    assert torch.equal(a[1], src[1].flip(-1)) and torch.equal(b[1], dst[1].flip(-1))


def test_geometric_augmentation_keeps_source_and_target_aligned() -> None:
    """Equal source and target stay equal after flip + rotation + zoom + shift (the same warp),
    and the warp really moves pixels."""
    img = torch.rand([3, 3, 32, 32]) * 2 - 1
    p = _params(3, angle=4.0, zoom=1.07, tx=0.03, ty=-0.02)
    p[0, 0] = 1
    a, b = augment_pair(img, img.clone(), p)
    assert torch.equal(a, b)
    assert float((a - img).abs().mean()) > 0.05
    # A pure 90-degree rotation moves a marked pixel where expected (x right, y down).
    marker = torch.zeros([1, 1, 9, 9])
    marker[0, 0, 4, 8] = 1  # right edge, middle row
    r = augment_pair(marker, marker, _params(1, angle=90.0))[1]
    assert r[0, 0].argmax() // 9 in (0, 8) and r[0, 0].argmax() % 9 == 4


def test_photometric_jitter_touches_the_source_only() -> None:
    src = torch.rand([2, 3, 16, 16]) * 2 - 1
    dst = torch.rand([2, 3, 16, 16]) * 2 - 1
    p = _params(2, gain=1.2, contrast=0.8, saturation=1.3, wb_r=1.05, gamma=0.9)
    a, b = augment_pair(src, dst, p)
    assert torch.equal(b, dst)
    assert not torch.equal(a, src) and float(a.min()) >= -1 and float(a.max()) <= 1
    # gain alone on a mid-grey image scales its [0, 1] value
    grey = torch.zeros([1, 3, 4, 4])
    out = photometric(grey, _params(1, gain=1.2))
    assert torch.allclose(out, torch.full_like(grey, 0.2), atol=1e-6)


def test_augment_params_are_seeded_and_follow_the_config() -> None:
    cfg = make_config("paper256", {})
    a = draw_augment_params(np.random.default_rng([0, 1, 2]), cfg)
    b = draw_augment_params(np.random.default_rng([0, 1, 2]), cfg)
    assert np.array_equal(a, b) and a.shape == (len(AUG_FIELDS),)
    off = cfg.replace(xflip=False, affine_prob=0.0, jitter_prob=0.0)
    for seed in range(20):
        assert np.array_equal(draw_augment_params(np.random.default_rng(seed), off), AUG_IDENTITY)
    draws = np.stack([draw_augment_params(np.random.default_rng(s), cfg) for s in range(400)])
    assert 0.4 < draws[:, 0].mean() < 0.6  # x-flip half the time
    assert np.abs(draws[:, 1]).max() <= cfg.rotate
    assert draws[:, 2].min() >= 1 / (1 + cfg.zoom) - 1e-6 and draws[:, 2].max() <= 1 + cfg.zoom


def test_ssim_and_psnr_match_references() -> None:
    """SSIM against scikit-image's structural_similarity with Wang et al.'s settings; PSNR
    against its definition."""
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, [2, 3, 40, 36], dtype=np.uint8)
    noise = rng.integers(-40, 41, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    ours = ssim_uint8(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for i in range(2):
        ref = metrics.structural_similarity(
            a[i].transpose(1, 2, 0),
            b[i].transpose(1, 2, 0),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        assert ours[i] == pytest.approx(ref, abs=1e-6)
    mse = ((a.astype(float) - b) ** 2).reshape(2, -1).mean(1)
    assert psnr_uint8(torch.from_numpy(a), torch.from_numpy(b)).numpy() == pytest.approx(
        10 * np.log10(255**2 / mse)
    )
    assert float(ssim_uint8(torch.from_numpy(a), torch.from_numpy(a))[0]) == pytest.approx(1.0)
    assert math.isinf(float(psnr_uint8(torch.from_numpy(a), torch.from_numpy(a))[0]))
    l1 = l1_uint8(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert l1 == pytest.approx(np.abs(a.astype(float) - b).reshape(2, -1).mean(1) / 127.5)
