"""Running a student on aligned face crops with PyTorch (``toon-student apply``).

This is the reference the ONNX runtime is checked against: read an image, convert it to RGB,
resize it to ``size x size`` (bicubic, only when it is not that size already), map uint8 to
[-1, 1] (``x / 127.5 - 1``), run the generator, map back with ``floor(clamp(y * 127.5 + 128,
0, 255))`` and write a PNG. ``size`` defaults to the resolution the student was trained at;
``size=0`` keeps every image's own size, which must then be square and divisible by the
student's stride. Inputs are the images of a folder (searched recursively) or one file;
outputs keep the relative paths with a ``.png`` suffix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from common.cli import ToonError
from common.images import IMAGE_EXTENSIONS, save_png
from student.evaluate import run_student
from student.io import read_student


class ApplyError(ToonError):
    """The inputs cannot be processed as asked (one-line message)."""


def list_images(path: Path) -> list[tuple[Path, Path]]:
    """``(file, path relative to the input)`` of every image under ``path`` (or ``path``
    itself), sorted."""
    if path.is_file():
        return [(path, Path(path.name))]
    if not path.is_dir():
        raise ApplyError(f"{path}: input not found")
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    return [(p, p.relative_to(path)) for p in files]


def load_crop(path: Path, size: int, stride: int) -> np.ndarray:
    """An image as uint8 CHW RGB at ``size`` (0: its own size), checked against ``stride``."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ApplyError(f"{path}: unreadable image ({e})") from None
    w, h = img.size
    if size:
        if (w, h) != (size, size):
            if w != h:
                raise ApplyError(f"{path}: {w}x{h} is not square; expected an aligned crop")
            img = img.resize((size, size), Image.Resampling.BICUBIC)
    elif w % stride or h % stride:
        raise ApplyError(f"{path}: {w}x{h} is not divisible by the student's stride {stride}")
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def apply_student(
    student: str | os.PathLike,
    inputs: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    size: int | None = None,
    batch: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Toonify every image of ``inputs`` into ``out_dir``; returns ``{"written": n,
    "failed": [one-line reasons], "size": ...}``. Unreadable or misshapen inputs are listed in
    ``failed`` and skipped."""
    device = torch.device(device)
    sf = read_student(student)
    G = sf.build().to(device)
    stride = int(G.stride)
    if size is None:
        size = int(sf.training.get("resolution") or 0)
    if size and size % stride:
        raise ApplyError(f"--size {size} is not divisible by the student's stride {stride}")
    files = list_images(Path(inputs))
    if not files:
        raise ApplyError(f"{inputs}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    out = Path(out_dir)
    failed: list[str] = []
    written = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", desc="apply")

    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        nonlocal written
        if not pending:
            return
        src = torch.from_numpy(np.stack([p[1] for p in pending]))
        pred = run_student(G, src, device, batch=batch)
        for (rel, _), img in zip(pending, pred, strict=True):
            save_png(img.permute(1, 2, 0).numpy(), out / rel.with_suffix(".png"))
            written += 1
        pending.clear()

    for path, rel in files:
        try:
            crop = load_crop(path, size, stride)
        except ApplyError as e:
            failed.append(str(e))
            if bar is not None:
                bar.update(1)
            continue
        if pending and (pending[0][1].shape != crop.shape or len(pending) >= batch):
            flush()
        pending.append((rel, crop))
        if bar is not None:
            bar.update(1)
    flush()
    if bar is not None:
        bar.close()
    return {"written": written, "failed": failed, "size": size or None, "out": str(out)}


__all__ = ["IMAGE_EXTENSIONS", "ApplyError", "apply_student", "list_images", "load_crop"]
