"""The images of a pair on the host: resizing, aligned photos and PNG encoding (torch-free).

:func:`encode_pair` is what the PNG encoding worker processes run (:mod:`pairs.writer`), so this
module imports no torch: spawned workers load only numpy and Pillow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.images import IMAGE_EXTENSIONS
from pairs.shards import PairsError, encode_png


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an HWC RGB uint8 image to ``size x size`` with Pillow's Lanczos (no-op if equal)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    im = Image.fromarray(image, mode="RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def load_photo(path: str | os.PathLike, size: int) -> np.ndarray:
    """An aligned photo as ``size x size`` RGB uint8 (Lanczos-resized when needed)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PairsError(f"{path}: unreadable image ({e})") from None
    if arr.shape[0] != arr.shape[1]:
        raise PairsError(
            f"{path}: aligned photos must be square, this one is {arr.shape[1]}x{arr.shape[0]}"
        )
    return resize_rgb(arr, size)


def encode_pair(
    src: np.ndarray | str, dst: np.ndarray, size: int, level: int
) -> tuple[bytes, bytes]:
    """PNG-encode one pair at ``size`` (worker-process entry point; ``src`` may be a photo path)."""
    src_img = load_photo(src, size) if isinstance(src, str) else resize_rgb(src, size)
    return encode_png(src_img, level), encode_png(resize_rgb(dst, size), level)


def list_photos(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive) as sorted relative POSIX paths."""
    root = Path(folder)
    if not root.is_dir():
        raise PairsError(f"{root}: photo folder not found")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
