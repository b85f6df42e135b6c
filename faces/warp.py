"""FFHQ alignment geometry and the warps in both directions: pure numpy/Pillow, no detection.

Written from the published description of the FFHQ recipe (NVIDIA, ``ffhq-dataset``):

1. Eye centres (mean of each eye's six landmarks) and mouth corners define an oriented square:
   ``x = eye_to_eye - rot90(eye_to_mouth)``, normalised and scaled to the larger of
   ``2 * |eye_to_eye|`` and ``1.8 * |eye_to_mouth|``; ``y = rot90(x)``; centre
   ``c = eye_avg + 0.1 * eye_to_mouth``; corners ``c -x -y, c -x +y, c +x +y, c +x -y``
   (top-left, bottom-left, bottom-right, top-right, the order of Pillow's ``QUAD``).
2. Shrink: when the square is at least four output sizes wide, downscale by
   ``floor(qsize / size / 2)`` first.
3. Crop the square's bounding box plus a border of ``max(rint(0.1 * qsize), 3)``.
4. Pad (when the square leaves the image): reflect by at least ``rint(0.3 * qsize)``, blur the
   padded band (sigma ``0.02 * qsize``) and fade it towards the median colour.
5. Quad transform (bilinear) to a supersampled square, then a Lanczos resize to the output size.

Coordinates: pixel *index* coordinates throughout (pixel ``(i, j)`` has its centre at ``x = j``,
``y = i``), the convention of dlib's landmarks; Pillow's continuous coordinates are index + 0.5.
Unlike the original, the shrink is applied to the cropped region only (Pillow's ``resize`` with
``box``, which reads the filter support from the full image) and the quad follows the exact
per-axis scale, so the crop is an exact affine image of the returned quad.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

# dlib 68-point indices used by the recipe.
EYE_LEFT = slice(36, 42)  # the eye on the image's left (the subject's right eye)
EYE_RIGHT = slice(42, 48)
MOUTH_LEFT = 48
MOUTH_RIGHT = 54

LANCZOS = Image.Resampling.LANCZOS
BILINEAR = Image.Resampling.BILINEAR
BICUBIC = Image.Resampling.BICUBIC


def recipe_points(landmarks: np.ndarray) -> np.ndarray:
    """The four points the recipe uses, ``[eye_left, eye_right, mouth_left, mouth_right]`` (4, 2).

    ``landmarks`` is dlib's 68-point layout (68, 2) or these four points already (4, 2); "left"
    is the image's left.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        return np.stack(
            [lm[EYE_LEFT].mean(0), lm[EYE_RIGHT].mean(0), lm[MOUTH_LEFT], lm[MOUTH_RIGHT]]
        )
    if lm.shape == (4, 2):
        return lm.copy()
    raise ValueError(f"landmarks must be 68 or 4 points (x, y), got shape {lm.shape}")


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The recipe's oriented square (4, 2): top-left, bottom-left, bottom-right, top-right."""
    eye_left, eye_right, mouth_left, mouth_right = recipe_points(landmarks)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    if not np.all(np.isfinite([eye_to_eye, eye_to_mouth])):
        raise ValueError("landmarks are not finite")

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = math.hypot(*x)
    if norm < 1e-6:
        raise ValueError("degenerate landmarks: eyes and mouth give no orientation")
    x = x / norm * max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_size(quad: np.ndarray) -> float:
    """Side of the square in source pixels (the recipe's ``qsize``)."""
    quad = np.asarray(quad, dtype=np.float64)
    return float(math.hypot(*(quad[3] - quad[0])))


def quad_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """3x3 affine matrix mapping crop pixel ``(x, y, 1)`` to source pixel ``(x, y, 1)``.

    The crop's outer corner (index -0.5, -0.5) lands on ``quad[0]``; its right edge runs to
    ``quad[3]`` and its bottom edge to ``quad[1]``. Exact for the recipe's square (any
    parallelogram); its inverse maps the photo into the crop.
    """
    q = np.asarray(quad, dtype=np.float64)
    ex = (q[3] - q[0]) / size  # one crop pixel to the right
    ey = (q[1] - q[0]) / size  # one crop pixel down
    origin = q[0] + 0.5 * (ex + ey)  # centre of crop pixel (0, 0)
    return np.array([[ex[0], ey[0], origin[0]], [ex[1], ey[1], origin[1]], [0.0, 0.0, 1.0]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 matrix to points (N, 2)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h = p @ matrix[:2, :2].T + matrix[:2, 2]
    if not np.allclose(matrix[2], [0, 0, 1]):
        w = p @ matrix[2, :2] + matrix[2, 2]
        h = h / w[:, None]
    return h


def auto_transform_size(qsize: float, size: int) -> int:
    """Supersampled size for the quad transform: ``size * k``, k the smallest whole number giving
    at least one sample per source pixel (k <= 4 after the shrink step). NVIDIA's fixed 4096
    for 1024 output is the same idea with k = 4 always."""
    return size * min(max(math.ceil(qsize / size - 1e-9), 1), 4)


def _bands(arr: np.ndarray) -> list[Image.Image]:
    """The image as Pillow images that no resampling premultiplies by alpha: L, RGB, or for
    RGBA an ``RGBX`` image (Pillow filters its 4th band like a colour, independently), so the
    face's RGB is processed as RGB and the alpha is only carried along."""
    arr = np.ascontiguousarray(arr)
    if arr.shape[2] == 1:
        return [Image.fromarray(arr[:, :, 0], "L")]
    if arr.shape[2] == 3:
        return [Image.fromarray(arr, "RGB")]
    h, w = arr.shape[:2]
    return [Image.frombuffer("RGBX", (w, h), arr.tobytes(), "raw", "RGBX", 0, 1)]


def _join(images: list[Image.Image]) -> np.ndarray:
    parts = [np.asarray(im).reshape(im.size[1], im.size[0], -1) for im in images]
    return np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]


def _median_u8(arr: np.ndarray) -> np.ndarray:
    """Per-channel median of a float image with values in [0, 255], to the nearest level."""
    out = np.empty(arr.shape[2], dtype=np.float32)
    half = arr.shape[0] * arr.shape[1] / 2
    for ch in range(arr.shape[2]):
        counts = np.bincount(np.rint(arr[:, :, ch]).astype(np.uint8).ravel(), minlength=256)
        out[ch] = float(np.searchsorted(np.cumsum(counts), half))
    return out


def _pad_reflect_blur(arr: np.ndarray, pad: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """Step 4: reflect-pad (left, top, right, bottom), blur the band near and beyond the old
    edges, fade the outer band to the median colour."""
    p0, p1, p2, p3 = pad
    src = np.pad(arr, ((p1, p3), (p0, p2), (0, 0)), mode="reflect")
    h, w = src.shape[:2]
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    mask = np.maximum(
        1.0 - np.minimum(x / p0, (w - 1 - x) / p2), 1.0 - np.minimum(y / p1, (h - 1 - y) / p3)
    )
    blurred = _join([im.filter(ImageFilter.GaussianBlur(qsize * 0.02)) for im in _bands(src)])
    img = src.astype(np.float32)
    img += (blurred.astype(np.float32) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)[:, :, None]
    img += (_median_u8(img) - img) * np.clip(mask, 0.0, 1.0)[:, :, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


PRESCALE_UP_TO = 1.6  # ffhq_warp_prescaled approximates squares up to this many crop sides


def _ffhq_region(
    image: np.ndarray, quad: np.ndarray, size: int, enable_padding: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """Steps 2-4 of the recipe: the shrunk, cropped and padded region of ``image`` around
    ``quad`` (H, W, C uint8), the quad in its pixel indices, and the quad's size there."""
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 1|3|4) uint8, got {image.shape} {image.dtype}")
    H, W = image.shape[:2]
    quad = np.asarray(quad, dtype=np.float64).copy()
    qsize = quad_size(quad)

    # 2-3. Shrink and crop, in one resample of just the region needed.
    shrink = int(math.floor(qsize / size * 0.5))
    if shrink > 1:
        rw, rh = int(np.rint(W / shrink)), int(np.rint(H / shrink))
        sx, sy = rw / W, rh / H
        quad = (quad + 0.5) * [sx, sy] - 0.5
        qsize = quad_size(quad)
    else:
        rw, rh, sx, sy = W, H, 1.0, 1.0
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo = np.floor(quad.min(0)).astype(int) - border
    hi = np.ceil(quad.max(0)).astype(int) + border
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], rw), min(hi[1], rh)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError("the face square lies outside the image")
    if shrink > 1:
        box = (x0 / sx, y0 / sy, x1 / sx, y1 / sy)
        region = _join([im.resize((x1 - x0, y1 - y0), LANCZOS, box=box) for im in _bands(image)])
    else:
        region = image[y0:y1, x0:x1]
    quad -= [x0, y0]

    # 4. Pad where the square leaves the image.
    h, w = region.shape[:2]
    qlo, qhi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = (
        max(-qlo[0] + border, 0),
        max(-qlo[1] + border, 0),
        max(qhi[0] - w + border, 0),
        max(qhi[1] - h + border, 0),
    )
    if enable_padding and max(pad) > border - 4:
        pad = tuple(max(p, int(np.rint(qsize * 0.3))) for p in pad)
        region = _pad_reflect_blur(region, pad, qsize)
        quad += pad[:2]
    return region, quad, qsize


def ffhq_warp(
    image: np.ndarray,
    quad: np.ndarray,
    size: int = 256,
    *,
    transform_size: int | None = None,
    enable_padding: bool = True,
) -> np.ndarray:
    """The aligned crop (size, size, C) of ``image`` (H, W, C uint8, C in 1, 3, 4) for ``quad``.

    ``transform_size``: size of the bilinear quad transform before the final Lanczos resize
    (NVIDIA used 4096 for 1024 output); default: :func:`auto_transform_size`.
    """
    region, quad, qsize = _ffhq_region(image, quad, size, enable_padding)
    return _supersampled(region, quad, size, transform_size or auto_transform_size(qsize, size))


def _supersampled(region: np.ndarray, quad: np.ndarray, size: int, tsize: int) -> np.ndarray:
    """Step 5: quad transform of the region to ``tsize`` pixels a side, then the final resize."""
    data = tuple((quad + 0.5).ravel())
    out = [
        im.transform((tsize, tsize), Image.Transform.QUAD, data, BILINEAR)
        for im in _bands(np.ascontiguousarray(region))
    ]
    if tsize != size:
        out = [im.resize((size, size), LANCZOS) for im in out]
    return _join(out)


def ffhq_warp_prescaled(
    image: np.ndarray, quad: np.ndarray, size: int = 256, *, enable_padding: bool = True
) -> np.ndarray:
    """:func:`ffhq_warp` in about half the time, for video frames: the same crop up to
    resampling (tests/export/test_video.py bounds the difference).

    Where the square is a little wider than ``size`` (``size < qsize <= 1.6 * size``: faces
    of 260-410 px for 256 px crops), step 5's bilinear transform to a supersampled square
    (``2 * size`` pixels a side) and its Lanczos resize become a Lanczos resize of the
    square's bounding box by ``size / qsize`` (antialiased like the recipe's final resize) and
    a bilinear transform of ``size`` squared pixels at one resized pixel per crop pixel, which
    only turns and shifts. Otherwise it is :func:`ffhq_warp`: for larger squares the bilinear
    interpolation at one pixel per pixel loses detail the recipe's supersampling keeps (mean
    gradient under 0.9 of its crop), and a bicubic one, as sharp, makes the crop of a square
    that jitters by a tenth of a pixel flicker 60 % more than the recipe's.

    The cost of the approximation: a square that moves by sub-pixel steps changes the crop a
    little more than with :func:`ffhq_warp` (a tracked face in a static 720p clip: 0.36 against
    0.29 levels mean change between frames; bilinear interpolation blurs by how far each
    sample falls between pixels, and the recipe samples twice as densely).
    """
    region, quad, qsize = _ffhq_region(image, quad, size, enable_padding)
    if not size < qsize <= PRESCALE_UP_TO * size:
        return _supersampled(region, quad, size, auto_transform_size(qsize, size))
    r = size / qsize  # resized pixels per region pixel, < 1
    h, w = region.shape[:2]
    # The square's bounding box and 2 resized pixels around it (what the bilinear reads),
    # inside the region; the resize reads its filter's support beyond it.
    lo = np.maximum(np.floor((quad.min(0) + 0.5) * r) - 2, 0)
    hi = np.minimum(np.ceil((quad.max(0) + 0.5) * r) + 2, np.floor(np.array([w, h]) * r))
    nw, nh = (max(int(v), 1) for v in hi - lo)
    box = (lo[0] / r, lo[1] / r, min((lo[0] + nw) / r, w), min((lo[1] + nh) / r, h))
    sx, sy = nw / (box[2] - box[0]), nh / (box[3] - box[1])
    # Region continuous coordinates (index + 0.5) -> resized: (X - box origin) * s.
    data = tuple(((quad + 0.5 - [box[0], box[1]]) * [sx, sy]).ravel())
    out = [
        im.resize((nw, nh), LANCZOS, box=box).transform(
            (size, size), Image.Transform.QUAD, data, BILINEAR
        )
        for im in _bands(np.ascontiguousarray(region))
    ]
    return _join(out)


def resize_square(img: np.ndarray, n: int) -> np.ndarray:
    """``img`` (uint8, square, e.g. a crop or its mask) at ``n`` x ``n`` px with Lanczos;
    ``img`` itself when it already is that size."""
    if img.shape[0] == img.shape[1] == n:
        return img
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((n, n), LANCZOS))


def smooth_ramp(t: np.ndarray, feather: float) -> np.ndarray:
    """0 at t <= 0, 1 at t >= feather, smoothstep between (zero slope at both ends)."""
    if feather <= 0:
        return (t > 0).astype(np.float32)
    s = np.clip(t / feather, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def crop_mask(u: np.ndarray, v: np.ndarray, feather: float) -> np.ndarray:
    """Feathered square mask over crop coordinates ``u, v`` in [0, 1] (0 at and beyond the crop
    edges, 1 inside a band of ``feather`` times the crop size)."""
    return (
        smooth_ramp(u, feather)
        * smooth_ramp(1.0 - u, feather)
        * smooth_ramp(v, feather)
        * smooth_ramp(1.0 - v, feather)
    )


def paste_crop(
    base: np.ndarray,
    crop: np.ndarray,
    matrix: np.ndarray,
    *,
    feather: float = 0.1,
    alpha: np.ndarray | None = None,
    under: np.ndarray | None = None,
) -> None:
    """Blend ``crop`` (h, w, >=3 uint8) back into ``base`` (H, W, C float32, in place, RGB only).

    ``matrix`` maps the crop's pixels to the photo's (for a crop of the same size as the aligned
    one; see :func:`quad_matrix`). The square mask is computed analytically per photo pixel from
    the inverse map; ``alpha`` (h, w float in [0, 1], over the crop's pixels, e.g.
    :func:`faces.mask.person_mask`) multiplies it after a bilinear warp. Pixels the product
    gives 0 are left exactly as they were.

    With ``under`` (an image of the crop's shape: the crop the model was given), the photo gets
    the *change* instead of the crop, ``base += mask * (warp(crop) - warp(under))``: where the
    model changed nothing the photo stays exactly as it was, without the losses of resampling
    it to the crop and back.
    """
    H, W = base.shape[:2]
    ch, cw = crop.shape[:2]
    # Bounding box of the crop's outline in the photo.
    corners = transform_points(
        matrix, np.array([[-0.5, -0.5], [cw - 0.5, -0.5], [cw - 0.5, ch - 0.5], [-0.5, ch - 0.5]])
    )
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [W, H])
    if x1 <= x0 or y1 <= y0:
        return

    if alpha is not None and alpha.shape != (ch, cw):
        raise ValueError(f"alpha must be {(ch, cw)} like the crop, got {alpha.shape}")
    if under is not None and under.shape[:2] != (ch, cw):
        raise ValueError(f"under must be {(ch, cw)} like the crop, got {under.shape[:2]}")
    inv0 = np.linalg.inv(matrix)  # photo index -> index of the crop as given
    warped = _warp_rgb(crop, matrix, x0, y0, x1, y1)
    # Mask from each photo pixel's position in the crop (u, v in [0, 1] across it).
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    cx = inv0[0, 0] * xs + inv0[0, 1] * ys + inv0[0, 2]
    cy = inv0[1, 0] * xs + inv0[1, 1] * ys + inv0[1, 2]
    mask = crop_mask((cx + 0.5) / cw, (cy + 0.5) / ch, feather).astype(np.float32)
    if alpha is not None:
        mask *= _warp_alpha(alpha, inv0, x0, y0, x1, y1)
    mask = mask[:, :, None]
    region = base[y0:y1, x0:x1, :3]
    if under is None:
        region += (warped - region) * mask
    else:
        region += (warped - _warp_rgb(under, matrix, x0, y0, x1, y1)) * mask


def _warp_rgb(
    img: np.ndarray, matrix: np.ndarray, x0: int, y0: int, x1: int, y1: int
) -> np.ndarray:
    """The RGB of ``img`` (h, w, >=3 uint8, a crop; ``matrix`` crop index -> photo index)
    resampled bicubically at the photo pixels of the box (x0, y0)-(x1, y1), float32; shrunk
    with Lanczos first where the face is smaller in the photo than in the crop (no aliasing)."""
    rgb = np.ascontiguousarray(img[:, :, :3])
    ch, cw = rgb.shape[:2]
    m = matrix.copy()
    scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))  # photo pixels per crop pixel
    if scale < 0.75:
        nw, nh = max(round(cw * scale), 1), max(round(ch * scale), 1)
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), LANCZOS))
        # new pixel index n <-> old index (n + 0.5) * cw / nw - 0.5
        a = np.array(
            [[cw / nw, 0, 0.5 * cw / nw - 0.5], [0, ch / nh, 0.5 * ch / nh - 0.5], [0, 0, 1.0]]
        )
        m = m @ a
    # Replicate the edge so bicubic sampling at the border never reads the black fill.
    e = 2
    rgb = np.pad(rgb, ((e, e), (e, e), (0, 0)), mode="edge")
    inv = np.linalg.inv(m)  # photo index -> crop index
    # Pillow AFFINE maps output continuous (X, Y) of the box to input continuous coordinates:
    # photo index = (X - 0.5 + x0, Y - 0.5 + y0); padded crop continuous = crop index + e + 0.5.
    shift = np.array([[1.0, 0, x0 - 0.5], [0, 1.0, y0 - 0.5], [0, 0, 1.0]])
    t = np.array([[1.0, 0, e + 0.5], [0, 1.0, e + 0.5], [0, 0, 1.0]]) @ inv @ shift
    warped = Image.fromarray(rgb).transform(
        (int(x1 - x0), int(y1 - y0)), Image.Transform.AFFINE, tuple(t[:2].ravel()), BICUBIC
    )
    return np.asarray(warped, dtype=np.float32)


def _warp_alpha(alpha: np.ndarray, inv: np.ndarray, x0: int, y0: int, x1: int, y1: int):
    """``alpha`` (h, w) over a crop, sampled bilinearly at the photo pixels of the box
    (x0, y0)-(x1, y1); ``inv`` maps photo index -> crop index. 0 outside the crop."""
    a = np.ascontiguousarray(alpha, dtype=np.float32)
    # As in paste_crop: output continuous (X, Y) -> photo index (X - 0.5 + x0, Y - 0.5 + y0);
    # crop continuous = crop index + 0.5.
    shift = np.array([[1.0, 0, x0 - 0.5], [0, 1.0, y0 - 0.5], [0, 0, 1.0]])
    t = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]]) @ inv @ shift
    out = Image.fromarray(a, "F").transform(
        (int(x1 - x0), int(y1 - y0)), Image.Transform.AFFINE, tuple(t[:2].ravel()), BILINEAR
    )
    return np.asarray(out, dtype=np.float32)
