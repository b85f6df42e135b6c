"""Paste-back for video frames: the masks of :func:`faces.align.paste_back`, applied in the
crop's pixels and warped into the frame once.

``paste_back`` computes the feathered square for every photo pixel analytically from the
inverse map and warps the person mask separately, in float64: exact, but the per-pixel mask
costs more than the warp. A video pastes every frame,
so here the same two masks (the square's smoothstep edge, :func:`faces.warp.smooth_ramp`, and
:func:`faces.mask.person_mask`) are multiplied in the crop's own pixels, carried as the crop's
alpha channel and warped into the frame with the colour in one transform, bilinear by default
(Pillow's bicubic affine transform alone costs about as much as all the rest). The result
differs from ``paste_back``'s by the resampling (tests/export/test_video.py bounds it).

Imports: numpy, pillow and the torch-free ``faces``. Never torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from faces.align import PASTE_BLENDS
from faces.mask import person_mask
from faces.warp import resize_square, smooth_ramp

SHRINK_BELOW = 0.75  # as paste_crop: frame px per crop px under which the crop is shrunk first
PAD = 2  # edge pixels added around the crop before the warp


def _continuous(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]])


def _affine(
    img: np.ndarray, mode: str, box: tuple[int, int], t: np.ndarray, resample
) -> np.ndarray:
    """``img`` resampled by Pillow's AFFINE transform ``t`` (output continuous -> input
    continuous) into a ``box`` (width, height) image."""
    out = Image.fromarray(img, mode).transform(
        box, Image.Transform.AFFINE, tuple(t[:2].ravel()), resample
    )
    return np.asarray(out)


class FramePaster:
    """Pastes toonified crops of ``size`` px into frames; ``mode``, ``feather`` and ``blend``
    as :func:`faces.align.paste_back` (``blend`` takes each face's change from its ``crop``);
    ``resample``: ``bilinear`` (default, the fast one) or ``bicubic`` (paste_back's, about
    twice the time of the whole paste)."""

    def __init__(
        self,
        size: int,
        mode: str = "person",
        feather: float = 0.1,
        resample: str = "bilinear",
        blend: str = "change",
    ) -> None:
        if mode not in ("person", "square"):
            raise ValueError(f"paste mode must be person or square, got {mode!r}")
        if blend not in PASTE_BLENDS:
            raise ValueError(f"paste blend must be one of {', '.join(PASTE_BLENDS)}, got {blend!r}")
        self.size, self.mode, self.blend = size, mode, blend
        self.resample = {
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
        }[resample]
        u = (np.arange(size) + 0.5) / size
        ramp = smooth_ramp(u, feather) * smooth_ramp(1.0 - u, feather)
        self.square = np.outer(ramp, ramp).astype(np.float32)  # crop_mask over crop pixels

    def alpha(self, face) -> np.ndarray:
        """(size, size) float32 mask of one face over its crop's pixels."""
        if self.mode == "square":
            return self.square
        return self.square * person_mask(face.to_crop(face.landmarks), self.size)

    def alpha_u8(self, face) -> np.ndarray:
        """:meth:`alpha` in levels of 255 (uint8), as :meth:`paste` applies it."""
        return np.rint(self.alpha(face) * 255).astype(np.uint8)

    def paste(
        self,
        frame: np.ndarray,
        faces: Sequence,
        outputs: Sequence[np.ndarray],
        alphas: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """``frame`` (H, W, 3 uint8) with each output crop (size, size, 3) blended in at its
        face (a :class:`faces.align.AlignedFace` of this frame); a new array. ``alphas``: the
        faces' :meth:`alpha_u8`, when made beforehand (the video's tracking thread does)."""
        result = np.array(frame[:, :, :3], copy=True)
        H, W = result.shape[:2]
        S = self.size
        if alphas is None:
            alphas = [self.alpha_u8(face) for face in faces]
        for face, out, a in zip(faces, outputs, alphas, strict=True):
            rgb = np.asarray(out)[:, :, :3]
            m = face.matrix  # crop index -> frame index
            scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))
            under = None
            if self.blend == "change":
                under = resize_square(np.asarray(face.crop)[:, :, :3], S)
            if scale < SHRINK_BELOW:  # shrink first, as paste_crop does (no aliasing)
                n = max(round(S * scale), 1)
                rgb, a = resize_square(rgb, n), resize_square(a, n)
                under = resize_square(under, n) if under is not None else None
                r = S / n
                m = m @ np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5], [0, 0, 1.0]])
            n = rgb.shape[0]
            # Colour edge-replicated by PAD px so bicubic never reads the fill; alpha 0 there.
            rgbx = np.dstack(
                [np.pad(rgb, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge"), np.pad(a, PAD)]
            )
            edge = np.array([[-0.5, -0.5], [n - 0.5, -0.5], [n - 0.5, n - 0.5], [-0.5, n - 0.5]])
            corners = edge @ m[:2, :2].T + m[:2, 2]
            x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
            x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [W, H])
            if x1 <= x0 or y1 <= y0:
                continue
            # Output continuous (X, Y) -> frame index (X - 0.5 + x0, Y - 0.5 + y0) -> crop index
            # -> padded crop continuous (index + PAD + 0.5): the map Pillow's AFFINE takes.
            t = (
                _continuous(PAD + 0.5, PAD + 0.5)
                @ np.linalg.inv(m)
                @ _continuous(x0 - 0.5, y0 - 0.5)
            )
            box = (int(x1 - x0), int(y1 - y0))
            # RGBX: Pillow resamples the 4th band like a colour, without premultiplying.
            warped = _affine(rgbx, "RGBX", box, t, self.resample)
            alpha = warped[:, :, 3:4].astype(np.float32) * np.float32(1 / 255)
            region = result[y0:y1, x0:x1].astype(np.float32)
            if under is None:
                region += (warped[:, :, :3].astype(np.float32) - region) * alpha
            else:  # the change of the crop, its input warped the same way
                padded = np.pad(under, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
                base = _affine(padded, "RGB", box, t, self.resample)
                region += (warped[:, :, :3].astype(np.float32) - base) * alpha
            result[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
        return result
