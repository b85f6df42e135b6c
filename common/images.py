"""Image files: tiling and atomic PNG writes (torch-free)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.files import atomic_write

# File name endings read as images when a folder of photos is given.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def make_grid(images: Sequence[np.ndarray], cols: int | None = None) -> np.ndarray:
    """Tile HWC uint8 images (all the same shape) row by row into one image."""
    if not images:
        raise ValueError("no images to tile")
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = images[0].shape
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = img
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike, compress_level: int = 6) -> Path:
    """Write an HWC (or HW) uint8 array as PNG atomically (temporary name, then rename)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    image = Image.fromarray(array)
    return atomic_write(
        path, lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level)
    )
