"""Tests for teacher.metrics: FID, KID, precision/recall, feature networks and evaluate().

References: closed forms (the Frechet distance of diagonal Gaussians), scipy.linalg.sqrtm (what
NVIDIA's FID uses) when scipy is installed, and slow loop / brute-force versions written here.
The feature networks are tiny TorchScript stand-ins with the call signatures of NVIDIA's files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from teacher import metrics
from teacher.metrics import (
    FeatureNet,
    MetricsError,
    compute_fid,
    compute_kid,
    compute_precision_recall,
    evaluate,
    feature_mean_cov,
    features_from_dataset,
    features_from_generator,
    frechet_distance,
    inside_manifold,
    knn_radii,
    pairwise_distances,
)
from tests.conftest import tiny_generator

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# ---------------------------------------------------------------------------------------------
# Stand-in feature networks (same call signatures as NVIDIA's TorchScript files)


class StandInInception(nn.Module):
    """Like inception-2015-12-05.pt: uint8 images, ``return_features=True`` -> [N, 16]."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("proj", torch.randn(48, 16, generator=g))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise RuntimeError("stand-in inception wants uint8 images")
        if not return_features:
            raise RuntimeError("stand-in inception: call with return_features=True")
        f = F.adaptive_avg_pool2d(x.to(torch.float32) / 255, 4).flatten(1)
        return f @ self.proj


class StandInVGG16(nn.Module):
    """Like vgg16.pt: ``return_features=True`` -> [N, 12] fc-like features (uint8 input);
    ``resize_images=False, return_lpips=True`` -> unit-norm features of images <= 256 px."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.register_buffer("proj", torch.randn(12, 12, generator=g))

    def forward(
        self,
        x: torch.Tensor,
        resize_images: bool = True,
        return_lpips: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        if return_lpips:
            if resize_images:
                raise RuntimeError("stand-in vgg16: LPIPS features want resize_images=False")
            if x.shape[2] > 256 or x.shape[3] > 256:
                raise RuntimeError("stand-in vgg16: LPIPS images must be at most 256 px")
            f = F.adaptive_avg_pool2d(x.to(torch.float32) / 255, 2).flatten(1)
            return f / torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp(min=1e-8)
        if not return_features:
            raise RuntimeError("stand-in vgg16: call with return_features=True")
        if x.dtype != torch.uint8:
            raise RuntimeError("stand-in vgg16 wants uint8 images")
        f = F.adaptive_avg_pool2d(x.to(torch.float32) / 255, 2).flatten(1)
        return f @ self.proj


@pytest.fixture(scope="module")
def feature_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The stand-ins saved as TorchScript files, once per test module."""
    folder = tmp_path_factory.mktemp("feature_nets")
    paths = {"inception": folder / "inception.pt", "vgg16": folder / "vgg16.pt"}
    torch.jit.script(StandInInception()).save(str(paths["inception"]))
    torch.jit.script(StandInVGG16()).save(str(paths["vgg16"]))
    return paths


def random_images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, [n, channels, size, size], generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------
# FID


def test_fid_of_identical_sets_is_zero():
    x = np.random.default_rng(0).standard_normal((500, 32)) * 3 + 1
    scale = np.trace(np.cov(x, rowvar=False))
    assert abs(compute_fid(x, x)) <= 1e-6 * scale


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    s1, s2 = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-6)
    # A rotated copy of both (same distance, full covariances).
    q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    got = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_fid_is_symmetric_and_uses_nvidia_covariance():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24))
    b = rng.standard_normal((200, 24)) * 2 + 0.5
    assert compute_fid(a, b) == pytest.approx(compute_fid(b, a), rel=1e-9)
    # NVIDIA stylegan2-ada divides by N (FeatureStats.get_mean_cov); ddof=1 is np.cov's default.
    mu, cov = feature_mean_cov(a)
    np.testing.assert_allclose(mu, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(a, rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    _, cov1 = feature_mean_cov(a, ddof=1)
    np.testing.assert_allclose(cov1, np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
    mu_b, cov_b = feature_mean_cov(b)
    assert compute_fid(a, b) == pytest.approx(frechet_distance(mu, cov, mu_b, cov_b), rel=1e-12)


def test_fid_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    b = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16)) + 1
    mu_a, s_a = feature_mean_cov(a)
    mu_b, s_b = feature_mean_cov(b)
    covmean = np.real(linalg.sqrtm(s_a @ s_b))
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * covmean)
    assert compute_fid(a, b) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# KID


def slow_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written as plain loops."""
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_matches_loop_mmd_on_one_full_subset():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((30, 5))
    fake = rng.standard_normal((30, 5)) + 0.3
    # One subset of all 30 items: a permutation of each set, which MMD does not see.
    got = compute_kid(real, fake, num_subsets=1, max_subset_size=1000)
    assert got == pytest.approx(slow_mmd2_unbiased(fake, real), rel=1e-9)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    # Measured spread of this estimate over 20 draws: std 0.003, max |KID| 0.008.
    assert abs(compute_kid(a, b, num_subsets=10, max_subset_size=500)) < 0.02
    shifted = compute_kid(a, b + 0.5, num_subsets=10, max_subset_size=500)
    assert shifted > 0.5
    # Seeded: the same seed gives the same subsets.
    assert compute_kid(a, b, num_subsets=3, max_subset_size=100, seed=7) == compute_kid(
        a, b, num_subsets=3, max_subset_size=100, seed=7
    )


# ---------------------------------------------------------------------------------------------
# Precision and recall


def brute_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def test_batched_distances_radii_and_membership_equal_brute_force():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((23, 6)), rng.standard_normal((17, 6))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)  # float64 throughout
    d_ab = brute_distances(a, b)
    np.testing.assert_allclose(pairwise_distances(ta, tb, col_batch=5).numpy(), d_ab, atol=1e-10)

    k = 3
    radii = np.sort(brute_distances(a, a), axis=1)[:, k]  # column 0 is the point itself
    got = knn_radii(ta, k=k, row_batch=4, col_batch=5).numpy()
    np.testing.assert_allclose(got, radii, atol=1e-10)

    inside = (d_ab.T <= radii[None, :]).any(axis=1)  # is each b within some a's radius?
    got = inside_manifold(tb, ta, torch.from_numpy(radii), row_batch=4, col_batch=5).numpy()
    np.testing.assert_array_equal(got, inside)
    assert 0 < inside.sum() < len(b)  # the check saw both outcomes

    small = compute_precision_recall(a, b, k=k, row_batch=4, col_batch=5)
    large = compute_precision_recall(a, b, k=k, row_batch=1000, col_batch=1000)
    assert small == large
    assert small[0] == pytest.approx(inside.mean())


def test_precision_recall_of_identical_and_disjoint_sets():
    x = np.random.default_rng(7).standard_normal((200, 8)).astype(np.float32)
    assert compute_precision_recall(x, x.copy()) == (1.0, 1.0)
    assert compute_precision_recall(x, x + 100) == (0.0, 0.0)


def test_precision_recall_of_one_cluster_of_the_real_set():
    rng = np.random.default_rng(8)
    centers = np.array([[0.0, 0], [20, 0], [0, 20], [20, 20]])
    real = np.concatenate([c + rng.standard_normal((100, 2)) for c in centers])
    fake = real[:100]  # the first cluster only
    precision, recall = compute_precision_recall(real, fake, row_batch=64, col_batch=64)
    assert precision == 1.0
    assert 0.2 <= recall <= 0.3  # about the one cluster in four that fake covers


# ---------------------------------------------------------------------------------------------
# Feature networks


def test_missing_feature_net_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(MetricsError) as e:
        FeatureNet(tmp_path / "nope.pt", kind="inception")
    msg = str(e.value)
    assert "\n" not in msg
    assert "nope.pt" in msg and "inception-2015-12-05.pt" in msg
    assert "download it yourself and pass its path" in msg
    with pytest.raises(MetricsError, match="vgg16.pt"):
        FeatureNet(None, kind="vgg16")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(MetricsError, match="bad.pt"):
        FeatureNet(bad, kind="inception")
    with pytest.raises(MetricsError, match="kind"):
        FeatureNet(bad, kind="resnet")


def test_feature_net_calling_conventions(feature_paths):
    images = random_images(5)
    inc = FeatureNet(feature_paths["inception"], kind="inception")
    f = inc(images)
    assert f.shape == (5, 16) and f.dtype == torch.float32
    gray = images[:, :1]
    torch.testing.assert_close(inc(gray), inc(gray.repeat(1, 3, 1, 1)))
    assert FeatureNet(feature_paths["vgg16"], kind="vgg16")(images).shape == (5, 12)
    # LPIPS convention: images over 256 px are area-resized by the caller first.
    lpips = FeatureNet(feature_paths["vgg16"], kind="vgg16_lpips")(random_images(2, size=300))
    assert lpips.shape == (2, 12)
    torch.testing.assert_close(lpips.norm(dim=1), torch.ones(2))
    with pytest.raises(MetricsError, match="uint8"):
        inc(images.float())


# ---------------------------------------------------------------------------------------------
# Feature extraction and evaluate()


def test_features_from_generator_is_deterministic_and_batch_independent(feature_paths):
    G = tiny_generator().train()
    w_avg = G.mapping.w_avg.clone()
    net = FeatureNet(feature_paths["inception"], kind="inception")
    a = features_from_generator(G, net, num=6, batch=4, seed=3)
    b = features_from_generator(G, net, num=6, batch=6, seed=3)
    assert a.shape == (6, 16) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(G.mapping.w_avg, w_avg)  # metrics never move w_avg
    with pytest.raises(MetricsError, match="c_sampler"):
        features_from_generator(tiny_generator(c_dim=3), net, num=2)


def test_features_from_dataset_reads_at_most_max_items(feature_paths):
    net = FeatureNet(feature_paths["inception"], kind="inception")
    batches = [(random_images(4, seed=i), None) for i in range(3)]
    assert features_from_dataset(batches, net).shape == (12, 16)
    assert features_from_dataset(batches, net, max_items=6).shape == (6, 16)
    with pytest.raises(MetricsError, match="no images"):
        features_from_dataset([], net)


def test_evaluate_end_to_end_with_cache_and_skips(feature_paths, caplog):
    metrics.clear_feature_cache()
    G = tiny_generator()
    data = random_images(96, seed=11)
    calls = []

    def dataset_batches():
        calls.append(1)
        return iter(data.split(32))

    names = ["fid50k_full", "kid50k_full", "pr50k3_full"]
    res = evaluate(names, G, dataset_batches, feature_paths, num_gen=64, dataset_id="toy")
    assert set(res) == {
        "fid50k_full",
        "kid50k_full",
        "pr50k3_full_precision",
        "pr50k3_full_recall",
    }
    assert all(np.isfinite(v) for v in res.values())
    assert res["fid50k_full"] > 0
    assert 0 <= res["pr50k3_full_precision"] <= 1 and 0 <= res["pr50k3_full_recall"] <= 1
    assert len(calls) == 2  # once per feature network (inception, vgg16)

    again = evaluate(["fid50k_full"], G, dataset_batches, feature_paths, 64, dataset_id="toy")
    assert again == {"fid50k_full": res["fid50k_full"]}  # seeded generation, cached real features
    assert len(calls) == 2

    with caplog.at_level(logging.WARNING, logger="teacher.metrics"):
        res = evaluate(names, G, dataset_batches, {"inception": feature_paths["inception"]}, 16)
    assert set(res) == {"fid50k_full", "kid50k_full"}
    assert "skipping pr50k3_full" in caplog.text and "vgg16.pt" in caplog.text

    with pytest.raises(MetricsError, match="unknown metric"):
        evaluate(["fid10k"], G, dataset_batches, feature_paths, num_gen=8)
    metrics.clear_feature_cache()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_on_cuda_matches_cpu(feature_paths):
    G = tiny_generator()
    data = random_images(96, seed=12)
    names = ["fid50k_full", "kid50k_full", "pr50k3_full"]
    cpu = evaluate(names, G, lambda: iter(data.split(32)), feature_paths, num_gen=64)
    gpu = evaluate(names, G.cuda(), lambda: iter(data.split(32)), feature_paths, num_gen=64)
    # float16 layers are off in the tiny generator; differences are float32 rounding.
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def _fp16_features(feature_paths, device: str, force_fp32: bool) -> np.ndarray:
    from tests.conftest import randomize_

    torch.manual_seed(0)
    G = randomize_(tiny_generator(img_resolution=32, num_fp16_res=2)).to(device)
    net = FeatureNet(feature_paths["inception"], kind="inception", device=device)
    return features_from_generator(G, net, num=16, batch=8, seed=3, force_fp32=force_fp32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_features_of_an_fp16_generator_match_its_fp32_render(feature_paths, device):
    """A generator with float16 blocks (16 and 32 px) gives the features of its float32
    render within float16 rounding. Renders move by a uint8 level or two; the stand-in's
    features (4x4 cell means of pixels / 255 through a random 48 x 16 matrix, values up to
    ~15) then move by well under 0.02 (measured 4.4e-3), where one level on every pixel
    would move them by ~0.15."""
    ref = _fp16_features(feature_paths, "cpu", force_fp32=True)
    got = _fp16_features(feature_paths, device, force_fp32=False)
    assert not np.array_equal(got, ref)  # the float16 blocks ran
    np.testing.assert_allclose(got, ref, atol=2e-2, rtol=0)
