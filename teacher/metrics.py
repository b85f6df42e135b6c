"""GAN evaluation metrics for teacher snapshots: FID, KID and improved precision/recall.

Written from the papers, with the semantics of NVIDIA stylegan2-ada-pytorch's ``fid50k_full``,
``kid50k_full`` and ``pr50k3_full``:

- **FID** (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
  Nash Equilibrium"): the Frechet distance between Gaussians fitted to Inception pool features,
  ``||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))``. Covariances are the maximum-likelihood
  ones (divide by N, ``ddof=0``), as NVIDIA's ``FeatureStats.get_mean_cov`` computes them.
- **KID** (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased MMD^2 between Inception
  features with the kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``num_subsets`` random
  subsets of ``m = min(n_real, n_fake, max_subset_size)`` items from each side.
- **Precision / recall** (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models"): each set's manifold is the union of balls around its points with
  radius the distance to the k-th nearest neighbour; precision is the fraction of generated
  samples inside the real manifold, recall the fraction of real samples inside the generated one.
  Features are VGG16 fc features.

Feature networks are NVIDIA's TorchScript files, passed as paths and never downloaded
(:class:`FeatureNet`). Real-dataset features are cached in memory per (dataset id, feature net).
"_full" means the whole dataset, capped like NVIDIA: FID all items, KID the first 1,000,000,
precision/recall the first 200,000.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.cli import ToonError

log = logging.getLogger(__name__)

NVIDIA_METRICS_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"

# kind -> the NVIDIA file it expects.
FEATURE_NET_FILES: dict[str, str] = {
    "inception": "inception-2015-12-05.pt",
    "vgg16": "vgg16.pt",
    "vgg16_lpips": "vgg16.pt",
}

LPIPS_MAX_SIZE = 256  # vgg16_lpips: larger images are area-resized to this size by the caller.

ArrayLike = np.ndarray | torch.Tensor


class MetricsError(ToonError):
    """A metric could not be computed as asked (one-line message naming what to fix)."""


def _where_to_get(kind: str) -> str:
    name = FEATURE_NET_FILES[kind]
    return f"NVIDIA publishes {name} at {NVIDIA_METRICS_URL}{name}"


# ---------------------------------------------------------------------------------------------
# Feature networks


class FeatureNet:
    """One of NVIDIA's TorchScript feature networks, called with its own convention.

    Kinds and how the file is called (``x`` is uint8 ``[N, 3, H, W]`` in 0..255; one-channel
    images are repeated to three):

    - ``inception`` (``inception-2015-12-05.pt``, FID and KID):
      ``net(x, return_features=True)`` -> ``[N, 2048]`` pool features; it resizes internally.
    - ``vgg16`` (``vgg16.pt``, precision/recall, as NVIDIA's ``pr50k3``):
      ``net(x, return_features=True)`` -> ``[N, 4096]`` fc features; it resizes internally.
    - ``vgg16_lpips`` (``vgg16.pt``, NVIDIA's perceptual-path-length convention): images larger
      than 256 are area-resized to 256x256 here, then ``net(x_float, resize_images=False,
      return_lpips=True)`` -> ``[N, F]`` unit-normalised LPIPS features. Not used by
      :func:`evaluate`; provided for PPL-style distances.

    Args:
        path: the ``.pt`` file; it is never downloaded.
        kind: ``inception``, ``vgg16`` or ``vgg16_lpips``.
        device: where the network runs (the file is loaded with ``map_location=device``).

    Raises:
        MetricsError: the path is missing, or the file is not a loadable TorchScript module.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        kind: str = "inception",
        device: torch.device | str = "cpu",
    ) -> None:
        if kind not in FEATURE_NET_FILES:
            raise MetricsError(
                f"unknown feature network kind {kind!r}: use one of {sorted(FEATURE_NET_FILES)}"
            )
        name = FEATURE_NET_FILES[kind]
        if path is None or not Path(path).is_file():
            shown = "no path given" if path is None else f"{path} not found"
            raise MetricsError(
                f"{kind} feature network {name}: {shown}; {_where_to_get(kind)}"
                " - download it yourself and pass its path"
            )
        self.path = Path(path)
        self.kind = kind
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # NVIDIA ships TorchScript; its deprecation is noise
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as e:  # any failure to read the file is the user's to fix
            raise MetricsError(
                f"{self.path}: not a TorchScript {name} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); {_where_to_get(kind)}"
            ) from e

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images (C = 1 or 3) -> float32 features ``[N, F]`` on
        :attr:`device`."""
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.asarray(images))
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise MetricsError(
                f"feature network wants uint8 [N, 3, H, W] images, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        x = images.to(self.device)
        if x.shape[1] == 1:
            x = x.repeat([1, 3, 1, 1])
        if self.kind == "vgg16_lpips":
            x = x.to(torch.float32)
            if x.shape[2] > LPIPS_MAX_SIZE or x.shape[3] > LPIPS_MAX_SIZE:
                x = F.interpolate(x, size=(LPIPS_MAX_SIZE, LPIPS_MAX_SIZE), mode="area")
            out = self.net(x, resize_images=False, return_lpips=True)
        else:
            out = self.net(x, return_features=True)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MetricsError(
                f"{self.path}: expected [N, F] features from the {self.kind} network, got {shape}"
            )
        return out.to(torch.float32)

    def cache_key(self) -> tuple[str, str]:
        """What identifies this network's features: (resolved path, kind)."""
        return (str(self.path.resolve()), self.kind)


# ---------------------------------------------------------------------------------------------
# FID


def _as_features(x: ArrayLike, name: str) -> np.ndarray:
    """Features as a float64 ``[N, D]`` numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MetricsError(f"{name} features must be [N, D], got shape {x.shape}")
    return x


def feature_mean_cov(feats: ArrayLike, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of ``[N, D]`` features.

    ``ddof=0`` divides by N (NVIDIA stylegan2-ada's ``FeatureStats``); ``ddof=1`` gives
    ``np.cov(feats, rowvar=False)`` (the original TTUR / TF FID code).
    """
    x = _as_features(feats, "the")
    if x.shape[0] <= ddof:
        raise MetricsError(f"need more than {ddof} feature vectors for a covariance")
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, (xc.T @ xc) / (x.shape[0] - ddof)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^(1/2))`` for symmetric PSD ``S1``, ``S2``, without a general ``sqrtm``.

    ``S1 S2`` is similar to the symmetric PSD ``A = S1^(1/2) S2 S1^(1/2)``, so
    ``tr((S1 S2)^(1/2)) = sum(sqrt(eig(A)))``. With ``B = S2^(1/2) S1^(1/2)`` we have
    ``A = B^T B``, so those square roots are the singular values of B: the trace is B's nuclear
    norm. Taking singular values of B instead of eigenvalues of A avoids squaring the condition
    number (which matters when N < D and the covariances are rank deficient), keeps the result
    exactly symmetric in S1 and S2, and needs only ``eigh`` and ``svd`` (no scipy).
    """
    b = _psd_sqrt(sigma2) @ _psd_sqrt(sigma1)
    return float(np.linalg.svd(b, compute_uv=False).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise MetricsError(
            f"mismatched Gaussian shapes: mu {mu1.shape}/{mu2.shape}, "
            f"sigma {sigma1.shape}/{sigma2.shape}"
        )
    diff = mu1 - mu2
    return float(
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    )


def compute_fid(real_feats: ArrayLike, fake_feats: ArrayLike, ddof: int = 0) -> float:
    """FID between two ``[N, D]`` feature sets (Inception pool features for the standard one).

    ``ddof=0`` matches NVIDIA stylegan2-ada (see :func:`feature_mean_cov`).
    """
    mu_r, s_r = feature_mean_cov(real_feats, ddof)
    mu_f, s_f = feature_mean_cov(fake_feats, ddof)
    if mu_r.shape != mu_f.shape:
        raise MetricsError(f"feature sizes differ: real {mu_r.shape[0]}, fake {mu_f.shape[0]}")
    return frechet_distance(mu_r, s_r, mu_f, s_f)


# ---------------------------------------------------------------------------------------------
# KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x.y / d + 1)^3`` for all pairs of rows: ``[len(x), len(y)]``."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size samples ``x``, ``y`` (``[m, D]``, m >= 2) under
    :func:`polynomial_kernel`: within-set sums skip the diagonal (``/ m(m-1)``), the cross sum
    keeps every pair (``/ m^2``)."""
    m = x.shape[0]
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def compute_kid(
    real: ArrayLike,
    fake: ArrayLike,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID: :func:`mmd2_unbiased` averaged over ``num_subsets`` random subset pairs.

    Each subset draws ``m = min(n_real, n_fake, max_subset_size)`` items without replacement from
    each side (NVIDIA's estimator), from a generator seeded with ``seed``. Computed in float64.
    """
    x_all = _as_features(fake, "fake")
    y_all = _as_features(real, "real")
    if x_all.shape[1] != y_all.shape[1]:
        raise MetricsError(f"feature sizes differ: real {y_all.shape[1]}, fake {x_all.shape[1]}")
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise MetricsError(f"KID needs at least 2 items on each side, got subsets of {m}")
    if num_subsets < 1:
        raise MetricsError(f"num_subsets must be at least 1, got {num_subsets}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        total += mmd2_unbiased(x, y)
    return total / num_subsets


# ---------------------------------------------------------------------------------------------
# Precision and recall


def _as_tensor(x: ArrayLike, device: torch.device | str | None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise MetricsError(f"features must be [N, D], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t.to(device) if device is not None else t


def pairwise_distances(
    rows: torch.Tensor, cols: torch.Tensor, col_batch: int = 10000
) -> torch.Tensor:
    """Euclidean distances ``[R, C]`` between every row of ``rows`` and of ``cols``, computed
    ``col_batch`` columns at a time. Holds the whole ``[R, C]`` result: call it on row batches."""
    return torch.cat([torch.cdist(rows, c) for c in cols.split(col_batch)], dim=1)


def knn_radii(
    manifold: torch.Tensor, k: int = 3, row_batch: int = 10000, col_batch: int = 10000
) -> torch.Tensor:
    """Distance from each point of ``manifold`` ``[M, D]`` to its k-th nearest neighbour ``[M]``.

    The point itself counts as its own nearest neighbour at distance 0, so this is the
    ``(k + 1)``-th smallest distance in its row (as NVIDIA's ``kthvalue(k + 1)``). Memory is
    bounded by ``row_batch x (col_batch + k + 1)`` distances: a running top-(k + 1) is kept per
    row while column batches stream by.
    """
    if manifold.shape[0] < k + 1:
        raise MetricsError(f"need more than k={k} feature vectors, got {manifold.shape[0]}")
    radii = []
    for rows in manifold.split(row_batch):
        best: torch.Tensor | None = None
        for cols in manifold.split(col_batch):
            d = torch.cdist(rows, cols)
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
        assert best is not None
        radii.append(best[:, k])
    return torch.cat(radii)


def inside_manifold(
    probes: torch.Tensor,
    manifold: torch.Tensor,
    radii: torch.Tensor,
    row_batch: int = 10000,
    col_batch: int = 10000,
) -> torch.Tensor:
    """For each probe ``[P, D]``: is it within ``radii[j]`` of some manifold point j? -> bool
    ``[P]``. Memory is bounded by ``row_batch x col_batch`` distances."""
    out = []
    for rows in probes.split(row_batch):
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
        for cols, r in zip(manifold.split(col_batch), radii.split(col_batch), strict=True):
            hit |= (torch.cdist(rows, cols) <= r.unsqueeze(0)).any(dim=1)
        out.append(hit)
    return torch.cat(out)


def compute_precision_recall(
    real: ArrayLike,
    fake: ArrayLike,
    k: int = 3,
    row_batch: int = 10000,
    col_batch: int = 10000,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds) of ``fake`` against ``real`` features.

    precision = fraction of fake samples inside the real manifold; recall = fraction of real
    samples inside the fake manifold. Distances are computed in the features' float dtype
    (float32 for numpy float32 input) on ``device`` (default: where the tensors are), in batches
    of ``row_batch x col_batch``; the full distance matrix is never built.
    """
    real_t = _as_tensor(real, device)
    fake_t = _as_tensor(fake, real_t.device).to(real_t.dtype)
    if real_t.shape[1] != fake_t.shape[1]:
        raise MetricsError(f"feature sizes differ: real {real_t.shape[1]}, fake {fake_t.shape[1]}")
    with torch.no_grad():
        real_r = knn_radii(real_t, k, row_batch, col_batch)
        precision = inside_manifold(fake_t, real_t, real_r, row_batch, col_batch)
        fake_r = knn_radii(fake_t, k, row_batch, col_batch)
        recall = inside_manifold(real_t, fake_t, fake_r, row_batch, col_batch)
    return float(precision.float().mean()), float(recall.float().mean())


# ---------------------------------------------------------------------------------------------
# Feature extraction


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


@torch.no_grad()
def features_from_generator(
    G: torch.nn.Module,
    feature_net: Callable[[torch.Tensor], torch.Tensor],
    num: int,
    batch: int = 64,
    truncation_psi: float = 1.0,
    device: torch.device | str | None = None,
    c_sampler: Callable[[int], ArrayLike] | None = None,
    noise_mode: str = "const",
    seed: int = 0,
    force_fp32: bool | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Render ``num`` images from ``G`` and return their features, float32 ``[num, F]``.

    Latent k is ``default_rng([seed, k]).standard_normal(z_dim)``, so item k depends only on
    (seed, k), not on ``batch``. Images become uint8 as ``(img * 127.5 + 128).clamp(0, 255)``.
    ``G.mapping`` runs with ``update_w_avg=False``, so a generator in training mode is not
    changed.

    Args:
        G: a teacher generator (``z_dim``, ``c_dim``, ``mapping``, ``synthesis``).
        feature_net: uint8 ``[N, 3, H, W]`` -> ``[N, F]`` (a :class:`FeatureNet`).
        num: number of images.
        batch: images per forward pass.
        truncation_psi: truncation (1 = none, as the standard metrics).
        device: where G runs (default: the device of its parameters).
        c_sampler: ``n -> [n, c_dim]`` labels, required when ``G.c_dim > 0`` (NVIDIA draws the
            labels of random dataset items).
        noise_mode: synthesis noise, ``const`` (default) or ``random`` (NVIDIA's metrics use the
            generator's default, ``random``).
        seed: latent seed.
        force_fp32: run float16 layers in float32; default True on CPU, False on CUDA.
        progress: show a progress bar.
    """
    if num < 1:
        raise MetricsError(f"num must be at least 1, got {num}")
    if device is None:
        device = next(G.parameters()).device
    device = torch.device(device)
    if force_fp32 is None:
        force_fp32 = device.type != "cuda"
    if G.c_dim > 0 and c_sampler is None:
        raise MetricsError(f"this generator is conditional (c_dim={G.c_dim}): pass a c_sampler")
    feats = []
    with _progress(num, "generator features", progress) as bar:
        for start in range(0, num, batch):
            n = min(batch, num - start)
            z = np.stack(
                [
                    np.random.default_rng([seed, k]).standard_normal(G.z_dim)
                    for k in range(start, start + n)
                ]
            )
            z = torch.from_numpy(z.astype(np.float32)).to(device)
            if G.c_dim > 0:
                c = torch.as_tensor(c_sampler(n), dtype=torch.float32).to(device)
                if c.shape != (n, G.c_dim):
                    raise MetricsError(
                        f"c_sampler({n}) gave {tuple(c.shape)}, want [{n}, {G.c_dim}]"
                    )
            else:
                c = torch.zeros([n, 0], device=device)
            ws = G.mapping(z, c, truncation_psi=truncation_psi, update_w_avg=False)
            img = G.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)
            img = (img.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
            feats.append(feature_net(img).to(torch.float32).cpu().numpy())
            bar.update(n)
    return np.concatenate(feats)


@torch.no_grad()
def features_from_dataset(
    batches: Iterable[Any],
    feature_net: Callable[[torch.Tensor], torch.Tensor],
    max_items: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Features (float32 ``[N, F]``) of the first ``max_items`` images of a dataset (all when
    None: NVIDIA's "_full").

    ``batches`` yields uint8 ``[B, C, H, W]`` tensors or arrays, or ``(images, labels)`` pairs
    (labels are ignored), in a fixed order.
    """
    feats: list[np.ndarray] = []
    count = 0
    with _progress(max_items, "dataset features", progress) as bar:
        for item in batches:
            if max_items is not None and count >= max_items:
                break
            images = item[0] if isinstance(item, tuple | list) else item
            if not isinstance(images, torch.Tensor):
                images = torch.from_numpy(np.asarray(images))
            if max_items is not None:
                images = images[: max_items - count]
            if images.shape[0] == 0:
                continue
            feats.append(feature_net(images).to(torch.float32).cpu().numpy())
            count += images.shape[0]
            bar.update(images.shape[0])
    if not feats:
        raise MetricsError("the dataset gave no images")
    return np.concatenate(feats)


# ---------------------------------------------------------------------------------------------
# Named metrics


@dataclass(frozen=True)
class MetricSpec:
    """A named metric: which feature network it uses and how many real items it reads."""

    net: str  # FeatureNet kind
    max_real: int | None  # None = the whole dataset


METRICS: dict[str, MetricSpec] = {
    "fid50k_full": MetricSpec(net="inception", max_real=None),
    "kid50k_full": MetricSpec(net="inception", max_real=1_000_000),
    "pr50k3_full": MetricSpec(net="vgg16", max_real=200_000),
}

KID_NUM_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000
PR_K = 3
PR_BATCH = 10000

# (dataset id, resolved feature-net path, kind) -> (features, max_items they were read with)
_REAL_FEATURE_CACHE: dict[tuple[str, str, str], tuple[np.ndarray, int | None]] = {}


def clear_feature_cache() -> None:
    """Forget cached real-dataset features."""
    _REAL_FEATURE_CACHE.clear()


def _covers(cached_max: int | None, count: int, want: int | None) -> bool:
    """Do features read with ``max_items=cached_max`` (giving ``count`` items) hold the first
    ``want`` items of the dataset?"""
    if cached_max is None or count < cached_max:  # the whole dataset was read
        return True
    return want is not None and want <= cached_max


def _real_features(
    net: FeatureNet,
    dataset_batches_fn: Callable[[], Iterable[Any]],
    dataset_id: str | None,
    max_items: int | None,
    progress: bool,
) -> np.ndarray:
    key = (dataset_id, *net.cache_key()) if dataset_id is not None else None
    if key is not None and key in _REAL_FEATURE_CACHE:
        feats, cached_max = _REAL_FEATURE_CACHE[key]
        if _covers(cached_max, feats.shape[0], max_items):
            return feats if max_items is None else feats[:max_items]
    feats = features_from_dataset(dataset_batches_fn(), net, max_items=max_items, progress=progress)
    if key is not None:
        _REAL_FEATURE_CACHE[key] = (feats, max_items)
    return feats


def evaluate(
    metrics: Sequence[str],
    G: torch.nn.Module,
    dataset_batches_fn: Callable[[], Iterable[Any]],
    feature_paths: dict[str, str | os.PathLike | None],
    num_gen: int = 50000,
    device: torch.device | str | None = None,
    *,
    dataset_id: str | None = None,
    batch: int = 64,
    truncation_psi: float = 1.0,
    c_sampler: Callable[[int], ArrayLike] | None = None,
    noise_mode: str = "const",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Compute named metrics of generator ``G`` against a dataset.

    Names and result keys (NVIDIA's): ``fid50k_full`` -> ``fid50k_full``; ``kid50k_full`` ->
    ``kid50k_full``; ``pr50k3_full`` -> ``pr50k3_full_precision`` and ``pr50k3_full_recall``.
    A metric whose feature network has no path in ``feature_paths`` (keys ``inception``,
    ``vgg16``) is skipped with a warning on this module's logger and has no key in the result;
    a path that does not exist is a :class:`MetricsError`.

    Args:
        metrics: metric names.
        G: the generator (see :func:`features_from_generator`).
        dataset_batches_fn: returns a fresh iterable of uint8 ``[B, C, H, W]`` batches in a fixed
            order (see :func:`features_from_dataset`); called only when features are not cached.
        feature_paths: ``{"inception": path, "vgg16": path}``.
        num_gen: generated images per feature network (50000 for the standard numbers; smaller
            for quick checks, the keys keep their standard names).
        device: where G and the feature networks run (default: G's device).
        dataset_id: names the dataset for the in-memory cache of real features; None = no cache.
        batch, truncation_psi, c_sampler, noise_mode, seed: see
            :func:`features_from_generator`. Generated features are computed once per feature
            network and shared by the metrics that use it.
        progress: show progress bars.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise MetricsError(f"unknown metric(s) {unknown}: use {sorted(METRICS)}")
    if device is None:
        device = next(G.parameters()).device
    device = torch.device(device)

    # Which networks are needed, and how many real items each must read.
    wanted: dict[str, list[str]] = {}
    for name in dict.fromkeys(metrics):
        kind = METRICS[name].net
        if feature_paths.get(kind) is None:
            log.warning(
                "skipping %s: no path for the %s feature network %s (%s - download it yourself "
                "and pass its path)",
                name,
                kind,
                FEATURE_NET_FILES[kind],
                _where_to_get(kind),
            )
            continue
        wanted.setdefault(kind, []).append(name)

    results: dict[str, float] = {}
    for kind, names in wanted.items():
        net = FeatureNet(feature_paths[kind], kind=kind, device=device)
        caps = [METRICS[n].max_real for n in names]
        max_real = None if None in caps else max(c for c in caps if c is not None)
        real_all = _real_features(net, dataset_batches_fn, dataset_id, max_real, progress)
        fake = features_from_generator(
            G,
            net,
            num_gen,
            batch=batch,
            truncation_psi=truncation_psi,
            device=device,
            c_sampler=c_sampler,
            noise_mode=noise_mode,
            seed=seed,
            progress=progress,
        )
        for name in names:
            cap = METRICS[name].max_real
            real = real_all if cap is None else real_all[:cap]
            if name == "fid50k_full":
                results[name] = compute_fid(real, fake)
            elif name == "kid50k_full":
                results[name] = compute_kid(
                    real, fake, num_subsets=KID_NUM_SUBSETS, max_subset_size=KID_MAX_SUBSET_SIZE
                )
            elif name == "pr50k3_full":
                precision, recall = compute_precision_recall(
                    real, fake, k=PR_K, row_batch=PR_BATCH, col_batch=PR_BATCH, device=device
                )
                results[f"{name}_precision"] = precision
                results[f"{name}_recall"] = recall
    return results
