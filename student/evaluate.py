"""Scoring a student against the teacher on held-out pairs (``toon-student eval``).

The student runs on the source of every held-out pair (the split of :mod:`student.data`, with
the student's own ``holdout_percent`` unless another is given); its output is quantised to uint8
the way a deployed model's is, then compared with the teacher's target:

- ``l1``: mean absolute difference in [-1, 1] units (the training loss's scale), per image,
  averaged over images;
- ``psnr``: dB with a peak of 255, per image, averaged (identical images count as 100 dB);
- ``ssim``: Wang et al. 2004 (see :mod:`student.ops`), per image, averaged;
- ``fid`` (with ``--inception``): the Frechet distance between Inception features of the
  student's outputs and of the teacher's targets (small sets give a biased, noisy value);
- ``lpips`` (with ``--vgg16``): mean LPIPS distance to the target through NVIDIA's VGG16.

The same metrics of the source itself (the "do nothing" baseline) are reported as
``identity``; ``l1_ratio`` is the student's L1 over the baseline's. A PNG grid shows
src | student | teacher for the first pairs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import file_sha256
from common.images import make_grid, save_png
from pairs.shards import PairsError
from student.config import StudentConfig
from student.data import PairsInfo, open_pairs, split_counts, split_pairs
from student.io import read_student
from student.ops import float_to_uint8, l1_uint8, psnr_uint8, ssim_uint8, uint8_to_float

DEFAULT_HOLDOUT_PERCENT = 5.0


# ---------------------------------------------------------------------------------------------
# Helpers shared with training (held-out metrics and grids at snapshots)


def load_eval_set(
    info: PairsInfo, cfg: StudentConfig, count: int
) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The first ``count`` held-out pairs (uint8 ``[N, 3, R, R]`` src, dst) and ``"heldout"``,
    or the first training pairs and ``"train"`` when nothing is held out (the caller must say
    so); None for ``count == 0``."""
    if count <= 0:
        return None
    split = "heldout"
    items = list(split_pairs(info, "heldout", cfg.holdout_percent, limit=count))
    if not items:
        split = "train"
        items = list(split_pairs(info, "train", cfg.holdout_percent, limit=count))
    if not items:
        return None
    src = torch.from_numpy(np.stack([it[1] for it in items]))
    dst = torch.from_numpy(np.stack([it[2] for it in items]))
    return src, dst, split


@torch.no_grad()
def run_student(
    G: torch.nn.Module, src: torch.Tensor, device: torch.device, batch: int = 16
) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` sources -> uint8 student outputs on the CPU (``G`` in eval
    mode), converted as a deployed model's: ``x / 127.5 - 1`` in, ``floor(clamp(y * 127.5 +
    128, 0, 255))`` out."""
    outs = []
    for start in range(0, src.shape[0], batch):
        x = uint8_to_float(src[start : start + batch].to(device))
        outs.append(float_to_uint8(G(x)).cpu())
    return torch.cat(outs)


def heldout_metrics(pred: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> dict[str, float]:
    """L1 (in [-1, 1] units), PSNR and SSIM of uint8 predictions and of the identity baseline."""
    out = {
        "Eval/l1": float(l1_uint8(pred, dst).mean()),
        "Eval/l1_identity": float(l1_uint8(src, dst).mean()),
        "Eval/psnr": float(psnr_uint8(pred, dst).clamp(max=100).mean()),
    }
    if min(pred.shape[2:]) >= 11:
        out["Eval/ssim"] = float(ssim_uint8(pred, dst).mean())
    return out


def comparison_grid(src: torch.Tensor, pred: torch.Tensor, dst: torch.Tensor) -> np.ndarray:
    """HWC uint8 image with one row per pair: src | student | teacher."""
    rows = []
    for s, p, d in zip(src, pred, dst, strict=True):
        rows += [s.permute(1, 2, 0).numpy(), p.permute(1, 2, 0).numpy(), d.permute(1, 2, 0).numpy()]
    return make_grid(rows, cols=3)


def _lpips_distance(net: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    fa = net(a)  # FeatureNet(kind="vgg16_lpips"): uint8 images -> LPIPS features
    fb = net(b)
    return (fa - fb).pow(2).sum(dim=1).cpu().double()


def _batches(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def evaluate_student(
    student: str | os.PathLike,
    pairs: str | os.PathLike,
    *,
    holdout_percent: float | None = None,
    max_pairs: int | None = None,
    batch: int = 16,
    device: torch.device | str = "cpu",
    inception: str | os.PathLike | None = None,
    vgg16: str | os.PathLike | None = None,
    grid_path: str | os.PathLike | None = None,
    grid_rows: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a student file on a pairs dataset's held-out split; returns the JSON report.

    Args:
        student: the student ``.safetensors``.
        pairs: the pairs folder.
        holdout_percent: the split; default the one the student was trained with (else 5).
        max_pairs: score at most this many held-out pairs (in key order).
        batch: pairs per forward pass.
        device: where the student (and feature networks) run.
        inception: NVIDIA ``inception-2015-12-05.pt`` for FID (optional, never fetched).
        vgg16: NVIDIA ``vgg16.pt`` for LPIPS (optional, never fetched).
        grid_path: where to write the src | student | teacher PNG (optional).
        grid_rows: pairs in the grid.
        progress: show a progress bar.
    """
    device = torch.device(device)
    sf = read_student(student)
    G = sf.build().to(device)
    info = open_pairs(pairs)
    if info.resolution % G.stride:
        raise PairsError(
            f"{info.root}: pairs are {info.resolution}px but this student needs sizes divisible "
            f"by {G.stride}"
        )
    trained_pct = sf.training.get("holdout_percent")
    pct = holdout_percent if holdout_percent is not None else trained_pct
    pct = DEFAULT_HOLDOUT_PERCENT if pct is None else float(pct)
    counts = split_counts(info, pct)
    if counts["heldout"] == 0:
        raise PairsError(
            f"{info.root}: no held-out pairs at {pct}%; pass a larger --holdout-percent"
        )
    n_total = counts["heldout"] if max_pairs is None else min(max_pairs, counts["heldout"])

    fid_net = lpips_net = None
    if inception is not None or vgg16 is not None:
        from teacher.metrics import FeatureNet

        if inception is not None:
            fid_net = FeatureNet(inception, kind="inception", device=device)
        if vgg16 is not None:
            lpips_net = FeatureNet(vgg16, kind="vgg16_lpips", device=device)

    sums: dict[str, float] = {}
    feats_student: list[np.ndarray] = []
    feats_teacher: list[np.ndarray] = []
    grid_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    n = 0

    def add(name: str, values: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(values.double().sum())

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_total, unit="pair", desc="eval")
    items = split_pairs(info, "heldout", pct, limit=n_total)
    for chunk in _batches(items, batch):
        src = torch.from_numpy(np.stack([c[1] for c in chunk]))
        dst = torch.from_numpy(np.stack([c[2] for c in chunk]))
        pred = run_student(G, src, device, batch=batch)
        for prefix, img in (("", pred), ("identity/", src)):
            add(prefix + "l1", l1_uint8(img, dst))
            add(prefix + "psnr", psnr_uint8(img, dst).clamp(max=100))
            if min(img.shape[2:]) >= 11:
                add(prefix + "ssim", ssim_uint8(img, dst))
            if lpips_net is not None:
                add(prefix + "lpips", _lpips_distance(lpips_net, img, dst))
        if fid_net is not None:
            feats_student.append(fid_net(pred).cpu().numpy())
            feats_teacher.append(fid_net(dst).cpu().numpy())
        if sum(p[0].shape[0] for p in grid_parts) < grid_rows:
            grid_parts.append((src, pred, dst))
        n += src.shape[0]
        if bar is not None:
            bar.update(src.shape[0])
    if bar is not None:
        bar.close()

    metrics = {k: v / n for k, v in sums.items() if "/" not in k}
    identity = {k.split("/", 1)[1]: v / n for k, v in sums.items() if k.startswith("identity/")}
    if fid_net is not None:
        from teacher.metrics import compute_fid

        if n >= 2:
            metrics["fid"] = compute_fid(
                np.concatenate(feats_teacher), np.concatenate(feats_student)
            )
    report: dict[str, Any] = {
        "student": {
            "file": str(sf.path),
            "sha256": file_sha256(sf.path),
            "arch": sf.arch.get("preset"),
            "trained_kimg": sf.training.get("kimg"),
        },
        "pairs": {
            "dir": str(info.root),
            "manifest_sha256": info.manifest_sha256,
            "resolution": info.resolution,
            "holdout_percent": pct,
            "heldout_pairs": counts["heldout"],
            "evaluated_pairs": n,
        },
        "same_dataset_as_training": (
            sf.source.get("pairs_manifest_sha256") == info.manifest_sha256
            if sf.source.get("pairs_manifest_sha256")
            else None
        ),
        "metrics": metrics,
        "identity": identity,
        "l1_ratio": metrics["l1"] / identity["l1"] if identity.get("l1") else None,
    }
    if grid_path is not None and grid_parts:
        src = torch.cat([p[0] for p in grid_parts])[:grid_rows]
        pred = torch.cat([p[1] for p in grid_parts])[:grid_rows]
        dst = torch.cat([p[2] for p in grid_parts])[:grid_rows]
        save_png(comparison_grid(src, pred, dst), grid_path)
        report["grid"] = str(Path(grid_path))
    return report


__all__ = [
    "DEFAULT_HOLDOUT_PERCENT",
    "comparison_grid",
    "evaluate_student",
    "heldout_metrics",
    "load_eval_set",
    "run_student",
]
