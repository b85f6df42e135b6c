"""Adaptive discriminator augmentation (ADA): the augmentation pipeline and the p controller.

Written from the description in Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data" (Section 2-3 and Appendix B), not from NVIDIA's code. The pipeline applies
up to 18 transformations, each to each sample independently with probability ``p`` (times the
op's strength multiplier), in this fixed order:

=========  ==========================================================================
group      ops (parameter distribution, as in Appendix B)
=========  ==========================================================================
blit       ``xflip`` (i ~ U{0,1}), ``rotate90`` (i ~ U{0,3} quarter turns),
           ``xint`` (t ~ U(-0.125, 0.125) of the size, rounded to whole pixels)
geom       ``scale`` (s ~ Lognormal(0, (0.2 ln 2)^2), isotropic),
           ``rotate`` (theta ~ U(-pi, pi), before and after ``aniso``, each with probability
           1 - sqrt(1 - p) so that "some rotation" has probability p),
           ``aniso`` (s ~ Lognormal(0, (0.2 ln 2)^2), scale (s, 1/s)),
           ``xfrac`` (t ~ N(0, 0.125^2) of the size)
color      ``brightness`` (b ~ N(0, 0.2^2), added), ``contrast`` (c ~ Lognormal(0, (0.5 ln 2)^2)),
           ``lumaflip`` (i ~ U{0,1}: reflect along the luma axis), ``hue`` (rotation about the
           luma axis, theta ~ U(-pi, pi)), ``saturation`` (s ~ Lognormal(0, (1 ln 2)^2))
filter     ``imgfilter``: 4-band equaliser; for each band independently a gain
           t ~ Lognormal(0, (1 ln 2)^2), renormalised by the expected band powers
           lambda = [10, 1, 1, 1] / 13
noise      ``noise``: additive Gaussian noise, sigma ~ |N(0, 0.1^2)| per sample
cutout     ``cutout``: a rectangle of half the width and height, centre ~ U(0, 1)^2, set to 0
=========  ==========================================================================

As in the paper, ``xflip``, ``rotate90`` and ``lumaflip`` draw their integer *after* the
probability test, so with ``p = 1`` a sample is flipped with probability 1/2 (and rotated by
each of 0, 90, 180, 270 degrees with probability 1/4).

Implementation (and where it departs from the paper):

- Blit and geom ops compose into one 3x3 homogeneous matrix per sample, acting on pixel
  coordinates centred on the image, and the image is resampled once. Samples whose matrix maps
  pixel centres onto pixel centres (identity and any blit-only combination) are resampled by an
  exact index gather, so they are bit-exact permutations of the input. The others are sampled
  with bicubic ``grid_sample`` on a grid twice as dense as the output, then low-passed and
  decimated by 2 with a 16-tap Kaiser-windowed sinc (half-band) filter. The paper instead
  upsamples the input 2x with a ``sym6`` wavelet filter, samples bilinearly and decimates with
  the same filter; both are "2x supersample, then a good low-pass" and avoid aliasing for the
  scale factors the pipeline draws. Out-of-image samples reflect symmetrically about the image
  border (``grid_sample``'s ``reflection`` mode: index -1 reads index 0), where the paper pads
  with reflection.
- Color ops compose into one 4x4 matrix per sample acting on ``[r, g, b, 1]``, applied in one
  step. The paper's saturation matrix also scales the homogeneous coordinate; here it acts on
  the colour block only (the same result, since saturation is the last colour op). One-channel
  images are treated as grey RGB ``(y, y, y)``: transformed and averaged back to one channel.
- The filter bank is a set of 31-tap Kaiser-windowed sinc (beta = 3) band-pass filters with
  edges at pi/8, pi/4, pi/2 (differences of low-passes, so the four bands sum to the identity),
  applied separably along x and y with symmetric reflection at the borders. The paper builds its
  bank from ``sym2`` wavelets; the bands and the gain law are the paper's.
- Every stage keeps non-augmented samples bit-exact (``torch.where`` per sample), so ``p = 0``
  returns the input values unchanged. All random numbers are drawn from one source (the
  ``generator`` passed to ``forward``, else the global RNG of the images' device) in a fixed
  order that depends only on which ops are enabled, never on ``p``.
- The pipeline is linear in the images per stage (plus noise), built from differentiable torch
  ops; gradients (and second-order gradients, which R1 regularisation on augmented reals
  needs) flow to the input images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Op names and presets (NVIDIA's ``--augpipe`` names)

BLIT_OPS = ("xflip", "rotate90", "xint")
GEOM_OPS = ("scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
OP_NAMES: tuple[str, ...] = (*BLIT_OPS, *GEOM_OPS, *COLOR_OPS, "imgfilter", "noise", "cutout")

_GROUPS: dict[str, tuple[str, ...]] = {
    "blit": BLIT_OPS,
    "geom": GEOM_OPS,
    "color": COLOR_OPS,
    "filter": ("imgfilter",),
    "noise": ("noise",),
    "cutout": ("cutout",),
}
PRESETS: dict[str, tuple[str, ...]] = {
    **_GROUPS,
    "bg": BLIT_OPS + GEOM_OPS,
    "bgc": BLIT_OPS + GEOM_OPS + COLOR_OPS,
    "bgcf": BLIT_OPS + GEOM_OPS + COLOR_OPS + ("imgfilter",),
    "bgcfn": BLIT_OPS + GEOM_OPS + COLOR_OPS + ("imgfilter", "noise"),
    "bgcfnc": BLIT_OPS + GEOM_OPS + COLOR_OPS + ("imgfilter", "noise", "cutout"),
}

# Expected relative power of natural images in the four filter bands (paper, Appendix B).
FILTER_BAND_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)


# ---------------------------------------------------------------------------------------------
# Filters (designed here; constants, not learned)


def _kaiser_sinc_lowpass(length: int, cutoff: float, beta: float) -> np.ndarray:
    """Windowed-sinc low-pass with DC gain 1; ``cutoff`` is a fraction of Nyquist."""
    n = np.arange(length) - (length - 1) / 2
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(length, beta)
    return h / h.sum()


def supersample_filter() -> torch.Tensor:
    """The 16-tap half-band low-pass used to decimate the 2x supersampled geometric output."""
    return torch.tensor(_kaiser_sinc_lowpass(16, 0.5, 4.0), dtype=torch.float32)


def filter_bank() -> torch.Tensor:
    """The four 31-tap band filters ``[4, 31]`` (bands [0, pi/8], [pi/8, pi/4], [pi/4, pi/2],
    [pi/2, pi]); they sum to a unit impulse, so gains ``[1, 1, 1, 1]`` are the identity."""
    length = 31
    lows = [_kaiser_sinc_lowpass(length, c, 3.0) for c in (1 / 8, 1 / 4, 1 / 2)]
    delta = np.zeros(length)
    delta[length // 2] = 1.0
    bank = np.stack([lows[0], lows[1] - lows[0], lows[2] - lows[1], delta - lows[2]])
    return torch.tensor(bank, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Batched homogeneous matrices. 2-D ones act on [x, y, 1], 3-D ones on [r, g, b, 1].


def _matrix(rows: list[list[torch.Tensor | float]], ref: torch.Tensor) -> torch.Tensor:
    """Stack a nested list of per-sample tensors [N] / floats into a [N, R, C] matrix."""
    cols = [
        torch.as_tensor(v, dtype=ref.dtype, device=ref.device).expand_as(ref)
        for r in rows
        for v in r
    ]
    return torch.stack(cols, dim=-1).reshape(ref.shape[0], len(rows), len(rows[0]))


def _translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def _scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def _rotate2d(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _matrix([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], cos)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matrix product as multiply-and-sum: full float32 even where TF32 matmuls are
    enabled, so products of exact blit matrices stay exact."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def _luma_axis(ref: torch.Tensor) -> torch.Tensor:
    return torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=ref.dtype, device=ref.device) / math.sqrt(3)


def _translate3d(t: torch.Tensor) -> torch.Tensor:
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], t)


def _scale3d(s: torch.Tensor) -> torch.Tensor:
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], s)


def _rotate3d_luma(theta: torch.Tensor) -> torch.Tensor:
    """Rotation by ``theta`` about the luma axis (Rodrigues' formula)."""
    a = 1 / math.sqrt(3)
    c, s = theta.cos(), theta.sin()
    k = 1 - c
    d, o1, o2 = c + k * a * a, k * a * a - s * a, k * a * a + s * a
    return _matrix([[d, o1, o2, 0], [o2, d, o1, 0], [o1, o2, d, 0], [0, 0, 0, 1]], theta)


# ---------------------------------------------------------------------------------------------
# Resampling and filtering helpers


def _reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Fold integer indices into ``[0, size)`` by symmetric reflection (-1 -> 0, size -> size-1),
    periodically, so any offset is valid."""
    i = torch.remainder(i, 2 * size)
    return torch.where(i >= size, 2 * size - 1 - i, i)


def _pad_symmetric(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims by ``pad`` on every side with symmetric reflection."""
    h, w = x.shape[-2:]
    rows = _reflect_index(torch.arange(-pad, h + pad, device=x.device), h)
    cols = _reflect_index(torch.arange(-pad, w + pad, device=x.device), w)
    return x.index_select(-2, rows).index_select(-1, cols)


def _depthwise_1d(x: torch.Tensor, f: torch.Tensor, dim: int, stride: int = 1) -> torch.Tensor:
    """Correlate each (sample, channel) plane of ``x`` [N, C, H, W] with its own 1-D filter
    ``f`` [N, L] along ``dim`` (-1: x, -2: y), without padding."""
    n, c, h, w = x.shape
    weight = f.repeat_interleave(c, dim=0)[:, None, None, :]  # [N*C, 1, 1, L]
    strides = (1, stride)
    if dim == -2:
        weight, strides = weight.transpose(-1, -2), (stride, 1)
    y = F.conv2d(x.reshape(1, n * c, h, w), weight, stride=strides, groups=n * c)
    return y.reshape(n, c, *y.shape[-2:])


def _pixel_grid(n: int, h: int, w: int, g_inv: torch.Tensor, step: float, margin: int):
    """Source coordinates (centred pixel units) of output positions spaced ``step`` pixels
    apart, ``margin`` positions beyond each border. Returns ``[N, rows, cols, 2]`` (x, y)."""
    dev, dt = g_inv.device, g_inv.dtype
    k_x = torch.arange(-margin, round(w / step) + margin, device=dev, dtype=dt)
    k_y = torch.arange(-margin, round(h / step) + margin, device=dev, dtype=dt)
    xs = (k_x + 0.5) * step - w / 2
    ys = (k_y + 0.5) * step - h / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    xx, yy = xx[None, :, :, None], yy[None, :, :, None]
    a = g_inv[:, None, None, :2, :]  # [N, 1, 1, 2, 3]
    return a[..., 0] * xx + a[..., 1] * yy + a[..., 2]  # [N, rows, cols, 2]


def _resample_lattice(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel gather at source coordinates ``src`` [N, H, W, 2] (centred units), with
    symmetric reflection: exact for matrices that map pixel centres to pixel centres."""
    n, c, h, w = x.shape
    ix = _reflect_index(torch.round(src[..., 0] + (w / 2 - 0.5)).long(), w)
    iy = _reflect_index(torch.round(src[..., 1] + (h / 2 - 0.5)).long(), h)
    index = (iy * w + ix).reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def _is_lattice(g_inv: torch.Tensor, src: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per sample: is the matrix a signed permutation that maps pixel centres onto pixel
    centres (so that :func:`_resample_lattice` is exact)?"""
    lin = g_inv[:, :2, :2]
    signed_perm = ((lin - lin.round()).abs() < 1e-6).all(dim=(1, 2)) & (
        (lin.round().abs().sum(dim=2) == 1).all(dim=1)
    )
    ix = src[..., 0] + (w / 2 - 0.5)
    iy = src[..., 1] + (h / 2 - 0.5)
    off = torch.maximum((ix - ix.round()).abs(), (iy - iy.round()).abs()).amax(dim=(1, 2))
    return signed_perm & (off < 1e-3)


def _resample_smooth(x: torch.Tensor, g_inv: torch.Tensor, lowpass: torch.Tensor) -> torch.Tensor:
    """Bicubic sampling on a 2x dense grid, then low-pass and decimate by 2 (anti-aliased)."""
    n, c, h, w = x.shape
    taps = lowpass.shape[0]
    margin = taps // 2 - 1  # a 2*margin + 2 tap even filter centred between two dense samples
    src = _pixel_grid(n, h, w, g_inv, step=0.5, margin=margin)
    size = torch.tensor([w / 2, h / 2], dtype=src.dtype, device=src.device)
    dense = F.grid_sample(
        x, src / size, mode="bicubic", padding_mode="reflection", align_corners=False
    )
    f = lowpass.to(dtype=x.dtype, device=x.device).expand(n, taps)
    return _depthwise_1d(_depthwise_1d(dense, f, dim=-1, stride=2), f, dim=-2, stride=2)


def _where_samples(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.reshape(-1, *([1] * (a.ndim - 1))), a, b)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class AugmentParams:
    """Everything one call of :class:`AugmentPipe` drew for a batch; ``None`` means the stage
    has no enabled op. Applying the same params to two batches augments them identically."""

    applied: dict[str, torch.Tensor] = field(default_factory=dict)  # op -> bool [N]
    geom_inv: torch.Tensor | None = None  # [N, 3, 3] output -> input pixel coords (centred)
    smooth: bool = False  # a geom op is enabled: non-lattice matrices can occur
    color: torch.Tensor | None = None  # [N, 4, 4] acting on [r, g, b, 1]
    color_mask: torch.Tensor | None = None  # bool [N]: some colour op applied
    filter_gains: torch.Tensor | None = None  # [N, 4] band gains
    filter_mask: torch.Tensor | None = None  # bool [N]: some band applied
    noise_sigma: torch.Tensor | None = None  # [N] (0 where not applied)
    noise: torch.Tensor | None = None  # [N, C, H, W] unit Gaussian field
    noise_mask: torch.Tensor | None = None  # bool [N]
    cutout_center: torch.Tensor | None = None  # [N, 2] (x, y) as fractions of the size
    cutout_mask: torch.Tensor | None = None  # bool [N]


class AugmentPipe(torch.nn.Module):
    """ADA augmentation pipeline (see the module docstring for the ops and distributions).

    Each op's argument is a multiplier of the probability (op applied with probability
    ``min(p * strength, 1)``); 0 disables the op and skips its random draws. The ``*_std`` /
    ``*_max`` arguments scale the parameter distributions (lognormal stds in units of ln 2).
    ``p`` is a float32 buffer, set by the ADA controller (``pipe.p.fill_(ctrl.p)``).
    """

    def __init__(
        self,
        *,
        xflip: float = 0,  # x-flip (then i ~ U{0,1})
        rotate90: float = 0,  # rotation by i * 90 degrees, i ~ U{0,3}
        xint: float = 0,  # integer translation
        scale: float = 0,  # isotropic scaling
        rotate: float = 0,  # arbitrary rotation (before and after aniso)
        aniso: float = 0,  # anisotropic scaling
        xfrac: float = 0,  # fractional translation
        brightness: float = 0,
        contrast: float = 0,
        lumaflip: float = 0,
        hue: float = 0,
        saturation: float = 0,
        imgfilter: float = 0,  # 4-band image-space equaliser
        noise: float = 0,  # additive Gaussian noise
        cutout: float = 0,
        xint_max: float = 0.125,  # integer translation range, fraction of the size
        scale_std: float = 0.2,  # log2 std of the isotropic scale
        rotate_max: float = 1.0,  # rotation range, fraction of pi
        aniso_std: float = 0.2,  # log2 std of the anisotropic scale
        xfrac_std: float = 0.125,  # fractional translation std, fraction of the size
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,  # log2 std
        hue_max: float = 1.0,  # hue rotation range, fraction of pi
        saturation_std: float = 1.0,  # log2 std
        imgfilter_std: float = 1.0,  # log2 std of a band's gain
        noise_std: float = 0.1,  # std of the half-normal noise sigma
        cutout_size: float = 0.5,  # cutout rectangle size, fraction of width and height
        p: float = 0.0,  # initial probability
    ) -> None:
        super().__init__()
        strengths = dict(
            xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso,
            xfrac=xfrac, brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue,
            saturation=saturation, imgfilter=imgfilter, noise=noise, cutout=cutout,
        )  # fmt: skip
        for name, value in strengths.items():
            if not value >= 0:
                raise ValueError(f"augment op {name!r} strength must be >= 0, got {value}")
        if not 0 <= p <= 1:
            raise ValueError(f"augment probability p must be in [0, 1], got {p}")
        self.strength: dict[str, float] = {k: float(v) for k, v in strengths.items()}
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        self.imgfilter_std, self.noise_std, self.cutout_size = imgfilter_std, noise_std, cutout_size
        self.register_buffer("p", torch.tensor(p, dtype=torch.float32))
        self.register_buffer("lowpass", supersample_filter(), persistent=False)
        self.register_buffer("bank", filter_bank(), persistent=False)

    @property
    def enabled_ops(self) -> tuple[str, ...]:
        """The ops with a non-zero strength, in pipeline order."""
        return tuple(op for op in OP_NAMES if self.strength[op] > 0)

    def extra_repr(self) -> str:
        ops = ", ".join(f"{op}={self.strength[op]:g}" for op in self.enabled_ops)
        return f"p={float(self.p):.4f}, {ops or 'no ops'}"

    # -- drawing ---------------------------------------------------------------------------------

    def sample_params(
        self,
        shape: tuple[int, int, int, int] | torch.Size,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draw the augmentation of a batch of images of ``shape`` [N, C, H, W].

        ``generator`` (on ``device``) makes the draw reproducible; None uses the global RNG.
        """
        n, c, h, w = (int(s) for s in shape)
        on = self.strength
        p = self.p.to(device=device, dtype=dtype)

        def rand(*s: int) -> torch.Tensor:
            return torch.rand(s, generator=generator, device=device, dtype=dtype)

        def randn(*s: int) -> torch.Tensor:
            return torch.randn(s, generator=generator, device=device, dtype=dtype)

        def randint(high: int) -> torch.Tensor:
            return torch.randint(high, (n,), generator=generator, device=device).to(dtype)

        def gate(prob: torch.Tensor) -> torch.Tensor:
            return rand(n) < prob

        out = AugmentParams()
        zero, one = (
            torch.zeros(n, device=device, dtype=dtype),
            torch.ones(n, device=device, dtype=dtype),
        )

        # Blit and geom: compose the inverse matrix (output -> input) by right-multiplying the
        # inverse of each op, so the ops act on the image in the listed order.
        if any(on[op] > 0 for op in BLIT_OPS + GEOM_OPS):
            g = torch.eye(3, device=device, dtype=dtype).expand(n, 3, 3)
            if on["xflip"] > 0:
                m = gate(p * on["xflip"])
                i = torch.where(m, randint(2), zero)
                g = _mm(g, _scale2d(1 - 2 * i, one))
                out.applied["xflip"] = m
            if on["rotate90"] > 0:
                m = gate(p * on["rotate90"])
                i = torch.where(m, randint(4), zero).long()
                cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device, dtype=dtype)[i]
                sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device, dtype=dtype)[i]
                g = _mm(g, _rotate2d(cos, sin))  # inverse of rotate2d(-i * pi/2)
                out.applied["rotate90"] = m
            if on["xint"] > 0:
                m = gate(p * on["xint"])
                t = (rand(n, 2) * 2 - 1) * self.xint_max
                tx = torch.where(m, torch.round(t[:, 0] * w), zero)
                ty = torch.where(m, torch.round(t[:, 1] * h), zero)
                g = _mm(g, _translate2d(-tx, -ty))
                out.applied["xint"] = m
            if on["scale"] > 0:
                m = gate(p * on["scale"])
                s = torch.where(m, torch.exp2(randn(n) * self.scale_std), one)
                g = _mm(g, _scale2d(1 / s, 1 / s))
                out.applied["scale"] = m
            p_rot = 1 - torch.sqrt((1 - p * on["rotate"]).clamp(0, 1))
            rotated = torch.zeros(n, dtype=torch.bool, device=device)
            if on["rotate"] > 0:
                m = gate(p_rot)
                theta = torch.where(m, (rand(n) * 2 - 1) * math.pi * self.rotate_max, zero)
                g = _mm(g, _rotate2d(theta.cos(), theta.sin()))  # inverse of rotate2d(-theta)
                rotated = rotated | m
            if on["aniso"] > 0:
                m = gate(p * on["aniso"])
                s = torch.where(m, torch.exp2(randn(n) * self.aniso_std), one)
                g = _mm(g, _scale2d(1 / s, s))
                out.applied["aniso"] = m
            if on["rotate"] > 0:
                m = gate(p_rot)
                theta = torch.where(m, (rand(n) * 2 - 1) * math.pi * self.rotate_max, zero)
                g = _mm(g, _rotate2d(theta.cos(), theta.sin()))
                out.applied["rotate"] = rotated | m
            if on["xfrac"] > 0:
                m = gate(p * on["xfrac"])
                t = randn(n, 2) * self.xfrac_std
                tx = torch.where(m, t[:, 0] * w, zero)
                ty = torch.where(m, t[:, 1] * h, zero)
                g = _mm(g, _translate2d(-tx, -ty))
                out.applied["xfrac"] = m
            out.geom_inv = g
            out.smooth = any(on[op] > 0 for op in GEOM_OPS)

        # Color: compose the forward 4x4 matrix by left-multiplying each op.
        if any(on[op] > 0 for op in COLOR_OPS):
            cm = torch.eye(4, device=device, dtype=dtype).expand(n, 4, 4)
            v = _luma_axis(zero)
            vv = torch.outer(v, v)
            eye4 = torch.eye(4, device=device, dtype=dtype)
            if on["brightness"] > 0:
                m = gate(p * on["brightness"])
                b = torch.where(m, randn(n) * self.brightness_std, zero)
                cm = _mm(_translate3d(b), cm)
                out.applied["brightness"] = m
            if on["contrast"] > 0:
                m = gate(p * on["contrast"])
                s = torch.where(m, torch.exp2(randn(n) * self.contrast_std), one)
                cm = _mm(_scale3d(s), cm)
                out.applied["contrast"] = m
            if on["lumaflip"] > 0:
                m = gate(p * on["lumaflip"])
                i = torch.where(m, randint(2), zero)
                cm = _mm(eye4 - 2 * vv * i[:, None, None], cm)
                out.applied["lumaflip"] = m
            if on["hue"] > 0:
                m = gate(p * on["hue"])
                theta = torch.where(m, (rand(n) * 2 - 1) * math.pi * self.hue_max, zero)
                cm = _mm(_rotate3d_luma(theta), cm)
                out.applied["hue"] = m
            if on["saturation"] > 0:
                m = gate(p * on["saturation"])
                s = torch.where(m, torch.exp2(randn(n) * self.saturation_std), one)
                sat = vv + (eye4 - vv) * s[:, None, None]
                sat[:, 3, 3] = 1  # act on the colour block only
                cm = _mm(sat, cm)
                out.applied["saturation"] = m
            out.color = cm
            out.color_mask = torch.stack([out.applied[op] for op in COLOR_OPS if on[op] > 0]).any(0)

        if on["imgfilter"] > 0:
            lam = torch.tensor(FILTER_BAND_POWER, device=device, dtype=dtype)
            gains = torch.ones(n, 4, device=device, dtype=dtype)
            masks = []
            for band in range(4):
                m = gate(p * on["imgfilter"])
                t = torch.ones(n, 4, device=device, dtype=dtype)
                t[:, band] = torch.exp2(randn(n) * self.imgfilter_std)
                t = t / (lam * t.square()).sum(dim=1, keepdim=True).sqrt()
                gains = gains * torch.where(m[:, None], t, 1.0)
                masks.append(m)
            out.filter_gains = gains
            out.filter_mask = torch.stack(masks).any(0)
            out.applied["imgfilter"] = out.filter_mask

        if on["noise"] > 0:
            m = gate(p * on["noise"])
            out.noise_sigma = torch.where(m, randn(n).abs() * self.noise_std, zero)
            out.noise = randn(n, c, h, w)
            out.noise_mask = m
            out.applied["noise"] = m

        if on["cutout"] > 0:
            m = gate(p * on["cutout"])
            out.cutout_center = rand(n, 2)
            out.cutout_mask = m
            out.applied["cutout"] = m
        return out

    # -- applying --------------------------------------------------------------------------------

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply drawn ``params`` to ``images`` [N, C, H, W] (deterministic, differentiable)."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"expected float images [N, C, H, W], got {tuple(images.shape)}")
        x = images
        n, c, h, w = x.shape

        if params.geom_inv is not None:
            g_inv = params.geom_inv.to(x.dtype)
            src = _pixel_grid(n, h, w, g_inv, step=1.0, margin=0)
            exact = _resample_lattice(x, src)
            if params.smooth:
                smooth = _resample_smooth(x, g_inv, self.lowpass)
                exact = _where_samples(_is_lattice(g_inv, src, h, w), exact, smooth)
            x = exact

        if params.color is not None:
            cm = params.color.to(x.dtype)
            if c == 3:
                y = (cm[:, :3, :3, None, None] * x[:, None]).sum(2) + cm[:, :3, 3, None, None]
            elif c == 1:  # grey (y, y, y) -> transform -> mean of r, g, b
                gain = cm[:, :3, :3].sum(dim=2).mean(dim=1)
                y = x * gain[:, None, None, None] + cm[:, :3, 3].mean(dim=1)[:, None, None, None]
            else:
                raise ValueError(f"colour augmentation needs 1 or 3 channels, got {c}")
            x = _where_samples(params.color_mask, y, x)

        if params.filter_gains is not None:
            bank = self.bank.to(device=x.device, dtype=x.dtype)
            f = (params.filter_gains.to(x.dtype)[:, :, None] * bank).sum(1)  # [N, L]
            pad = bank.shape[1] // 2
            y = _depthwise_1d(_pad_symmetric(x, pad), f, dim=-1)
            y = _depthwise_1d(y, f, dim=-2)
            x = _where_samples(params.filter_mask, y, x)

        if params.noise is not None:
            y = x + params.noise.to(x.dtype) * params.noise_sigma.to(x.dtype)[:, None, None, None]
            x = _where_samples(params.noise_mask, y, x)

        if params.cutout_center is not None:
            ctr = params.cutout_center.to(x.dtype)
            half = self.cutout_size / 2
            cx = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
            cy = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
            inside_x = (cx[None, :] - ctr[:, 0:1]).abs() < half  # [N, W]
            inside_y = (cy[None, :] - ctr[:, 1:2]).abs() < half  # [N, H]
            cut = inside_y[:, :, None] & inside_x[:, None, :] & params.cutout_mask[:, None, None]
            x = torch.where(cut[:, None], torch.zeros_like(x), x)
        return x

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment a batch ``[N, C, H, W]``; each op hits each sample with probability ``p``."""
        params = self.sample_params(images.shape, images.device, images.dtype, generator)
        return self.apply(images, params)


def make_augment_pipe(spec: str, *, p: float = 0.0) -> AugmentPipe:
    """Build a pipeline from a preset name (``blit``, ``geom``, ``color``, ``filter``, ``noise``,
    ``cutout``, ``bg``, ``bgc``, ``bgcf``, ``bgcfn``, ``bgcfnc``) or a comma-separated list of op
    and preset names (``"scale,xflip,noise"``, ``"bg,noise"``), each op with strength 1."""
    ops: set[str] = set()
    for token in (t.strip() for t in spec.split(",")):
        if token in PRESETS:
            ops.update(PRESETS[token])
        elif token in OP_NAMES:
            ops.add(token)
        else:
            raise ValueError(
                f"unknown augmentation {token!r} in {spec!r}; expected a preset "
                f"({', '.join(PRESETS)}) or a comma-separated list of ops ({', '.join(OP_NAMES)})"
            )
    return AugmentPipe(**{op: 1.0 for op in ops}, p=p)


# ---------------------------------------------------------------------------------------------
# The p controller


class AdaController:
    """Adjusts ADA's p from the overfitting heuristic r_t = E[sign(D(real))] (paper, Sec. 3).

    Call :meth:`update` once per minibatch with the discriminator's logits on the (augmented)
    real images; every ``interval`` minibatches ``p`` moves by
    ``sign(r_t - target) * batch_size * interval / (kimg * 1000)``, clamped to [0, 1], so that
    p can go from 0 to 1 in ``kimg`` thousand images. With several processes, pass every
    process's logits (gathered) or the per-process sums to :meth:`accumulate_counts`.
    """

    def __init__(
        self,
        target: float = 0.6,  # r_t the controller aims for
        interval: int = 4,  # minibatches between adjustments
        kimg: float = 500,  # thousands of images for p to go 0 -> 1
        *,
        batch_size: int,  # images per minibatch (all processes together)
        p: float = 0.0,  # initial p
    ) -> None:
        if interval < 1 or kimg <= 0 or batch_size < 1:
            raise ValueError("AdaController needs interval >= 1, kimg > 0 and batch_size >= 1")
        self.target, self.interval, self.kimg, self.batch_size = target, interval, kimg, batch_size
        self.p = float(p)
        self.r_t: float | None = None  # last measured r_t (None before the first adjustment)
        self._sign_sum: torch.Tensor | float = 0.0
        self._count = 0
        self._batches = 0

    @property
    def step_size(self) -> float:
        """How much one adjustment moves p."""
        return self.batch_size * self.interval / (self.kimg * 1000)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add the signs of a batch of real logits (kept on their device until the update)."""
        signs = torch.sign(real_logits.detach()).float()  # exact sums to 2**24, even for fp16
        self._sign_sum = self._sign_sum + signs.sum()
        self._count += real_logits.numel()

    def accumulate_counts(self, sign_sum: float, count: int) -> None:
        """Add a precomputed sum of signs over ``count`` logits."""
        self._sign_sum = self._sign_sum + sign_sum
        self._count += int(count)

    def step(self) -> bool:
        """End one minibatch; every ``interval``-th call adjusts p. Returns True if it did."""
        self._batches += 1
        if self._batches < self.interval:
            return False
        self._batches = 0
        if self._count == 0:
            return False
        self.r_t = float(self._sign_sum) / self._count
        self.p = min(
            max(self.p + float(np.sign(self.r_t - self.target)) * self.step_size, 0.0), 1.0
        )
        self._sign_sum, self._count = 0.0, 0
        return True

    def update(self, real_logits: torch.Tensor) -> bool:
        """:meth:`accumulate` then :meth:`step`."""
        self.accumulate(real_logits)
        return self.step()

    def state_dict(self) -> dict[str, float | int | None]:
        """The resumable state (p, last r_t and the partial interval), as plain numbers."""
        return {
            "p": self.p,
            "r_t": self.r_t,
            "sign_sum": float(self._sign_sum),
            "count": self._count,
            "batches": self._batches,
        }

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Restore :meth:`state_dict` output (the settings stay those of the constructor)."""
        missing = {"p", "r_t", "sign_sum", "count", "batches"} - set(state)
        if missing:
            raise KeyError(f"AdaController state is missing {sorted(missing)}")
        self.p = float(state["p"])
        self.r_t = None if state["r_t"] is None else float(state["r_t"])
        self._sign_sum = float(state["sign_sum"])
        self._count = int(state["count"])
        self._batches = int(state["batches"])
