"""Tests of the ADA augmentation pipeline and p controller (``teacher.augment``).

References are written here from the paper's definitions (Karras et al. 2020, Appendix B):
exact index arithmetic for the blit ops, closed-form expectations for the application rates.
Rates use N samples and a tolerance of about 6 binomial standard deviations, with a fixed seed
(so the tests are deterministic, and the tolerance says how unlikely a failure would be by
chance with another seed).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from teacher.augment import (
    OP_NAMES,
    PRESETS,
    AdaController,
    AugmentPipe,
    filter_bank,
    make_augment_pipe,
)


def _images(n: int = 8, c: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


def _smooth_images(n: int = 4, size: int = 32, seed: int = 2) -> torch.Tensor:
    """Band-limited images (bicubic upsampling of 6x6 noise), for interpolation checks."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False)


def _pipe(spec: str, p: float) -> AugmentPipe:
    return make_augment_pipe(spec, p=p)


# ---------------------------------------------------------------------------------------------
# p = 0 and non-augmented samples


@pytest.mark.parametrize("spec", [*PRESETS, "scale,xflip,noise", "bg,noise"])
@pytest.mark.parametrize("channels", [1, 3])
def test_p0_is_bit_exact_identity(spec, channels):
    x = _images(c=channels)
    y = _pipe(spec, 0.0)(x)
    assert torch.equal(y, x)


def test_samples_without_ops_are_unchanged():
    """At p = 0.2 every sample that drew no op at all comes out bit-exact."""
    pipe = _pipe("bgcfnc", 0.2)
    x = _images(n=64)
    params = pipe.sample_params(x.shape)
    y = pipe.apply(x, params)
    untouched = ~torch.stack(list(params.applied.values())).any(0)
    assert untouched.sum() > 0 and (~untouched).sum() > 0
    assert torch.equal(y[untouched], x[untouched])
    assert not torch.equal(y[~untouched], x[~untouched])


# ---------------------------------------------------------------------------------------------
# Every op at p = 1


@pytest.mark.parametrize("op", OP_NAMES)
def test_each_op_changes_images_and_passes_gradients(op):
    # xflip, rotate90 and lumaflip pick the identity with probability 1/2, 1/4, 1/2 even at
    # p = 1 (paper); over 16 samples some sample changes.
    pipe = _pipe(op, 1.0)
    x = _images(n=16).requires_grad_(True)
    y = pipe(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y.detach(), x.detach())
    weights = torch.randn(y.shape)
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_second_order_gradients():
    """R1 on augmented reals differentiates the input gradient again. The double-backward
    Hessian-vector product of sum(aug(x)^2) must match central differences of the gradient
    (float64; the pipeline is affine in x for fixed params, so the differences are exact up to
    rounding)."""
    pipe = _pipe("bgcfnc", 1.0)
    x = _images(n=2, size=8).double().requires_grad_(True)
    params = pipe.sample_params(x.shape, dtype=torch.float64)

    def grad(t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return torch.autograd.grad(
            pipe.apply(t, params).square().sum(), t, create_graph=create_graph
        )[0]

    v = torch.randn(x.shape, dtype=torch.float64)
    (hvp,) = torch.autograd.grad((grad(x, create_graph=True) * v).sum(), x)
    eps = 1e-3
    xp = (x.detach() + eps * v).requires_grad_(True)
    xm = (x.detach() - eps * v).requires_grad_(True)
    numeric = (grad(xp) - grad(xm)) / (2 * eps)
    assert hvp.abs().max() > 0
    torch.testing.assert_close(hvp, numeric, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Blit ops are exact pixel permutations


def test_xflip_is_exact_flip_or_identity():
    x = _images(n=64)
    y = _pipe("xflip", 1.0)(x)
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(y, x, strict=True)])
    same = torch.tensor([torch.equal(a, b) for a, b in zip(y, x, strict=True)])
    assert (flipped | same).all()
    assert flipped.any() and same.any()


def test_rotate90_is_one_of_four_exact_rotations():
    x = _images(n=64)
    y = _pipe("rotate90", 1.0)(x)
    seen = set()
    for a, b in zip(y, x, strict=True):
        ks = [k for k in range(4) if torch.equal(a, torch.rot90(b, k, dims=(-2, -1)))]
        assert len(ks) == 1
        seen.add(ks[0])
    assert seen == {0, 1, 2, 3}


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def test_integer_translation_is_reflected_shift():
    """out[i, j] = in[i - ty, j - tx] with symmetric reflection (index -1 reads 0)."""
    pipe = _pipe("xint", 1.0)
    pipe.xint_max = 0.25  # larger shifts reach the reflected border more often
    x = _images(n=16, size=16)
    params = pipe.sample_params(x.shape)
    y = pipe.apply(x, params).numpy()
    tx = -params.geom_inv[:, 0, 2].numpy()
    ty = -params.geom_inv[:, 1, 2].numpy()
    assert np.all(tx == np.round(tx)) and np.any(tx != 0)
    rows, cols = np.arange(16), np.arange(16)
    xn = x.numpy()
    for k in range(16):
        r = _reflect(rows - int(ty[k]), 16)
        c = _reflect(cols - int(tx[k]), 16)
        np.testing.assert_array_equal(y[k], xn[k][:, r][:, :, c])
        assert set(np.unique(y[k])) <= set(np.unique(xn[k]))


def test_smooth_resampling_matches_exact_path_for_lattice_matrices():
    """The interpolating path (used for geom ops) follows the same coordinate convention as the
    exact gather: for a rot90 + integer shift it agrees up to the anti-aliasing blur."""
    from teacher.augment import _pixel_grid, _resample_lattice, _resample_smooth

    x = _smooth_images(n=2, size=32)
    g = torch.tensor([[0.0, -1.0, 3.0], [1.0, 0.0, -2.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    exact = _resample_lattice(x, _pixel_grid(2, 32, 32, g, step=1.0, margin=0))
    smooth = _resample_smooth(x, g, AugmentPipe().lowpass)
    # Tolerance: the half-band filter's passband droop on these band-limited images.
    assert (exact - smooth).abs().max() < 0.05 * x.abs().max()


# ---------------------------------------------------------------------------------------------
# Probabilities


def test_application_rates_at_p03():
    n, p = 20000, 0.3
    pipe = AugmentPipe(**{op: 1.0 for op in OP_NAMES}, p=p)
    params = pipe.sample_params((n, 3, 2, 2), generator=torch.Generator().manual_seed(3))
    tol = 6 * math.sqrt(p * (1 - p) / n)  # ~0.02
    for op in OP_NAMES:
        # rotate: two rotations with 1 - sqrt(1 - p) each, together p; imgfilter: any of 4 bands
        expected = 1 - (1 - p) ** 4 if op == "imgfilter" else p
        rate = params.applied[op].double().mean().item()
        assert rate == pytest.approx(expected, abs=tol), op


def test_strength_multiplies_probability():
    pipe = AugmentPipe(noise=0.5, p=0.3)
    params = pipe.sample_params((20000, 1, 1, 1))
    assert params.applied["noise"].double().mean().item() == pytest.approx(0.15, abs=0.015)


def test_observed_change_rate_at_p03():
    """Outcome, not bookkeeping: the fraction of samples the noise op changes is p."""
    x = _images(n=4000, size=4)
    y = _pipe("noise", 0.3)(x)
    changed = (y != x).flatten(1).any(1).double().mean().item()
    assert changed == pytest.approx(0.3, abs=6 * math.sqrt(0.21 / 4000))


# ---------------------------------------------------------------------------------------------
# Colour, filter, noise, cutout


def test_brightness_only_adds_a_constant():
    pipe = _pipe("brightness", 1.0)
    x = _images(n=8)
    params = pipe.sample_params(x.shape)
    cm = params.color
    assert torch.equal(cm[:, :3, :3], torch.eye(3).expand(8, 3, 3))
    b = cm[:, :3, 3]
    assert torch.equal(b, b[:, :1].expand(8, 3)) and (b != 0).all()
    y = pipe.apply(x, params)
    torch.testing.assert_close(y - x, b[:, :1, None, None].expand_as(x), atol=1e-6, rtol=0)


def test_color_on_one_channel_is_grey_rgb_averaged():
    pipe = _pipe("color", 1.0)
    x1 = _images(n=8, c=1)
    params = pipe.sample_params(x1.shape)
    y1 = pipe.apply(x1, params)
    y3 = pipe.apply(x1.expand(8, 3, 16, 16), params).mean(dim=1, keepdim=True)
    torch.testing.assert_close(y1, y3, atol=1e-5, rtol=0)


def test_hue_and_saturation_keep_grey():
    """Rotation about the luma axis and saturation leave grey pixels (r = g = b) alone."""
    pipe = AugmentPipe(hue=1, saturation=1, p=1.0)
    x = _images(n=8, c=1).expand(8, 3, 16, 16)
    torch.testing.assert_close(pipe(x), x, atol=1e-5, rtol=0)


def test_filter_bank_sums_to_identity_and_separates_bands():
    bank = filter_bank().double()
    delta = torch.zeros(bank.shape[1], dtype=torch.float64)
    delta[bank.shape[1] // 2] = 1
    torch.testing.assert_close(bank.sum(0), delta, atol=1e-6, rtol=0)
    taps = torch.arange(bank.shape[1], dtype=torch.float64) - bank.shape[1] // 2
    centers = [math.pi / 16, 3 * math.pi / 16, 3 * math.pi / 8, 3 * math.pi / 4]
    for i, w in enumerate(centers):
        response = (bank * torch.cos(w * taps)).sum(1)  # symmetric filters: real response
        assert response[i] > 0.9 and (response.abs().sum() - response[i].abs()) < 0.1


def test_noise_std_matches_drawn_sigma():
    pipe = _pipe("noise", 1.0)
    x = _images(n=16, size=64)
    params = pipe.sample_params(x.shape)
    diff = pipe.apply(x, params) - x
    sigma = params.noise_sigma
    # 3 * 64 * 64 values per sample: the std estimate has relative error ~1/sqrt(2 * 12288).
    torch.testing.assert_close(diff.flatten(1).std(1), sigma, rtol=0.05, atol=1e-6)


def test_cutout_zeroes_a_half_size_rectangle():
    pipe = _pipe("cutout", 1.0)
    x = _images(n=2, size=32) + 3  # no zeros in the input
    params = pipe.sample_params(x.shape)
    params.cutout_center = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    y = pipe.apply(x, params)
    assert (y[0] == 0).all(0).sum() == 16 * 16  # centred: a full 16 x 16 square
    assert (y[1] == 0).all(0).sum() == 8 * 8  # in a corner: a quarter of it
    assert torch.equal(y[0, :, :8], x[0, :, :8])


# ---------------------------------------------------------------------------------------------
# Names, reproducibility


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="'bgx'"):
        make_augment_pipe("bgx")
    with pytest.raises(ValueError, match="'zoom'"):
        make_augment_pipe("scale,zoom")
    with pytest.raises(ValueError, match="strength"):
        AugmentPipe(noise=-1)


def test_presets_and_lists_enable_the_right_ops():
    assert make_augment_pipe("bgc").enabled_ops == OP_NAMES[:12]
    assert make_augment_pipe("bgcfnc").enabled_ops == OP_NAMES
    assert make_augment_pipe("filter").enabled_ops == ("imgfilter",)
    assert make_augment_pipe(" scale, xflip ,noise").enabled_ops == ("xflip", "scale", "noise")


def test_fixed_seed_is_reproducible():
    pipe = _pipe("bgcfnc", 0.7)
    x = _images(n=8)
    a = pipe(x, generator=torch.Generator().manual_seed(5))
    b = pipe(x, generator=torch.Generator().manual_seed(5))
    c = pipe(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(7)
    d = pipe(x)
    torch.manual_seed(7)
    assert torch.equal(d, pipe(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_contract():
    pipe = _pipe("bgcfnc", 0.0).cuda()
    x = _images(n=8).cuda().requires_grad_(True)
    assert torch.equal(pipe(x), x)
    pipe.p.fill_(1.0)
    y = pipe(x, generator=torch.Generator("cuda").manual_seed(0))
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    params = pipe.sample_params(x.shape, device="cuda")
    cpu = AugmentPipe(**pipe.strength, p=1.0)
    cpu_params = type(params)(**{k: _to_cpu(v) for k, v in vars(params).items()})
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # full float32 convs
        on_gpu = pipe.apply(x.detach(), params).cpu()
    torch.testing.assert_close(on_gpu, cpu.apply(x.detach().cpu(), cpu_params), atol=1e-4, rtol=0)


def _to_cpu(v):
    if isinstance(v, torch.Tensor):
        return v.cpu()
    if isinstance(v, dict):
        return {k: t.cpu() for k, t in v.items()}
    return v


# ---------------------------------------------------------------------------------------------
# The p controller


def test_ada_controller_rises_then_falls_to_zero():
    ctrl = AdaController(target=0.6, interval=4, kimg=1, batch_size=32)
    step = 32 * 4 / 1000
    assert ctrl.step_size == step
    positive = torch.ones(32)
    p_expected = 0.0
    for interval in range(10):
        for batch in range(4):
            adjusted = ctrl.update(positive)
            assert adjusted == (batch == 3)
        p_expected = min(p_expected + step, 1.0)
        assert ctrl.p == pytest.approx(p_expected, abs=1e-12), interval
        assert ctrl.r_t == 1.0
    assert ctrl.p == 1.0  # clamped above
    mostly_negative = torch.tensor([1.0] * 8 + [-1.0] * 24)  # r_t = -0.5 < target
    for _ in range(12):
        for _ in range(4):
            ctrl.update(mostly_negative)
        p_expected = max(p_expected - step, 0.0)
        assert ctrl.p == pytest.approx(p_expected, abs=1e-12)
        assert ctrl.r_t == -0.5
    assert ctrl.p == 0.0  # clamped below


def test_ada_controller_holds_at_target():
    ctrl = AdaController(target=0.5, interval=1, kimg=1, batch_size=4, p=0.3)
    ctrl.update(torch.tensor([1.0, 1.0, 1.0, -1.0]))  # r_t = 0.5 exactly: sign(0) = 0
    assert ctrl.r_t == 0.5 and ctrl.p == 0.3


def test_ada_controller_state_round_trip():
    a = AdaController(target=0.6, interval=4, kimg=2, batch_size=16)
    logits = [torch.randn(16) + 0.5 for _ in range(11)]
    for t in logits[:6]:  # one adjustment, then half an interval pending
        a.update(t)
    b = AdaController(target=0.6, interval=4, kimg=2, batch_size=16)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    for t in logits[6:]:
        assert a.update(t) == b.update(t)
    assert a.state_dict() == b.state_dict()
    with pytest.raises(KeyError):
        b.load_state_dict({"p": 0.1})


# ---------------------------------------------------------------------------------------------
# scale, rotate, aniso, xfrac, contrast, lumaflip against the paper's matrices and distributions
#
# Karras et al. 2020, Appendix B (written out here, not taken from teacher.augment):
#   scale     s ~ Lognormal(0, (0.2 ln 2)^2)           G = [[s, 0, 0], [0, s, 0], [0, 0, 1]]
#   rotate    theta ~ U(-pi, pi), applied before and after aniso, each with 1 - sqrt(1 - p)
#             G = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]
#   aniso     s ~ Lognormal(0, (0.2 ln 2)^2)           G = [[s, 0, 0], [0, 1/s, 0], [0, 0, 1]]
#   xfrac     t ~ N(0, 0.125^2 I) of the size          G = [[1, 0, tx W], [0, 1, ty H], [0, 0, 1]]
#   contrast  c ~ Lognormal(0, (0.5 ln 2)^2)           C = diag(c, c, c, 1)
#   lumaflip  i ~ U{0, 1}, v = (1, 1, 1, 0) / sqrt(3)  C = I - 2 v v^T i
# G maps input pixel coordinates (centred) to output ones; the pipeline stores its inverse.
# Distributions are checked with a Kolmogorov-Smirnov test on 20000 draws (fixed seed); a
# correct sampler fails it with probability 1e-4.

N_DRAWS = 20000
KS_ALPHA = 1e-4


def _forward_geom(pipe: AugmentPipe, n: int = N_DRAWS, size: int = 64, seed: int = 11):
    params = pipe.sample_params((n, 3, size, size), generator=torch.Generator().manual_seed(seed))
    return torch.linalg.inv(params.geom_inv.double()).numpy(), params


def _ks_pvalue(samples: np.ndarray, cdf) -> float:
    from scipy.stats import kstest

    return kstest(samples, cdf).pvalue


def _normal_cdf(std: float):
    return lambda x: 0.5 * (1 + np.vectorize(math.erf)(np.asarray(x) / (std * math.sqrt(2))))


def test_scale_matrix_and_lognormal_distribution():
    G, _ = _forward_geom(_pipe("scale", 1.0))
    s = G[:, 0, 0]
    expected = np.zeros_like(G)
    expected[:, 0, 0] = expected[:, 1, 1] = s
    expected[:, 2, 2] = 1
    np.testing.assert_allclose(G, expected, atol=1e-6)  # isotropic, no shift, no shear
    assert _ks_pvalue(np.log2(s), _normal_cdf(0.2)) > KS_ALPHA


def test_aniso_matrix_and_lognormal_distribution():
    G, _ = _forward_geom(_pipe("aniso", 1.0))
    s = G[:, 0, 0]
    expected = np.zeros_like(G)
    expected[:, 0, 0], expected[:, 1, 1], expected[:, 2, 2] = s, 1 / s, 1
    np.testing.assert_allclose(G, expected, atol=1e-6)  # s along x, 1/s along y
    assert _ks_pvalue(np.log2(s), _normal_cdf(0.2)) > KS_ALPHA


def _angles(G: np.ndarray) -> np.ndarray:
    rot = np.zeros_like(G)
    theta = np.arctan2(G[:, 1, 0], G[:, 0, 0])
    rot[:, 0, 0] = rot[:, 1, 1] = np.cos(theta)
    rot[:, 1, 0], rot[:, 0, 1] = np.sin(theta), -np.sin(theta)
    rot[:, 2, 2] = 1
    np.testing.assert_allclose(G, rot, atol=1e-6)  # a pure rotation about the centre
    return theta


def test_rotate_matrix_and_distribution():
    # Two rotations of U(-a, a) each at p = 1: with a = pi/2 their sum is triangular on
    # (-pi, pi) (this fails for one rotation, or for another range); with a = pi it is
    # uniform modulo 2 pi.
    a = math.pi / 2
    pipe = _pipe("rotate", 1.0)
    pipe.rotate_max = 0.5
    theta = _angles(_forward_geom(pipe)[0])

    def triangular(x):
        x = np.asarray(x)
        return np.where(x <= 0, (x + 2 * a) ** 2, 8 * a * a - (2 * a - x) ** 2) / (8 * a * a)

    assert _ks_pvalue(theta, triangular) > KS_ALPHA
    theta = _angles(_forward_geom(_pipe("rotate", 1.0))[0])
    assert _ks_pvalue(theta, lambda x: (np.asarray(x) + math.pi) / (2 * math.pi)) > KS_ALPHA
    # At p = 0.5 each rotation has probability 1 - sqrt(0.5); some rotation, 0.5.
    G, params = _forward_geom(_pipe("rotate", 0.5))
    rotated = np.abs(_angles(G)) > 1e-9
    assert rotated.mean() == pytest.approx(0.5, abs=6 * math.sqrt(0.25 / N_DRAWS))
    assert np.array_equal(rotated, params.applied["rotate"].numpy())


def test_rotate_aniso_rotate_has_the_aniso_singular_values():
    """R(theta2) diag(s, 1/s) R(theta1): determinant 1 and singular values s and 1/s, so the
    larger one, in log2, is a half-normal of std 0.2."""
    G, _ = _forward_geom(_pipe("rotate,aniso", 1.0))
    lin = G[:, :2, :2]
    np.testing.assert_allclose(np.linalg.det(lin), 1.0, atol=1e-6)
    np.testing.assert_allclose(G[:, :2, 2], 0.0, atol=1e-9)
    sv = np.linalg.svd(lin, compute_uv=False)
    np.testing.assert_allclose(sv[:, 0] * sv[:, 1], 1.0, atol=1e-6)
    half_normal = _normal_cdf(0.2)
    assert _ks_pvalue(np.log2(sv[:, 0]), lambda x: 2 * half_normal(x) - 1) > KS_ALPHA


def test_xfrac_matrix_and_normal_distribution():
    size = 64
    G, _ = _forward_geom(_pipe("xfrac", 1.0), size=size)
    np.testing.assert_allclose(G[:, :2, :2], np.broadcast_to(np.eye(2), (N_DRAWS, 2, 2)))
    t = G[:, :2, 2] / size
    for k in range(2):
        assert _ks_pvalue(t[:, k], _normal_cdf(0.125)) > KS_ALPHA
    assert abs(np.corrcoef(t.T)[0, 1]) < 6 / math.sqrt(N_DRAWS)  # x and y drawn independently


def _blob(n: int, size: int, center: tuple[float, float], sigma: float = 2.5) -> torch.Tensor:
    """A Gaussian spot at ``center`` (pixel units, origin at the image centre)."""
    c = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    spot = torch.exp(-((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / (2 * sigma**2))
    return spot.expand(n, 3, size, size).float().contiguous()


def _centroids(images: torch.Tensor, near: np.ndarray, radius: float = 14.0) -> np.ndarray:
    """Intensity centroids within ``radius`` px of ``near`` [N, 2]: a zoomed-out image also
    shows the spot's reflections in the padded border, which this window leaves out."""
    size = images.shape[-1]
    c = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    near = torch.from_numpy(near)[:, :, None, None]
    window = (xx - near[:, 0]) ** 2 + (yy - near[:, 1]) ** 2 < radius**2
    w = images[:, 0].double() * window
    total = w.sum((1, 2))
    cx, cy = (w * xx).sum((1, 2)) / total, (w * yy).sum((1, 2)) / total
    return torch.stack([cx, cy], 1).numpy()


@pytest.mark.parametrize("spec", ["scale", "rotate", "aniso", "xfrac", "rotate,aniso"])
def test_geometric_ops_move_image_content_by_their_matrix(spec):
    """A spot at p0 lands at G p0 (G from the drawn parameters): the image moves the way the
    matrix says, not by its inverse or transpose (either would miss by 4 px or more here).
    Tolerance 0.05 px; the resampling moved these centroids by at most 0.006 px."""
    size, p0 = 64, np.array([6.0, -4.0, 1.0])
    pipe = _pipe(spec, 1.0)
    x = _blob(32, size, (p0[0], p0[1]))
    params = pipe.sample_params(x.shape, generator=torch.Generator().manual_seed(4))
    G = torch.linalg.inv(params.geom_inv.double()).numpy()
    want = (G @ p0)[:, :2]
    inside = (np.abs(want) < size / 2 - 12).all(1)  # the spot stays clear of the border
    assert inside.sum() >= 16
    got = _centroids(pipe.apply(x, params), want)
    assert np.abs(got[inside] - want[inside]).max() < 0.05
    moved = np.abs(want - p0[:2]).max(1) > 0.5
    assert moved[inside].any()


def test_contrast_matrix_distribution_and_effect():
    pipe = _pipe("contrast", 1.0)
    params = pipe.sample_params((N_DRAWS, 3, 1, 1), generator=torch.Generator().manual_seed(12))
    C = params.color.double().numpy()
    c = C[:, 0, 0]
    expected = np.zeros_like(C)
    expected[:, 0, 0] = expected[:, 1, 1] = expected[:, 2, 2] = c
    expected[:, 3, 3] = 1
    np.testing.assert_allclose(C, expected, atol=1e-6)  # scales about 0, no offset
    assert _ks_pvalue(np.log2(c), _normal_cdf(0.5)) > KS_ALPHA
    x = _images(n=8)
    params = pipe.sample_params(x.shape)
    y = pipe.apply(x, params)
    torch.testing.assert_close(y, x * params.color[:, 0, 0, None, None, None], atol=1e-6, rtol=0)


def test_lumaflip_is_the_householder_reflection_of_the_luma_axis_half_the_time():
    pipe = _pipe("lumaflip", 1.0)
    params = pipe.sample_params((N_DRAWS, 3, 1, 1), generator=torch.Generator().manual_seed(13))
    C = params.color.double().numpy()
    v = np.array([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3)
    flip = np.eye(4) - 2 * np.outer(v, v)
    is_flip = np.abs(C - flip).max((1, 2)) < 1e-6
    is_eye = np.abs(C - np.eye(4)).max((1, 2)) < 1e-6
    assert (is_flip | is_eye).all()
    assert is_flip.mean() == pytest.approx(0.5, abs=6 * math.sqrt(0.25 / N_DRAWS))
    # On pixels: (r, g, b) -> (r, g, b) - 2/3 (r + g + b), so grey y becomes -y.
    x = _images(n=16)
    params = pipe.sample_params(x.shape, generator=torch.Generator().manual_seed(2))
    y = pipe.apply(x, params)
    flipped = x - 2 / 3 * x.sum(1, keepdim=True)
    was_flipped = (params.color[:, 0, 0] < 0.5)[:, None, None, None]
    torch.testing.assert_close(y, torch.where(was_flipped, flipped, x), atol=1e-6, rtol=0)
    assert was_flipped.any() and (~was_flipped).any()
