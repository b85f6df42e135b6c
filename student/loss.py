"""Losses of the student: L1 to the teacher, adversarial (hinge or LSGAN), discriminator feature
matching, and an optional perceptual (LPIPS-VGG16) loss.

- Adversarial, per scale of the multi-scale discriminator, averaged over scales
  (pix2pixHD). Hinge (Lim & Ye 2017; Miyato et al. 2018): D minimises
  ``relu(1 - D(real)) + relu(1 + D(fake))``, G minimises ``-D(fake)``. LSGAN (Mao et al. 2017):
  D minimises ``((D(real) - 1)^2 + D(fake)^2) / 2``, G minimises ``(D(fake) - 1)^2``.
- Feature matching (pix2pixHD, Wang et al. 2018): the L1 distance between D's intermediate
  features of the generated and the real pair (real side detached), each layer weighted
  ``4 / (layers + 1)`` and each scale ``1 / scales`` as there.
- Perceptual: NVIDIA's ``vgg16.pt`` TorchScript (the file stylegan2-ada-pytorch's metrics use)
  called as ``net(x, resize_images=False, return_lpips=True)`` on images in [0, 255] gives
  unit-normalised, LPIPS-weighted features; the squared L2 distance between two images'
  features is their LPIPS distance. The path is given by the user and never downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from common.cli import ToonError

NVIDIA_VGG16_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
)


class LossError(ToonError):
    """A loss could not be set up (one-line message)."""


def d_loss(real: list[torch.Tensor], fake: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Discriminator loss from per-scale logit maps of real and generated pairs."""
    total = real[0].new_zeros([], dtype=torch.float32)
    for r, f in zip(real, fake, strict=True):
        r, f = r.float(), f.float()
        if kind == "hinge":
            total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        elif kind == "lsgan":
            total = total + 0.5 * ((r - 1).pow(2).mean() + f.pow(2).mean())
        else:
            raise ValueError(f"unknown GAN loss {kind!r}")
    return total / len(real)


def g_loss(fake: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Generator adversarial loss from per-scale logit maps of generated pairs."""
    total = fake[0].new_zeros([], dtype=torch.float32)
    for f in fake:
        f = f.float()
        if kind == "hinge":
            total = total - f.mean()
        elif kind == "lsgan":
            total = total + (f - 1).pow(2).mean()
        else:
            raise ValueError(f"unknown GAN loss {kind!r}")
    return total / len(fake)


def feature_matching(
    real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]
) -> torch.Tensor:
    """pix2pixHD's feature-matching loss over every scale and every layer but the logits."""
    total = fake[0][0].new_zeros([], dtype=torch.float32)
    scales = len(fake)
    for r_feats, f_feats in zip(real, fake, strict=True):
        layers = len(f_feats) - 1
        weight = 4.0 / (layers + 1) / scales
        for r, f in zip(r_feats[:-1], f_feats[:-1], strict=True):
            total = total + weight * F.l1_loss(f.float(), r.detach().float())
    return total


class PerceptualLoss(torch.nn.Module):
    """LPIPS distance through NVIDIA's VGG16 TorchScript (see the module docstring).

    Images larger than 256 px are area-resized to 256 first (the file's LPIPS head expects at
    most that). Runs in float32 whatever the autocast state.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        super().__init__()
        p = Path(path)
        if not p.is_file():
            raise LossError(
                f"{p}: VGG16 TorchScript not found; NVIDIA publishes vgg16.pt at "
                f"{NVIDIA_VGG16_URL} - download it yourself and pass its path"
            )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
                self.net = torch.jit.load(str(p), map_location=torch.device(device)).eval()
        except Exception as e:  # any failure to read the file is the user's to fix
            raise LossError(f"{p}: not a TorchScript VGG16 ({type(e).__name__})") from None
        for param in self.net.parameters():
            param.requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """LPIPS features ``[N, F]`` of images in [-1, 1]."""
        x = (images.float() + 1) * 127.5
        if x.shape[2] > 256 or x.shape[3] > 256:
            x = F.interpolate(x, size=(256, 256), mode="area")
        return self.net(x, resize_images=False, return_lpips=True)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance between two batches of images in [-1, 1]."""
        with torch.autocast(device_type=a.device.type, enabled=False):
            fa, fb = self.features(a), self.features(b.detach())
            return (fa - fb).pow(2).sum(dim=1).mean()


__all__ = [
    "LossError",
    "NVIDIA_VGG16_URL",
    "PerceptualLoss",
    "d_loss",
    "feature_matching",
    "g_loss",
]
