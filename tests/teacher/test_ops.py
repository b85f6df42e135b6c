"""Reference tests of the StyleGAN2 ops against direct (slow, loop-based) formulations.

Each reference below is written from the definition of the operation, independently of
``teacher.ops``. Tolerances are float32 rounding levels (atol 1e-5 unless stated).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from teacher import ops
from teacher.networks import Conv2dLayer, FullyConnectedLayer

ATOL = 1e-5


def upfirdn2d_reference(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip=False, gain=1.0):
    """Per-sample loops over the textbook definition: zero-stuff, pad/crop, convolve, decimate."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f) * gain
    else:
        f = f * gain
    if not flip:
        f = f[::-1, ::-1]  # true convolution = correlation with the flipped filter
    n, c, h, w = x.shape
    ux, uy = up
    dx, dy = down
    px0, px1, py0, py1 = pad
    z = np.zeros([n, c, h * uy, w * ux])
    z[:, :, ::uy, ::ux] = x
    hh, ww = z.shape[2] + py0 + py1, z.shape[3] + px0 + px1
    padded = np.zeros([n, c, hh, ww])
    for i in range(hh):
        for j in range(ww):
            si, sj = i - py0, j - px0
            if 0 <= si < z.shape[2] and 0 <= sj < z.shape[3]:
                padded[:, :, i, j] = z[:, :, si, sj]
    fh, fw = f.shape
    oh, ow = hh - fh + 1, ww - fw + 1
    out = np.zeros([n, c, oh, ow])
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = (padded[:, :, i : i + fh, j : j + fw] * f).sum(axis=(2, 3))
    return torch.from_numpy(out[:, :, ::dy, ::dx]).float()


@pytest.mark.parametrize(
    "up,down,pad,flip,gain",
    [
        (1, 1, (1, 2, 0, 1), False, 1.0),
        (2, 1, (2, 1, 2, 1), False, 4.0),
        (1, 2, (1, 1, 1, 1), False, 1.0),
        (2, 2, (0, 0, 0, 0), True, 2.0),
        (1, 1, (-1, 2, 1, -2), False, 1.0),  # negative padding crops
        ((2, 1), (1, 2), (1, 0, 0, 1), False, 1.0),  # anisotropic factors
    ],
)
def test_upfirdn2d_matches_direct_definition(up, down, pad, flip, gain):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 6)
    f = torch.rand(4, 3) + 0.1  # asymmetric, so a flip error shows
    out = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    upp = (up, up) if isinstance(up, int) else up
    dn = (down, down) if isinstance(down, int) else down
    ref = upfirdn2d_reference(x, f, up=upp, down=dn, pad=pad, flip=flip, gain=gain)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=ATOL)


def test_upfirdn2d_separable_filter_equals_outer_product():
    x = torch.randn(1, 2, 9, 9)
    taps = torch.tensor([1.0, 2, 5, 3, 3, 5, 2, 1])
    f1 = ops.make_filter(taps)  # 8 taps: stays 1-D
    assert f1.ndim == 1
    out = ops.upfirdn2d(x, f1, up=2, padding=[4, 3, 4, 3], gain=4)
    ref = upfirdn2d_reference(x, f1, up=(2, 2), pad=(4, 3, 4, 3), gain=4)
    assert torch.allclose(out, ref, atol=ATOL)


def test_make_filter_builds_normalised_binomial():
    f = ops.make_filter([1, 3, 3, 1])
    expected = torch.tensor([1.0, 3, 3, 1])[:, None] * torch.tensor([1.0, 3, 3, 1])[None] / 64
    assert f.shape == (4, 4) and torch.allclose(f, expected)


def test_resampling_keeps_flat_images_flat_and_sizes_exact():
    f = ops.make_filter([1, 3, 3, 1])
    x = torch.full([1, 1, 8, 8], 0.75)
    up = ops.upsample2d(x, f)
    down = ops.downsample2d(x, f)
    assert up.shape == (1, 1, 16, 16) and down.shape == (1, 1, 4, 4)
    # Away from the zero-padded border the DC gain is exactly 1.
    assert torch.allclose(
        up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.75), atol=1e-6
    )
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.full([1, 1, 2, 2], 0.75), atol=1e-6)


def _zero_stuff(x, up):
    n, c, h, w = x.shape
    z = x.new_zeros([n, c, h * up - (up - 1), w * up - (up - 1)])
    z[:, :, ::up, ::up] = x
    return z


def test_upsampling_conv_equals_zero_insertion_then_flipped_kernel_then_fir():
    """The relation stated for NVIDIA's up-conv: transposed conv with the unflipped kernel ==
    zero insertion + correlation with the spatially flipped kernel, then the [1,3,3,1] FIR
    (gain 4)."""
    torch.manual_seed(2)
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(6, 4, 3, 3)
    f = ops.make_filter([1, 3, 3, 1])
    out = ops.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)
    z = F.pad(_zero_stuff(x, 2), [2, 2, 2, 2])
    y = F.conv2d(z, w.flip([2, 3]))
    ref = upfirdn2d_reference(y, f, pad=(1, 1, 1, 1), gain=4)
    assert out.shape == (2, 6, 10, 10)
    assert torch.allclose(out, ref, atol=1e-4)


def test_downsampling_conv_is_fir_then_strided_correlation():
    torch.manual_seed(3)
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(5, 4, 3, 3)
    f = ops.make_filter([1, 3, 3, 1])
    out = ops.conv2d_resample(x, w, f=f, down=2, padding=1)
    blurred = upfirdn2d_reference(x, f, pad=(2, 2, 2, 2))
    ref = F.conv2d(blurred, w, stride=2)
    assert out.shape == (2, 5, 4, 4)
    assert torch.allclose(out, ref, atol=1e-4)


def test_1x1_resampling_convs_commute_with_the_filter():
    torch.manual_seed(4)
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(2, 3, 1, 1)
    f = ops.make_filter([1, 3, 3, 1])
    down = ops.conv2d_resample(x, w, f=f, down=2)
    assert torch.allclose(down, F.conv2d(ops.downsample2d(x, f), w), atol=ATOL)
    up = ops.conv2d_resample(x, w, f=f, up=2)
    assert torch.allclose(up, ops.upsample2d(F.conv2d(x, w), f), atol=ATOL)


def _modconv_reference(x, weight, styles, demodulate, noise=None, up=1, f=None):
    outs = []
    for n in range(x.shape[0]):
        wn = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            wn = wn / (wn.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        pad = weight.shape[-1] // 2
        if up == 1:
            y = F.conv2d(x[n : n + 1], wn, padding=pad)
        else:
            z = F.pad(_zero_stuff(x[n : n + 1], 2), [2, 2, 2, 2])
            y = upfirdn2d_reference(F.conv2d(z, wn.flip([2, 3])), f, pad=(1, 1, 1, 1), gain=4)
        outs.append(y)
    out = torch.cat(outs)
    return out + noise if noise is not None else out


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_matches_per_sample_kernels(fused, demodulate, up):
    torch.manual_seed(5)
    x = torch.randn(3, 4, 6, 6)
    weight = torch.randn(5, 4, 3, 3)
    styles = torch.randn(3, 4)
    f = ops.make_filter([1, 3, 3, 1])
    noise = torch.randn(3, 1, 6 * up, 6 * up)
    out = ops.modulated_conv2d(
        x,
        weight,
        styles,
        noise=noise,
        up=up,
        padding=1,
        resample_filter=f,
        demodulate=demodulate,
        flip_weight=(up == 1),
        fused_modconv=fused,
    )
    ref = _modconv_reference(x, weight, styles, demodulate, noise=noise, up=up, f=f)
    assert torch.allclose(out, ref, atol=1e-4)


def test_demodulated_kernels_have_unit_norm_so_output_ignores_style_scale():
    x = torch.randn(2, 4, 5, 5)
    weight = torch.randn(3, 4, 3, 3)
    styles = torch.randn(2, 4)
    a = ops.modulated_conv2d(x, weight, styles, padding=1)
    b = ops.modulated_conv2d(x, weight, styles * 7.0, padding=1)
    assert torch.allclose(a, b, atol=1e-4)


def test_modulated_conv_float16_prenormalisation_is_harmless():
    x = torch.randn(2, 4, 6, 6)
    weight = torch.randn(5, 4, 3, 3) * 50
    styles = torch.randn(2, 4) * 30
    ref = ops.modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)
    half = ops.modulated_conv2d(x.half(), weight, styles, padding=1, fused_modconv=False)
    assert half.dtype == torch.float16
    assert torch.allclose(half.float(), ref, atol=0.02)


def test_minibatch_std_groups_strided_samples():
    torch.manual_seed(6)
    n, c, h, w, g, f = 6, 4, 3, 3, 3, 2
    x = torch.randn(n, c, h, w)
    out = ops.minibatch_std(x, group_size=g, num_channels=f)
    assert out.shape == (n, c + f, h, w)
    assert torch.equal(out[:, :c], x)
    m = n // g
    for i in range(n):
        members = [j for j in range(n) if j % m == i % m]  # {i, i+N/G, i+2N/G, ...}
        grp = x[members].double()
        for k in range(f):
            part = grp[:, k * (c // f) : (k + 1) * (c // f)]
            std = (part.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            assert torch.allclose(out[i, c + k], torch.full([h, w], float(std)), atol=1e-6)


def test_minibatch_std_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible"):
        ops.minibatch_std(torch.randn(5, 2, 2, 2), group_size=2)


def test_bias_act_gain_then_clamp():
    x = torch.linspace(-3, 3, 13).reshape(1, 13, 1, 1)
    b = torch.full([13], 0.5)
    y = ops.bias_act(x, b, act="lrelu", gain=None, clamp=1.5)
    pre = x + 0.5
    ref = torch.where(pre >= 0, pre, 0.2 * pre) * math.sqrt(2)
    assert torch.allclose(y, ref.clamp(-1.5, 1.5))
    assert torch.equal(ops.bias_act(x, act="linear"), x)
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act(x, act="gelu2")


def test_normalize_2nd_moment_gives_unit_mean_square():
    x = torch.randn(4, 16) * 5
    y = ops.normalize_2nd_moment(x)
    assert torch.allclose(y.square().mean(dim=1), torch.ones(4), atol=1e-5)


def test_equalized_learning_rate_scaling():
    torch.manual_seed(7)
    fc = FullyConnectedLayer(8, 3, activation="linear", lr_multiplier=0.01, bias_init=0.3)
    with torch.no_grad():
        fc.bias.copy_(torch.randn(3) * 10)
    x = torch.randn(2, 8)
    ref = x @ (fc.weight * 0.01 / math.sqrt(8)).t() + fc.bias * 0.01
    assert torch.allclose(fc(x), ref, atol=1e-6)
    # Stored weights are randn / lr_multiplier, so the effective weights have unit-ish scale.
    assert 20 < float(fc.weight.detach().std()) < 250

    conv = Conv2dLayer(4, 2, kernel_size=3, activation="lrelu")
    with torch.no_grad():
        conv.bias.copy_(torch.randn(2))
    x = torch.randn(1, 4, 5, 5)
    pre = F.conv2d(x, conv.weight / math.sqrt(4 * 9), padding=1) + conv.bias.reshape(1, -1, 1, 1)
    assert torch.allclose(conv(x), F.leaky_relu(pre, 0.2) * math.sqrt(2), atol=1e-5)
