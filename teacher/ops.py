"""Pure tensor functions behind the StyleGAN2-ADA layers.

Every function here is stateless: modules in ``teacher.networks`` own the parameters and call
these. The numerics follow the StyleGAN2 / StyleGAN2-ADA papers (Karras et al. 2020) and match
NVIDIA's published snapshots to float32 rounding (see ``tests/teacher/test_parity.py``).

Conventions:
- Images and feature maps are NCHW.
- Padding lists are ``[x_before, x_after, y_before, y_after]``; negative values crop.
- FIR filters are 1-D (separable) or 2-D tensors made by :func:`make_filter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Activations with their default gains (the gain that keeps unit variance for He-initialised
# weights). ``lrelu`` uses slope 0.2 as in StyleGAN.

LRELU_SLOPE = 0.2

ACTIVATION_GAIN: dict[str, float] = {
    "linear": 1.0,
    "relu": math.sqrt(2),
    "lrelu": math.sqrt(2),
    "tanh": 1.0,
    "sigmoid": 1.0,
    "elu": 1.0,
    "selu": 1.0,
    "softplus": 1.0,
    "swish": math.sqrt(2),
}


def _activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "linear":
        return x
    if name == "relu":
        return F.relu(x)
    if name == "lrelu":
        return F.leaky_relu(x, LRELU_SLOPE)
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "elu":
        return F.elu(x)
    if name == "selu":
        return F.selu(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "swish":
        return torch.sigmoid(x) * x
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATION_GAIN)}")


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
    dim: int = 1,
) -> torch.Tensor:
    """Add a bias along ``dim``, apply an activation, scale by ``gain``, then clamp.

    ``gain=None`` uses the activation's default gain (``ACTIVATION_GAIN``). ``clamp`` (if not
    None) limits the result to ``[-clamp, clamp]`` after the gain.
    """
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    x = _activate(x, act)
    if gain is None:
        gain = ACTIVATION_GAIN[act]
    gain = float(gain)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` so that its mean square along ``dim`` is one (StyleGAN's pixel norm)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ---------------------------------------------------------------------------------------------
# FIR filtering


def make_filter(
    taps: Sequence[float] | torch.Tensor | None,
    normalize: bool = True,
    separable: bool | None = None,
) -> torch.Tensor | None:
    """Build a float32 FIR filter from taps.

    A 1-D list of fewer than 8 taps becomes its 2-D outer product (``[1, 3, 3, 1]`` gives the
    4x4 binomial filter); longer lists stay 1-D and are applied separably. With ``normalize``
    the taps sum to one. ``None`` means "no filter".
    """
    if taps is None:
        return None
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2):
        raise ValueError(f"FIR filter must be 1-D or 2-D, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    return f


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """Return ``(width, height)`` of a filter made by :func:`make_filter` (1x1 for None)."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[-1], f.shape[-2]


def _as_pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def _as_padding(p: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(p, int):
        return p, p, p, p
    p = [int(v) for v in p]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p[0], p[1], p[2], p[3]
    raise ValueError(f"padding must have 1, 2 or 4 entries, got {p}")


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with an FIR filter, then decimate.

    This is the classic polyphase resampling primitive: ``up`` inserts ``up - 1`` zeros after
    every sample, ``padding`` (``[x0, x1, y0, y1]``, negative crops) is applied to the upsampled
    signal, the filter is applied as a true convolution (flipped correlation; ``flip_filter``
    turns it into a correlation), and every ``down``-th sample is kept. ``gain`` scales the
    filter (by ``gain`` for 2-D filters, ``sqrt(gain)`` per pass for 1-D ones), so the overall
    signal gain is ``gain``.
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert x.ndim == 4, f"expected NCHW input, got shape {tuple(x.shape)}"
    upx, upy = _as_pair(up)
    downx, downy = _as_pair(down)
    px0, px1, py0, py1 = _as_padding(padding)
    n, c, h, w = x.shape

    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[
        :,
        :,
        max(-py0, 0) : x.shape[2] - max(-py1, 0),
        max(-px0, 0) : x.shape[3] - max(-px1, 0),
    ]

    f = (f * (gain ** (f.ndim / 2))).to(dtype=x.dtype, device=x.device)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        kernel = f[None, None].expand(c, 1, *f.shape)
        x = F.conv2d(x, kernel, groups=c)
    else:
        kernel = f[None, None, None, :].expand(c, 1, 1, f.shape[0])
        x = F.conv2d(x, kernel, groups=c)
        x = F.conv2d(x, kernel.transpose(2, 3), groups=c)

    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


def upsample2d(
    x: torch.Tensor, f: torch.Tensor | None, up: int = 2, gain: float = 1
) -> torch.Tensor:
    """Upsample by ``up`` with an FIR filter so the output is exactly ``up`` times larger."""
    fw, fh = filter_size(f)
    pad = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, gain=gain * up * up)


def downsample2d(
    x: torch.Tensor, f: torch.Tensor | None, down: int = 2, gain: float = 1
) -> torch.Tensor:
    """Low-pass with an FIR filter and decimate so the output is ``down`` times smaller."""
    fw, fh = filter_size(f)
    pad = [(fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, gain=gain)


# ---------------------------------------------------------------------------------------------
# Convolution with FIR resampling


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    """``conv2d`` / ``conv_transpose2d``; ``flip_weight=False`` flips the kernel spatially."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution combined with FIR upsampling (``up=2``) or downsampling (``down=2``).

    - ``down > 1``: the FIR low-pass runs first, then a strided correlation with ``w``
      (1x1 kernels: filter + decimate first, then the 1x1 conv).
    - ``up > 1``: a transposed convolution with stride ``up`` followed by the FIR filter
      (gain ``up**2``); for 1x1 kernels the conv runs first and the result is upsampled.
      Layers call this with ``flip_weight=False`` for upsampling, which means the transposed
      convolution uses the stored kernel without a spatial flip (equivalently: zero insertion
      followed by a correlation with the flipped kernel).
    - otherwise a plain same-padded correlation (``flip_weight=True``).
    """
    out_ch, in_ch_per_group, kh, kw = w.shape
    fw, fh = filter_size(f)
    px0 = px1 = py0 = py1 = int(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)

    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    if up > 1:
        # conv_transpose2d wants [in, out/groups, kh, kw] per group.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_ch // groups, in_ch_per_group, kh, kw)
            w = w.transpose(1, 2).reshape(groups * in_ch_per_group, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(
            x,
            w,
            stride=up,
            padding=(pyt, pxt),
            groups=groups,
            transpose=True,
            flip_weight=not flip_weight,
        )
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x

    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 weight modulation/demodulation around :func:`conv2d_resample`.

    ``weight`` is ``[O, I, k, k]`` (shared), ``styles`` is ``[N, I]`` (per sample). The
    effective kernel of sample ``n`` is ``weight * styles[n]`` along I, divided by its L2 norm
    over (I, k, k) per output channel when ``demodulate``.

    - ``fused_modconv=True``: the per-sample kernels are built explicitly and run as one
      grouped convolution (``groups=N``).
    - ``fused_modconv=False``: the input is scaled by the styles, convolved with the shared
      kernel, and the output scaled by the demodulation coefficients (cheaper for large N).

    ``noise`` (broadcastable to the output) is added after demodulation. For float16 inputs the
    weight and styles are first divided by their max-norms to avoid overflow; demodulation makes
    this a no-op mathematically.
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    assert styles.shape == (n, in_ch), f"styles {tuple(styles.shape)} != {(n, in_ch)}"

    if x.dtype == torch.float16 and demodulate:
        weight = weight * (
            1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        )
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(n, out_ch, 1, 1, 1)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, in_ch, 1, 1)
        x = conv2d_resample(
            x,
            weight.to(x.dtype),
            f=resample_filter,
            up=up,
            down=down,
            padding=padding,
            flip_weight=flip_weight,
        )
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, out_ch, 1, 1))
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(n, out_ch, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    x = x.reshape(1, n * in_ch, *x.shape[2:])
    w = w.reshape(n * out_ch, in_ch, kh, kw)
    x = conv2d_resample(
        x,
        w.to(x.dtype),
        f=resample_filter,
        up=up,
        down=down,
        padding=padding,
        groups=n,
        flip_weight=flip_weight,
    )
    x = x.reshape(n, out_ch, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def minibatch_std(x: torch.Tensor, group_size: int | None, num_channels: int = 1) -> torch.Tensor:
    """Append the minibatch standard deviation as ``num_channels`` extra feature maps.

    The batch is split into groups of ``G = min(group_size, N)`` samples taken with stride
    ``N // G`` (sample ``i`` is grouped with ``i + N/G``, ``i + 2N/G``, ...). Within each group
    the per-feature standard deviation is averaged over (channels of the split, H, W), giving
    one scalar per sample and split, broadcast over H and W.
    """
    n, c, h, w = x.shape
    g = min(group_size, n) if group_size is not None else n
    if n % g != 0:
        raise ValueError(f"minibatch std: batch {n} is not divisible by group size {g}")
    f = num_channels
    y = x.reshape(g, -1, f, c // f, h, w)
    y = y - y.mean(dim=0)
    y = y.square().mean(dim=0)
    y = (y + 1e-8).sqrt()
    y = y.mean(dim=[2, 3, 4])
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)
