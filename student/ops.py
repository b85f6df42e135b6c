"""Pure tensor functions of the student: pair augmentation, image conversion and image metrics.

Augmentation is split in two: the *parameters* of each pair's augmentation are drawn in the
data pipeline from a seeded generator (:func:`draw_augment_params`, numpy, so item k of a
stream always gets the same ones), and applied to a batch on the training device
(:func:`augment_pair`). The parameter vector has the fields :data:`AUG_FIELDS`;
:data:`AUG_IDENTITY` changes nothing.

- Geometric (source and target together, so pixels stay aligned): x-flip and a small affine
  (rotation, zoom, shift) resampled bilinearly with reflection at the borders.
- Photometric (source only): exposure gain, contrast about the mean luminance, saturation,
  per-channel gain (colour cast) and gamma, in linear [0, 1] values.

Metrics follow the usual definitions on uint8 images: PSNR with a peak of 255 and SSIM of
Wang et al. 2004 (Gaussian window sigma 1.5, 11 taps, K1 0.01, K2 0.03, population covariances,
the mean over the window positions fully inside the image, then over channels), which is
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=-1)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

AUG_FIELDS = (
    "flip",
    "angle",
    "zoom",
    "tx",
    "ty",
    "gain",
    "contrast",
    "saturation",
    "wb_r",
    "wb_g",
    "wb_b",
    "gamma",
)
AUG_IDENTITY = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1], dtype=np.float32)
_LUMA = (0.299, 0.587, 0.114)


def draw_augment_params(rng: np.random.Generator, cfg: Any) -> np.ndarray:
    """One pair's augmentation parameters (float32 ``[len(AUG_FIELDS)]``) from the config's
    augmentation fields (``xflip``, ``affine_prob``, ``rotate``, ``zoom``, ``translate``,
    ``jitter_prob``, ``brightness``, ``contrast``, ``saturation``, ``white_balance``,
    ``gamma``). The same number of draws is made whatever the outcome, so changing one
    probability does not shift the others' random values."""
    u = rng.random(16)
    p = AUG_IDENTITY.copy()
    if cfg.xflip and u[0] < 0.5:
        p[0] = 1
    if u[1] < cfg.affine_prob:
        p[1] = (2 * u[2] - 1) * cfg.rotate
        p[2] = math.exp((2 * u[3] - 1) * math.log1p(cfg.zoom))
        p[3] = (2 * u[4] - 1) * cfg.translate
        p[4] = (2 * u[5] - 1) * cfg.translate
    if u[6] < cfg.jitter_prob:
        p[5] = 1 + (2 * u[7] - 1) * cfg.brightness
        p[6] = 1 + (2 * u[8] - 1) * cfg.contrast
        p[7] = 1 + (2 * u[9] - 1) * cfg.saturation
        p[8:11] = 1 + (2 * u[10:13] - 1) * cfg.white_balance
        p[11] = math.exp((2 * u[13] - 1) * math.log1p(cfg.gamma))
    return p


def affine_theta(params: torch.Tensor) -> torch.Tensor:
    """``[N, 2, 3]`` sampling matrices (output -> input, normalised coordinates) of the flip,
    rotation, zoom and shift in ``params`` ``[N, len(AUG_FIELDS)]``."""
    flip, angle, zoom, tx, ty = params[:, 0], params[:, 1], params[:, 2], params[:, 3], params[:, 4]
    rad = angle * (math.pi / 180)
    cos, sin = torch.cos(rad) / zoom, torch.sin(rad) / zoom
    sx = 1 - 2 * flip  # -1 mirrors x
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin, tx * 2], dim=1),
            torch.stack([sin * sx, cos, ty * 2], dim=1),
        ],
        dim=1,
    )
    return theta


def geometric(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply each sample's flip and affine to ``images`` ``[N, C, H, W]`` (float). Samples
    without an affine are only flipped (exactly, no resampling)."""
    identity = AUG_IDENTITY[1:5]
    has_affine = (params[:, 1:5] != torch.as_tensor(identity, device=params.device)).any(dim=1)
    flipped = torch.where(params[:, 0].view(-1, 1, 1, 1) > 0.5, images.flip(dims=[3]), images)
    if not bool(has_affine.any()):
        return flipped
    theta = affine_theta(params.to(torch.float32))
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    ).to(images.dtype)
    return torch.where(has_affine.view(-1, 1, 1, 1), warped, flipped)


def photometric(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Exposure, contrast, saturation, colour cast and gamma on ``[N, 3, H, W]`` images in
    [-1, 1]; the result is clamped to [-1, 1]. Samples whose jitter fields are the identity are
    returned unchanged (bit for bit)."""
    x = (images.float() + 1) * 0.5
    gain, contrast, sat = (params[:, i].view(-1, 1, 1, 1) for i in (5, 6, 7))
    wb = params[:, 8:11].view(-1, 3, 1, 1)
    gamma = params[:, 11].view(-1, 1, 1, 1)
    luma_w = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
    x = x * gain
    mean = (x * luma_w).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    gray = (x * luma_w).sum(dim=1, keepdim=True)
    x = (x - gray) * sat + gray
    x = (x * wb).clamp(0, 1)
    x = x.pow(gamma)
    jittered = (x * 2 - 1).to(images.dtype)
    identity = torch.as_tensor(AUG_IDENTITY[5:], device=params.device)
    has_jitter = (params[:, 5:] != identity).any(dim=1).view(-1, 1, 1, 1)
    return torch.where(has_jitter, jittered, images)


def augment_pair(
    src: torch.Tensor, dst: torch.Tensor, params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same geometric augmentation on ``src`` and ``dst`` (both ``[N, 3, H, W]`` in
    [-1, 1]), then photometric jitter on ``src`` only."""
    both = geometric(torch.cat([src, dst], dim=1), params)
    src, dst = both[:, : src.shape[1]], both[:, src.shape[1] :]
    return photometric(src, params), dst


# ---------------------------------------------------------------------------------------------
# Conversion


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return images.to(torch.float32) / 127.5 - 1


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8, as ``teacher.sample.to_uint8``: ``floor(clamp(x * 127.5 + 128,
    0, 255))``; the exact inverse of :func:`uint8_to_float` on its outputs."""
    return (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Metrics


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (peak 255) of uint8 ``[N, C, H, W]`` images; identical images
    give ``inf``."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(255.0**2 / mse)


def _gaussian_window(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of uint8 ``[N, C, H, W]`` images (see the module docstring); images must
    be at least 11 x 11."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"ssim needs two [N, C, H, W] images of one shape, got {a.shape}, {b.shape}"
        )
    if min(a.shape[2:]) < 11:
        raise ValueError("ssim needs images of at least 11 x 11 pixels")
    x, y = a.double(), b.double()
    c = x.shape[1]
    g = _gaussian_window().to(x.device)
    kh = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def l1_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute difference of uint8 images in [-1, 1] units (``/ 127.5``), the
    scale of the training L1 loss."""
    return (a.double() - b.double()).abs().flatten(1).mean(dim=1) / 127.5


__all__ = [
    "AUG_FIELDS",
    "AUG_IDENTITY",
    "affine_theta",
    "augment_pair",
    "draw_augment_params",
    "float_to_uint8",
    "geometric",
    "l1_uint8",
    "photometric",
    "psnr_uint8",
    "ssim_uint8",
    "uint8_to_float",
]
