"""Projection of images into a generator's latent space (optimization-based inversion).

The schedule follows the StyleGAN2 projector (Karras et al. 2020, Appendix D): the latent starts
at ``w_avg``; Adam with a learning rate that ramps up over the first 5% of steps and down
(cosine) over the last 25%; Gaussian noise added to the latent, decaying quadratically to zero
at 75% of the steps (scaled by the spread of W); and, when the per-layer noise maps are
optimized too, a multi-scale autocorrelation penalty that keeps them noise-like (weight 1e5),
with the maps renormalised to zero mean and unit variance after every step.

Spaces: ``w`` optimizes one w shared by all layers (``[N, 1, w_dim]`` broadcast), ``w+`` one w
per layer (``[N, num_ws, w_dim]``), which reconstructs (and keeps identity) better. Starting W+
directly at ``w_avg`` converges slowly (each layer's w sees a weak, noisy gradient), so ``w+``
first optimizes a shared w for ``wplus_warmup`` of the steps and then unties it into one w per
layer for the rest (the learning-rate and latent-noise schedules run on unchanged).

Distances:
- ``vgg``: NVIDIA's VGG16 TorchScript (``vgg16.pt``, a path the user passes) on 256 px images,
  squared L2 of its LPIPS-style normalised features (what NVIDIA's projector minimises).
- ``pixel`` (fallback, no download): mean squared error summed over an image pyramid down to
  16 px, plus, when a discriminator is given, the mean squared difference of its block features
  (each normalised by its channel count). ``pixel_weight`` and ``dfeat_weight`` weigh the parts.

Starting point: ``w_avg`` (the published projector), or a W+ code per image (``init_ws``, e.g.
from :mod:`teacher.encoder`), which is then refined in W+ from the first step (no shared-w
warm-up); :data:`REFINE` holds the schedule for that case (no latent noise, which would throw
a good start away, a slower ramp-up, and the full-resolution pixel term alone). Zero steps
return the start as it is.

Many images are projected at once: each has its own latent in one batch (the latents are
independent; the loss is a sum over images).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.cli import ToonError, error_line
from common.files import atomic_write
from teacher.networks import Discriminator, Generator


class ProjectError(ToonError):
    """Projection cannot run (one-line message)."""


@dataclass(frozen=True)
class ProjectConfig:
    """Projector settings (defaults: the StyleGAN2 projector's values)."""

    space: str = "w+"  # "w" or "w+"
    wplus_warmup: float = 0.5  # w+: fraction of steps spent in W before untying the layers
    steps: int = 1000
    initial_lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    initial_noise_factor: float = 0.05
    noise_ramp: float = 0.75
    optimize_noise: bool = True
    noise_reg_weight: float = 1e5
    w_avg_samples: int = 10000
    loss: str = "auto"  # "auto" (vgg when given, else pixel), "vgg", "pixel"
    pixel_weight: float = 1.0
    dfeat_weight: float = 0.1
    pyramid: bool = True  # pixel loss: image pyramid down to 16 px, or full resolution only
    seed: int = 0


# Schedule changes for refining a given start (``project(..., init_ws=...)``): no latent noise,
# which would throw a good start away; no discriminator-feature term and no image pyramid (the
# full-resolution MSE alone); a learning rate of 0.2 that ramps up over the first 30 % of the
# steps (Adam's first steps move every coordinate by about the learning rate, which kicks a
# good start away) and down over the last 15 %. Chosen on 24 validation photos of the miniature
# (a stream of their own), then measured once on the 24 held-out photos of demo/README.md:
# 50 steps from the shipped encoder's codes give 28.34 dB and identity 1.12 this way, 27.56 dB
# and 1.16 with the w_avg schedule's learning rate (0.1, ramps of 5 % and 25 %) and pyramid;
# the discriminator's features (26.82 against 26.84 dB without, an earlier encoder) bought
# nothing at twice the cost per step; the w_avg schedule's latent noise cost 0.7 dB.
REFINE = dict(
    initial_lr=0.2,
    lr_rampup=0.3,
    lr_rampdown=0.15,
    initial_noise_factor=0.0,
    dfeat_weight=0.0,
    pyramid=False,
)


class VGGDistance:
    """Squared L2 distance of NVIDIA ``vgg16.pt`` features (images in [-1, 1])."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        path = Path(path)
        if not path.exists():
            raise ProjectError(
                f"{path}: VGG16 feature network not found; download NVIDIA's vgg16.pt "
                "(stylegan2-ada-pytorch metrics) yourself and pass its path, or use --loss pixel"
            )
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            raise ProjectError(f"{path}: not a TorchScript VGG16 ({error_line(e)})") from None

    def features(self, img: torch.Tensor) -> torch.Tensor:
        x = (img + 1) * 127.5
        if x.shape[2] > 256:
            x = F.interpolate(x, size=(256, 256), mode="area")
        return self.net(x, resize_images=False, return_lpips=True)

    def __call__(self, target_feats: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        return (target_feats - self.features(img)).square().sum(dim=1)


class PixelDistance:
    """Multi-scale MSE (or, with ``pyramid`` False, the full-resolution MSE alone) plus
    optional discriminator block features (no download needed)."""

    def __init__(
        self,
        D: Discriminator | None,
        pixel_weight: float = 1.0,
        dfeat_weight: float = 0.1,
        pyramid: bool = True,
    ) -> None:
        self.D = D
        self.pixel_weight = pixel_weight
        self.dfeat_weight = dfeat_weight
        self.pyramid = pyramid

    def _d_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = None
        for res in self.D.block_resolutions:
            x, img = getattr(self.D, f"b{res}")(x, img, force_fp32=True)
            feats.append(x)
        return feats

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        pyramid = [img]
        while self.pyramid and pyramid[-1].shape[2] > 16:
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))
        dfeats = self._d_features(img) if self.D is not None and self.dfeat_weight > 0 else []
        return pyramid + dfeats

    def __call__(self, target_feats: list[torch.Tensor], img: torch.Tensor) -> torch.Tensor:
        feats = self.features(img)
        n_pix = len(feats) - (len(self.D.block_resolutions) if self._uses_d() else 0)
        total = img.new_zeros([img.shape[0]])
        for i, (t, f) in enumerate(zip(target_feats, feats, strict=True)):
            d = (t - f).square().flatten(1).mean(1)
            total = total + d * (self.pixel_weight if i < n_pix else self.dfeat_weight)
        return total

    def _uses_d(self) -> bool:
        return self.D is not None and self.dfeat_weight > 0


def w_statistics(
    G: Generator, samples: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, float]:
    """Mean w and the scalar spread ``sqrt(E|w - w_mean|^2)`` over random z (c = 0)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn([samples, G.z_dim], generator=g).to(device)
    c = torch.zeros([samples, G.c_dim], device=device)
    with torch.no_grad():
        w = G.mapping(z, c)[:, 0]
    mean = w.mean(0)
    std = float(((w - mean).square().sum() / samples).sqrt())
    return mean, std


def _noise_reg(noises: list[torch.Tensor]) -> torch.Tensor:
    """Multi-scale autocorrelation (shift by one pixel in x and y) of the noise maps."""
    total = noises[0].new_zeros([])
    for n in noises:
        x = n[None, None] if n.ndim == 2 else n
        while True:
            total = total + (x * torch.roll(x, 1, dims=3)).mean().square()
            total = total + (x * torch.roll(x, 1, dims=2)).mean().square()
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


@dataclass
class Projection:
    """Result of :func:`project`: latents, the reconstruction and per-step losses."""

    ws: torch.Tensor  # [N, num_ws, w_dim]
    images: torch.Tensor  # [N, C, H, W] reconstruction in [-1, 1] (with the optimized noise)
    noise: dict[str, torch.Tensor]  # noise_const maps used for the reconstruction
    losses: np.ndarray  # [steps, N] distance per image and step
    final: np.ndarray  # [N] distance of the returned reconstruction


def project(
    G: Generator,
    targets: torch.Tensor,
    cfg: ProjectConfig = ProjectConfig(),
    vgg16: str | Path | None = None,
    D: Discriminator | None = None,
    progress: Callable[[int, float], None] | None = None,
    init_ws: torch.Tensor | None = None,
) -> Projection:
    """Project ``targets`` (``[N, C, H, W]`` in [-1, 1], aligned to the generator's framing),
    starting at ``w_avg`` or at ``init_ws`` (``[N, num_ws, w_dim]``; in space ``w`` its mean
    over the layers).

    ``G`` is not modified (a copy is optimized). Noise maps are shared by the batch in the
    generator, so with ``optimize_noise`` and N > 1 each image still gets its own latent but
    the noise maps are optimized jointly; project one image at a time where the noise matters.
    """
    if cfg.space not in ("w", "w+"):
        raise ProjectError(f"space must be 'w' or 'w+', got {cfg.space!r}")
    if G.c_dim:
        raise ProjectError("projection into conditional generators is not supported")
    device = targets.device
    res = G.img_resolution
    if targets.ndim != 4 or targets.shape[1:] != (G.img_channels, res, res):
        raise ProjectError(
            f"targets must be [N, {G.img_channels}, {res}, {res}], got {tuple(targets.shape)}"
        )
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    torch.manual_seed(cfg.seed)
    w_mean, w_std = w_statistics(G, cfg.w_avg_samples, cfg.seed, device)

    use_vgg = cfg.loss == "vgg" or (cfg.loss == "auto" and vgg16)
    if use_vgg:
        if not vgg16:
            raise ProjectError("--loss vgg needs --vgg16 PATH (NVIDIA's vgg16.pt)")
        dist = VGGDistance(vgg16, device)
    else:
        if D is not None:
            D = copy.deepcopy(D).eval().requires_grad_(False).to(device)
        dist = PixelDistance(D, cfg.pixel_weight, cfg.dfeat_weight, cfg.pyramid)
    with torch.no_grad():
        target_feats = dist.features(targets)

    n = targets.shape[0]
    if init_ws is None:
        w_opt = w_mean.reshape(1, 1, -1).repeat(n, 1, 1).clone().requires_grad_(True)
        untie_at = int(cfg.steps * cfg.wplus_warmup) if cfg.space == "w+" else None
    else:
        if tuple(init_ws.shape) != (n, G.num_ws, G.w_dim):
            raise ProjectError(
                f"start codes must be [{n}, {G.num_ws}, {G.w_dim}], got {tuple(init_ws.shape)}"
            )
        start = init_ws.detach().to(device, torch.float32)
        if cfg.space == "w":
            start = start.mean(1, keepdim=True)
        w_opt = start.clone().requires_grad_(True)
        untie_at = None
    noise_bufs = {name: buf for name, buf in G.synthesis.named_buffers() if "noise_const" in name}
    if cfg.optimize_noise:
        for buf in noise_bufs.values():
            if init_ws is None:  # a given start was made for the generator's own noise maps
                buf.copy_(torch.randn_like(buf))
            buf.requires_grad_(True)

    def make_opt(w: torch.Tensor) -> torch.optim.Adam:
        params = [w] + (list(noise_bufs.values()) if cfg.optimize_noise else [])
        return torch.optim.Adam(params, betas=(0.9, 0.999), lr=cfg.initial_lr)

    opt = make_opt(w_opt)
    losses = np.zeros([cfg.steps, n], dtype=np.float32)

    for step in range(cfg.steps):
        if step == untie_at:
            w_opt = w_opt.detach().repeat(1, G.num_ws, 1).requires_grad_(True)
            opt = make_opt(w_opt)
        t = step / cfg.steps
        w_noise_scale = w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp) ** 2
        lr_ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown)
        lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
        if cfg.lr_rampup > 0:
            lr_ramp = lr_ramp * min(1.0, t / cfg.lr_rampup)
        for group in opt.param_groups:
            group["lr"] = cfg.initial_lr * lr_ramp

        w_noise = torch.randn_like(w_opt) * w_noise_scale
        ws = (w_opt + w_noise).expand(n, G.num_ws, -1)
        img = G.synthesis(ws, noise_mode="const", force_fp32=True)
        d = dist(target_feats, img)
        loss = d.sum()
        if cfg.optimize_noise:
            loss = loss + _noise_reg(list(noise_bufs.values())) * cfg.noise_reg_weight
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = d.detach().cpu().numpy()
        if cfg.optimize_noise:
            with torch.no_grad():
                for buf in noise_bufs.values():
                    buf -= buf.mean()
                    buf *= buf.square().mean().rsqrt()
        if progress is not None:
            progress(step, float(d.detach().mean()))

    with torch.no_grad():
        ws = w_opt.detach().expand(n, G.num_ws, -1).clone()
        images = G.synthesis(ws, noise_mode="const", force_fp32=True)
        final = dist(target_feats, images).cpu().numpy()
    noise = {name: buf.detach().clone() for name, buf in noise_bufs.items()}
    return Projection(ws=ws, images=images, noise=noise, losses=losses, final=final)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image for images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def save_projected_w(path: str | Path, ws: torch.Tensor, names: list[str] | None = None) -> Path:
    """Write ``projected_w.npz``: key ``w`` [N, num_ws, w_dim] float32 (what NVIDIA's
    ``generate.py --projected-w`` reads) and, when given, ``names`` [N] (the source of each row)."""
    path = Path(path)
    arrays = {"w": ws.detach().cpu().numpy().astype(np.float32)}
    if names is not None:
        if len(names) != ws.shape[0]:
            raise ValueError(f"{len(names)} names for {ws.shape[0]} latents")
        arrays["names"] = np.array(names, dtype=str)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
