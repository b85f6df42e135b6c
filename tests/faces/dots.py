"""Images of bright round dots at known points, and where a dot's centre lands in a warped crop:
the geometry checks of the alignment warps (photo path and video path) share them."""

from __future__ import annotations

import numpy as np


def dot_image(h: int, w: int, points: np.ndarray, sigma: float) -> np.ndarray:
    """An (h, w, 3) uint8 image: a Gaussian dot of ``sigma`` px at every (x, y) of ``points``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    for px, py in points:
        img += np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(img, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def dot_centroid(crop: np.ndarray, at: np.ndarray, r: int) -> np.ndarray:
    """The brightness centroid (x, y) of the dot in the (2r+1)-px window around ``at``."""
    x0, y0 = int(round(at[0])) - r, int(round(at[1])) - r
    win = crop[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1, 0].astype(np.float64)
    win = np.clip(win - 20, 0, None)  # the faint tails of the other dots
    yy, xx = np.mgrid[0 : win.shape[0], 0 : win.shape[1]]
    return np.array([(xx * win).sum() / win.sum() + x0, (yy * win).sum() / win.sum() + y0])
