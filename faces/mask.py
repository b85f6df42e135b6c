"""Where the person is in an aligned crop: a soft mask from the 68 landmarks; no torch.

The mask follows the head and neck rather than the crop's square, so that pasting a restyled
crop back changes the person and leaves the photo around them as it was. It is drawn in crop
pixels from the face's own landmarks (mapped into the crop):

- the jaw line (points 0-16), pushed outwards from the face's centre by ``widen`` of the jaw's
  width (cheeks, ears and hair at the sides);
- over it a half ellipse through the jaw's two ends whose top lies ``top`` times the
  brow-to-chin distance above the brows (forehead and hair);
- below it the neck: from the jaw at ``neck`` of its width down past the crop's bottom edge,
  flaring to the shoulders.

The polygon is filled at twice the crop's resolution, shrunk, and blurred with a Gaussian of
sigma ``feather`` times the crop side: the mask is 1/2 on the polygon's outline. Four hand
landmarks (eyes and mouth corners) carry no outline: the mask then uses the mean outline of an
FFHQ-aligned face placed by those four points (:data:`MEAN_OUTLINE`).

Pitfall: the mask knows only the landmarks, not the pixels; hair much longer or fuller than
``top``/``widen`` allow keeps the photo's look where it passes the outline. The defaults are
chosen by measurement on the procedural scenes (see the README, "Export and toon-infer").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from faces.warp import recipe_points

__all__ = ["MEAN_OUTLINE", "PersonMask", "outline_polygons", "person_mask"]

# The jaw (dlib points 0-16), brows' middle (mean of 17-26) and the four recipe points
# [eye_left, eye_right, mouth_left, mouth_right] of an FFHQ-aligned face, in units of the crop
# side (mean of 24 procedural faces at 256 px; used for hand-given 4-point landmarks).
MEAN_OUTLINE = {
    "jaw": np.array(
        [
            [62, 125],
            [62, 140],
            [64, 156],
            [69, 171],
            [76, 185],
            [86, 197],
            [98, 207],
            [112, 214],
            [127, 216],
            [143, 214],
            [157, 207],
            [169, 197],
            [179, 185],
            [186, 171],
            [191, 156],
            [193, 140],
            [193, 125],
        ],
        dtype=np.float64,
    )
    / 256,
    "brows": np.array([127.5, 99.5]) / 256,
    "recipe": np.array([[100.0, 121.5], [155.0, 121.5], [106.0, 176.0], [149.0, 176.0]]) / 256,
}


@dataclass(frozen=True)
class PersonMask:
    """Shape of the person mask (fractions; see the module docstring)."""

    top: float = 1.1  # hair top above the brows, in brow-to-chin distances
    widen: float = 0.12  # the jaw pushed outwards by this fraction of its width, on each side
    neck: float = 0.62  # neck width as a fraction of the jaw's width
    feather: float = 0.02  # Gaussian sigma of the edge, as a fraction of the crop side

    def __post_init__(self) -> None:
        for name in ("top", "widen", "neck", "feather"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 2):
                raise ValueError(f"PersonMask.{name} must be in [0, 2], got {v}")


def _outline_points(landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The jaw (17, 2) and the brows' middle (2,) in crop pixels: from 68 landmarks, or the
    mean outline fitted (similarity, least squares) to four recipe points."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        return lm[0:17], lm[17:27].mean(0)
    src = MEAN_OUTLINE["recipe"] * size
    dst = recipe_points(lm)
    # Similarity src -> dst as complex numbers: dst = a * src + b.
    zs, zd = src @ [1, 1j], dst @ [1, 1j]
    ms, md = zs.mean(), zd.mean()
    a = np.vdot(zs - ms, zd - md) / max(np.vdot(zs - ms, zs - ms).real, 1e-12)
    b = md - a * ms

    def tf(p: np.ndarray) -> np.ndarray:
        z = a * (np.asarray(p) * size @ [1, 1j]) + b
        return np.stack([z.real, z.imag], -1)

    return tf(MEAN_OUTLINE["jaw"]), tf(MEAN_OUTLINE["brows"])


def outline_polygons(
    landmarks: np.ndarray, size: int, shape: PersonMask | None = None
) -> list[np.ndarray]:
    """The person as two polygons (N, 2) in crop pixel indices, for landmarks in crop pixels
    (68 dlib points, or 4 recipe points): the head (widened jaw and the hair arc over it) and
    the neck (from the mouth's height down past the crop's bottom, flaring to the shoulders)."""
    shape = shape or PersonMask()
    jaw, brows = _outline_points(landmarks, size)
    left, right, chin = jaw[0], jaw[16], jaw[8]
    across = right - left
    width = float(np.hypot(*across))
    if width < 1e-6:
        raise ValueError("degenerate landmarks: the jaw has no width")
    ex = across / width  # the face's right, unit
    ey = np.array([-ex[1], ex[0]])  # the face's down, unit (image y runs down)
    centre = (left + right) / 2
    # Jaw pushed outwards, sideways from the face's axis, and a little under the chin.
    side = np.sign((jaw - centre) @ ex)
    jaw_w = jaw + np.outer(side, ex) * shape.widen * width
    jaw_w[8] = jaw_w[8] + ey * shape.widen * width * 0.5
    # Half ellipse from the widened left end over the top to the widened right end.
    half = width * (0.5 + shape.widen)
    up = float((centre - brows) @ -ey) + shape.top * float((chin - brows) @ ey)
    t = np.linspace(np.pi, 0, 33)[1:-1]
    arc = centre + np.outer(np.cos(t) * half, ex) - np.outer(np.sin(t) * up, ey)
    head = np.concatenate([jaw_w[::-1], arc])  # right end -> chin -> left end -> over the top
    # Neck: straight down from the mouth's height, then flaring to the shoulders.
    nw = shape.neck * width / 2
    mid = centre + ey * 0.6 * float((chin - centre) @ ey)
    drop = max(size - float(chin @ ey), 0.0)
    neck_top = chin + ey * 0.35 * drop
    bottom = chin + ey * (drop + width)
    neck = np.array(
        [
            mid - ex * nw,
            neck_top - ex * nw,
            bottom - ex * nw * 2.2,
            bottom + ex * nw * 2.2,
            neck_top + ex * nw,
            mid + ex * nw,
        ]
    )
    return [head, neck]


def person_mask(landmarks: np.ndarray, size: int, shape: PersonMask | None = None) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the soft person mask of a crop whose face has
    ``landmarks`` (crop pixels, 68 or 4 points)."""
    shape = shape or PersonMask()
    ss = 2
    im = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(im)
    for poly in outline_polygons(landmarks, size, shape):
        # Pillow's polygon takes continuous coordinates: index i covers [i, i + 1).
        draw.polygon([(float(x), float(y)) for x, y in (poly + 0.5) * ss], fill=255)
    im = im.resize((size, size), Image.Resampling.BOX)
    sigma = shape.feather * size
    if sigma > 0:
        im = im.filter(ImageFilter.GaussianBlur(sigma))
    return np.clip(np.asarray(im, dtype=np.float32) / 255.0, 0.0, 1.0)
