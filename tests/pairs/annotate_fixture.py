"""A drawn face that dlib misses, and the geometry its aligned crop must have.

``drawn.png`` (400x300): a red dot centred on pixel (150, 130) and a blue one on (250, 130)
(the eyes), a mouth line from (170, 220) to (230, 220), nothing else, so neither of dlib's
detectors sees a face. The FFHQ recipe (faces/warp.py's docstring) on these four points:
eye_to_eye (100, 0), eye_to_mouth (0, 90), square side 2 * max(2 * 100, 1.8 * 90) = 400,
centre eye_avg + 0.1 * eye_to_mouth = (200, 139). So in a crop of S pixels the red dot's centre
lies at continuous position ((200 - 50) / 400 * S, (200 - 9) / 400 * S), pixel index that less
0.5; the blue dot's at x (200 + 50) / 400 * S. Worked out here by hand, not by faces/ code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RED_EYE = (150.0, 130.0)
BLUE_EYE = (250.0, 130.0)
MOUTH = ((170.0, 220.0), (230.0, 220.0))
POINTS = [list(RED_EYE), list(BLUE_EYE), list(MOUTH[0]), list(MOUTH[1])]


def expected_dots(size: int) -> dict[str, tuple[float, float]]:
    """Pixel-index centres of the red and blue dots in an aligned crop of ``size``."""
    y = (200 - 9) / 400 * size - 0.5
    return {"red": ((200 - 50) / 400 * size - 0.5, y), "blue": ((200 + 50) / 400 * size - 0.5, y)}


def make_inputs(folder: Path) -> Path:
    """``folder/drawn.png`` and ``folder/nested/blank.png`` (a flat grey square)."""
    (folder / "nested").mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (400, 300), (235, 225, 200))
    d = ImageDraw.Draw(im)
    for (cx, cy), colour in ((RED_EYE, (230, 20, 30)), (BLUE_EYE, (20, 60, 240))):
        d.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], fill=colour)
    d.line([*MOUTH[0], *MOUTH[1]], fill=(90, 60, 50), width=4)
    im.save(folder / "drawn.png")
    Image.new("RGB", (64, 64), (40, 50, 60)).save(folder / "nested" / "blank.png")
    return folder


def dot_centres(crop: np.ndarray) -> dict[str, tuple[float, float]]:
    """Centroids (x, y pixel index) of the strongly red and strongly blue pixels of a crop."""
    rgb = crop.astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    out = {}
    for name, mask in (("red", (r > 150) & (g < 110) & (b < 110)), ("blue", (b > 150) & (r < 110))):
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0, f"no {name} dot in the crop"
        out[name] = (float(xs.mean()), float(ys.mean()))
    return out
