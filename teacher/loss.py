"""StyleGAN2 losses: non-saturating logistic, lazy R1, path-length regularization, style mixing,
and an optional structure loss for fine-tuning.

The structure loss (after Back 2021, "Fine-tuning StyleGAN2 for cartoon face generation")
keeps a fine-tuned generator's coarse image close to its base's for the same w: the squared
difference of the two renders, each area-downsampled to 4, 8, .. ``structure_res`` px (mean
over pixels and channels, summed over the resolutions). The base renders with constant noise
and gets no gradient. Unlike freezing blocks, it constrains what the image looks like at low
resolution, not which weights may move.

The random inputs of a step (latents, mixing latents and cut-offs, path-length noise) are drawn
by the training loop for the *global* batch and sliced per process, so a step's result does not
depend on how many processes share it. Every loss here is a sum over the samples it gets,
divided by the global batch size the caller passes: summing the gradients of all chunks and all
processes gives the gradient of the global mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from teacher.networks import Discriminator, Generator


def structure_distance(img: torch.Tensor, ref: torch.Tensor, max_res: int) -> torch.Tensor:
    """Per image: the mean squared difference of ``img`` and ``ref`` area-downsampled to 4, 8,
    .. ``max_res`` px (at most their own size), summed over those resolutions."""
    total = img.new_zeros([img.shape[0]])
    res = 4
    while res <= min(max_res, img.shape[2]):
        a = F.adaptive_avg_pool2d(img.float(), res)
        b = F.adaptive_avg_pool2d(ref.float(), res)
        total = total + (a - b).square().flatten(1).mean(1)
        res *= 2
    return total


@dataclass
class LatentDraw:
    """The random inputs of one generator pass for a chunk of samples."""

    z: torch.Tensor  # [n, z_dim]
    c: torch.Tensor  # [n, c_dim]
    mix_z: torch.Tensor  # [n, z_dim] second latents for style mixing
    mix_cutoff: int  # ws index where the mixing latent takes over (num_ws: no mixing)

    def slice(self, start: int, stop: int) -> LatentDraw:
        return LatentDraw(
            self.z[start:stop], self.c[start:stop], self.mix_z[start:stop], self.mix_cutoff
        )


class StyleGAN2Loss:
    """Computes the per-phase losses of StyleGAN2-ADA training (see module docstring)."""

    def __init__(
        self,
        G: Generator,
        D: Discriminator,
        augment_pipe: torch.nn.Module | None,
        r1_gamma: float,
        pl_weight: float,
        pl_decay: float,
        noise_mode: str = "random",
        force_fp32: bool = False,
        structure_ref: Generator | None = None,
        structure_weight: float = 0.0,
        structure_res: int = 16,
    ) -> None:
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = r1_gamma
        self.pl_weight = pl_weight
        self.pl_decay = pl_decay
        self.noise_mode = noise_mode
        self.force_fp32 = force_fp32
        self.pl_mean = torch.zeros([], device=next(G.parameters()).device)
        self.w_sum: torch.Tensor | None = None
        self.w_count = 0
        self.structure_ref = structure_ref
        self.structure_weight = structure_weight
        self.structure_res = structure_res
        self.last_structure: float | None = None  # the structure term of the last g_main

    def run_G(self, draw: LatentDraw, ws_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.G.mapping(draw.z, draw.c, update_w_avg=False)
        w_sum = ws[:, 0].detach().float().sum(0)
        self.w_sum = w_sum if self.w_sum is None else self.w_sum + w_sum
        self.w_count += ws.shape[0]
        if draw.mix_cutoff < ws.shape[1]:
            mixed = self.G.mapping(draw.mix_z, draw.c, update_w_avg=False)
            ws = torch.cat([ws[:, : draw.mix_cutoff], mixed[:, draw.mix_cutoff :]], dim=1)
        if ws_grad and not ws.requires_grad:  # a frozen mapping network: w is a leaf
            ws = ws.detach().requires_grad_(True)
        img = self.G.synthesis(ws, noise_mode=self.noise_mode, force_fp32=self.force_fp32)
        return img, ws

    def run_D(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c, force_fp32=self.force_fp32)

    def g_main(self, draw: LatentDraw, denom: float) -> torch.Tensor:
        """Non-saturating generator loss ``softplus(-D(G(z)))``, plus ``structure_weight`` x
        the structure distance to the base's render when a reference is set, summed /
        ``denom``."""
        img, ws = self.run_G(draw)
        logits = self.run_D(img, draw.c)
        loss = F.softplus(-logits).sum()
        if self.structure_ref is not None and self.structure_weight > 0:
            with torch.no_grad():
                ref = self.structure_ref.synthesis(
                    ws.detach(), noise_mode="const", force_fp32=self.force_fp32
                )
            dist = structure_distance(img, ref, self.structure_res)
            self.last_structure = float(dist.detach().mean())
            loss = loss + self.structure_weight * dist.sum()
        return loss / denom

    def g_pl(
        self, draw: LatentDraw, pl_noise: torch.Tensor, denom: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Path-length penalty ``pl_weight * (|J^T y| - a)^2`` (Karras et al. 2020).

        ``a`` is the running mean of path lengths before this step (the caller updates it with
        :meth:`update_pl_mean` from the global batch). Returns (loss, path lengths).
        """
        img, ws = self.run_G(draw, ws_grad=True)
        out = (img * pl_noise).sum()
        (grads,) = torch.autograd.grad(out, ws, create_graph=True, only_inputs=True)
        lengths = grads.square().sum(2).mean(1).sqrt()
        penalty = (lengths - self.pl_mean).square() * self.pl_weight
        # img[:, 0, 0, 0] * 0 keeps the synthesis graph in use (as in the reference training).
        return (img[:, 0, 0, 0] * 0 + penalty).sum() / denom, lengths.detach()

    def update_w_avg(self, world: int = 1) -> None:
        """Move ``G.mapping.w_avg`` toward the mean w of the phase that just ran.

        The mean is over the phase's global batch (summed across processes), applied once per
        phase, so it does not depend on chunking or the number of processes.
        """
        if self.w_sum is None:
            return
        stats = torch.cat(
            [self.w_sum, torch.tensor([float(self.w_count)], device=self.w_sum.device)]
        )
        if world > 1:
            torch.distributed.all_reduce(stats)
        mean = stats[:-1] / stats[-1]
        mapping = self.G.mapping
        with torch.no_grad():
            mapping.w_avg.copy_(mean.lerp(mapping.w_avg, mapping.w_avg_beta))
        self.w_sum = None
        self.w_count = 0

    def update_pl_mean(self, mean_length: torch.Tensor) -> None:
        self.pl_mean = self.pl_mean.lerp(mean_length.to(self.pl_mean.device), self.pl_decay)

    def d_fake(self, draw: LatentDraw, denom: float) -> torch.Tensor:
        """``softplus(D(G(z)))`` on generated images (generator not differentiated)."""
        with torch.no_grad():
            img, _ = self.run_G(draw)
        logits = self.run_D(img, draw.c)
        return F.softplus(logits).sum() / denom

    def d_real(
        self, real_img: torch.Tensor, real_c: torch.Tensor, main: bool, r1: bool, denom: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``softplus(-D(x))`` on reals and/or the R1 penalty ``gamma/2 |grad_x D(x)|^2``.

        Returns (loss, real logits detached) so the caller can feed ADA's r_t.
        """
        x = real_img.detach().requires_grad_(r1)
        logits = self.run_D(x, real_c)
        loss = logits.sum() * 0
        if main:
            loss = loss + F.softplus(-logits).sum()
        if r1:
            (grads,) = torch.autograd.grad(logits.sum(), x, create_graph=True, only_inputs=True)
            penalty = grads.square().sum([1, 2, 3]) * (self.r1_gamma / 2)
            loss = loss + penalty.sum()
        return loss / denom, logits.detach()
