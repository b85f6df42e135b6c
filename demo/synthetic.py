"""Synthetic faces with a known answer: the same face as a photo and as game-character art.

    from demo.synthetic import sample_params, render, landmarks

    p = sample_params(np.random.default_rng(0))
    photo = render(p, "photo")          # (256, 256, 3) uint8, FFHQ-aligned (plus p's pose jitter)
    game = render(p, "game")            # the same face, pixel-aligned, as cel-shaded game art
    lm = landmarks(p, 256)              # (68, 2) dlib-order landmarks of both drawings

A face is a :class:`FaceParams` (a flat float vector underneath). It is built in a "model" frame
(y down, origin between the eyes, which are about 0.68 units apart), its 68 landmarks are
computed there, and the FFHQ recipe (:mod:`faces.warp`) applied to those landmarks gives the frame
that puts the eyes and mouth where an FFHQ-aligned crop has them; the pose jitter then moves the
face inside the crop. Everything is drawn as polygons and analytic fields at ``SUPERSAMPLE`` times
the output size and shrunk with Lanczos. Numpy and Pillow only (no torch, no dlib).

- "photo": lambert-shaded skin with warm shadows, soft shadows under the brows, nose and lip,
  seeded skin mottling and grain, hair with strands, a blurred gradient background.
- "game": the same shapes as flat colours with hard cel-shadow bands, ink outlines, bigger glossy
  eyes with highlights, flat hair with a shine band, clean skin and a flat gradient background.

Eyes are drawn larger in "game" (same centres); every other outline coincides between the styles
up to the ink lines. :func:`render_photo_scene` puts a photo-style face into a cluttered canvas,
and :func:`write_dataset` writes a deterministic folder of PNGs with their parameters.
"""

from __future__ import annotations

import io
import json
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.files import atomic_write_bytes
from faces.warp import ffhq_quad, quad_matrix, transform_points

__all__ = [
    "HAIR_STYLES",
    "PERSON_PARTS",
    "STYLES",
    "SUPERSAMPLE",
    "FaceParams",
    "background",
    "face_frame",
    "item_params",
    "landmarks",
    "render",
    "render_person_mask",
    "render_photo_scene",
    "sample_params",
    "write_dataset",
]

STYLES = ("photo", "game")
HAIR_STYLES = ("short", "long", "bun", "fringe")
SUPERSAMPLE = 3  # drawing resolution / output resolution
Color = tuple[float, float, float]  # sRGB in [0, 1]


# -- parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceParams:
    """One synthetic face. Colours are sRGB triples in [0, 1]; sizes are multipliers around 1
    unless stated. ``to_vector``/``from_vector`` give the flat float64 vector (``vector_names``)."""

    head_width: float = 1.0  # face half-width multiplier
    head_height: float = 1.0  # skull-to-chin multiplier
    jaw: float = 0.5  # 0: narrow, pointed chin ... 1: wide, square jaw
    skin: Color = (0.87, 0.68, 0.55)
    eye_size: float = 1.0
    eye_spacing: float = 1.0  # distance between the eyes
    eye_height: float = 0.0  # > 0 puts the eyes higher in the head (model units)
    iris: Color = (0.35, 0.22, 0.12)
    brow_thickness: float = 1.0
    brow_tilt: float = 0.0  # radians; > 0 raises the outer ends
    hair_style: int = 0  # index into HAIR_STYLES
    hair: Color = (0.12, 0.09, 0.07)
    hair_volume: float = 1.0  # how far the hair stands off the skull
    mouth_width: float = 1.0
    smile: float = 0.3  # corner lift: < 0 down, 1 a broad smile
    lips: Color = (0.72, 0.38, 0.36)
    nose_length: float = 1.0
    nose_width: float = 1.0
    bg_top: Color = (0.55, 0.62, 0.70)
    bg_bottom: Color = (0.30, 0.34, 0.40)
    bg_angle: float = 0.0  # radians, direction of the background gradient from vertical
    shirt: Color = (0.25, 0.30, 0.45)
    light: float = 0.3  # horizontal light direction, -1 (from the left) ... 1
    rotation: float = 0.0  # pose jitter: degrees, counter-clockwise in the image
    shift_x: float = 0.0  # pose jitter: fraction of the crop side
    shift_y: float = 0.0
    scale: float = 1.0  # pose jitter: > 1 makes the face larger in the crop

    def __post_init__(self) -> None:
        if not 0 <= self.hair_style < len(HAIR_STYLES):
            raise ValueError(f"hair_style must be in 0..{len(HAIR_STYLES) - 1}")

    @property
    def hair_name(self) -> str:
        return HAIR_STYLES[self.hair_style]

    @staticmethod
    def vector_names() -> list[str]:
        """Name of each entry of :meth:`to_vector` (colours as ``name.r/g/b``)."""
        names = []
        for f in fields(FaceParams):
            if f.type == "Color":
                names += [f"{f.name}.{c}" for c in "rgb"]
            else:
                names.append(f.name)
        return names

    def to_vector(self) -> np.ndarray:
        """Flat float64 vector in the order of :meth:`vector_names`."""
        out: list[float] = []
        for v in astuple(self):
            out += list(v) if isinstance(v, tuple) else [v]
        return np.asarray(out, dtype=np.float64)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> FaceParams:
        """Inverse of :meth:`to_vector` (the hair style is rounded to its index)."""
        v = np.asarray(vector, dtype=np.float64).ravel()
        n = len(cls.vector_names())
        if v.shape != (n,):
            raise ValueError(f"a FaceParams vector has {n} entries, got {v.shape}")
        kw: dict = {}
        i = 0
        for f in fields(cls):
            if f.type == "Color":
                kw[f.name] = tuple(float(x) for x in v[i : i + 3])
                i += 3
            elif f.type == "int":
                kw[f.name] = int(round(v[i]))
                i += 1
            else:
                kw[f.name] = float(v[i])
                i += 1
        return cls(**kw)

    def without_jitter(self) -> FaceParams:
        """The same face exactly FFHQ-aligned (no rotation, shift or scale)."""
        v = self.to_vector()
        names = self.vector_names()
        for k, val in (("rotation", 0.0), ("shift_x", 0.0), ("shift_y", 0.0), ("scale", 1.0)):
            v[names.index(k)] = val
        return FaceParams.from_vector(v)


_SKIN = np.array(  # light ... dark
    [
        [0.97, 0.83, 0.74],
        [0.92, 0.74, 0.62],
        [0.84, 0.63, 0.49],
        [0.72, 0.52, 0.38],
        [0.55, 0.38, 0.27],
        [0.38, 0.26, 0.19],
    ]
)
_IRIS = np.array(
    [
        [0.30, 0.18, 0.10],  # dark brown
        [0.45, 0.28, 0.14],  # brown
        [0.50, 0.42, 0.20],  # hazel
        [0.30, 0.45, 0.30],  # green
        [0.30, 0.45, 0.65],  # blue
        [0.45, 0.50, 0.55],  # grey
    ]
)
_IRIS_P = np.array([0.35, 0.25, 0.1, 0.1, 0.12, 0.08])
_HAIR = np.array(
    [
        [0.07, 0.06, 0.06],  # black
        [0.18, 0.12, 0.08],  # dark brown
        [0.36, 0.23, 0.13],  # brown
        [0.50, 0.22, 0.10],  # auburn
        [0.78, 0.64, 0.40],  # blond
        [0.62, 0.60, 0.58],  # grey
    ]
)
_HAIR_P = np.array([0.3, 0.25, 0.2, 0.08, 0.1, 0.07])


def _luma(c: np.ndarray) -> float:
    return float(np.dot(c, [0.299, 0.587, 0.114]))


def sample_params(rng: np.random.Generator) -> FaceParams:
    """A random face: proportions around the average, palettes of real skin, iris and hair colours,
    a background whose brightness differs from the skin's and whose colour differs from the hair's
    (the head's outline stays visible, which dlib's HOG detector needs), any of the hair styles,
    small pose jitter (|rotation| <= 8 degrees, |shift| <= 3 % of the crop, scale 0.94-1.06)."""

    def jitter(c: np.ndarray, s: float) -> Color:
        return tuple(float(x) for x in np.clip(c + rng.normal(0, s, 3), 0.0, 1.0))

    t = (len(_SKIN) - 1) * rng.beta(1.2, 1.6)  # somewhat more light than dark tones
    k = min(int(t), len(_SKIN) - 2)
    skin = _SKIN[k] + (_SKIN[k + 1] - _SKIN[k]) * (t - k)
    skin = np.asarray(jitter(skin, 0.015))
    iris = _IRIS[rng.choice(len(_IRIS), p=_IRIS_P)]
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)]
    lips = np.clip(skin * 0.55 + np.array([0.75, 0.30, 0.32]) * 0.45 - 0.04, 0, 1)

    # Background: random colour, brightness at least 0.22 away from the skin's and colour at
    # least 0.3 away from the hair's (the head's outline stays visible).
    sl = _luma(skin)
    for _ in range(50):
        base = rng.uniform(0.05, 0.95, 3)
        if abs(_luma(base) - sl) > 0.22 and np.linalg.norm(base - hair) > 0.3:
            break
    else:
        base = np.full(3, 0.1 if sl > 0.5 else 0.9)
    top = np.clip(base + rng.normal(0, 0.06, 3), 0, 1)
    bottom = np.clip(base * rng.uniform(0.7, 1.0) + rng.normal(0, 0.06, 3), 0, 1)
    shirt = rng.uniform(0.05, 0.9, 3)

    return FaceParams(
        head_width=float(rng.uniform(0.92, 1.08)),
        head_height=float(rng.uniform(0.94, 1.06)),
        jaw=float(rng.uniform(0.0, 1.0)),
        skin=tuple(float(x) for x in skin),
        eye_size=float(rng.uniform(0.85, 1.2)),
        eye_spacing=float(rng.uniform(0.92, 1.08)),
        eye_height=float(rng.uniform(-0.05, 0.05)),
        iris=jitter(iris, 0.03),
        brow_thickness=float(rng.uniform(0.7, 1.4)),
        brow_tilt=float(rng.uniform(-0.12, 0.22)),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        hair=jitter(hair, 0.02),
        hair_volume=float(rng.uniform(0.7, 1.3)),
        mouth_width=float(rng.uniform(0.85, 1.15)),
        smile=float(rng.uniform(-0.3, 1.0)),
        lips=tuple(float(x) for x in lips),
        nose_length=float(rng.uniform(0.88, 1.12)),
        nose_width=float(rng.uniform(0.85, 1.2)),
        bg_top=tuple(float(x) for x in top),
        bg_bottom=tuple(float(x) for x in bottom),
        bg_angle=float(rng.uniform(-0.6, 0.6)),
        shirt=tuple(float(x) for x in shirt),
        light=float(rng.uniform(-0.8, 0.8)),
        rotation=float(rng.uniform(-8.0, 8.0)),
        shift_x=float(rng.uniform(-0.03, 0.03)),
        shift_y=float(rng.uniform(-0.03, 0.03)),
        scale=float(rng.uniform(0.94, 1.06)),
    )


# -- geometry in the model frame ----------------------------------------------------------------


@dataclass(frozen=True)
class _Geo:
    """Derived sizes and positions in model units (y down, origin between the eyes)."""

    a: float  # head half-width at its widest
    yc: float  # y of the widest line
    y_top: float  # skull top
    y_chin: float
    jaw_k: float  # lower-outline exponent
    eye_x: float  # |x| of the eye centres
    eye_w: float  # eye half-width (photo)
    eye_up: float  # upper-lid height
    eye_lo: float  # lower-lid depth
    iris_r: float
    brow_y: float
    brow_in: float  # |x| of the inner brow end
    brow_out: float
    brow_t: float  # brow half-thickness
    nose_tip: float  # y of the nose tip
    nose_w: float  # nostril half-width
    mouth_y: float
    mouth_w: float  # mouth half-width
    lift: float  # corner lift (model units, > 0 up)
    hair_off: float  # hair standing off the skull


def _geo(p: FaceParams) -> _Geo:
    a = 0.71 * p.head_width
    yc = 0.12 + p.eye_height
    nose_tip = 0.40 * p.nose_length
    mouth_y = nose_tip + 0.24
    return _Geo(
        a=a,
        yc=yc,
        y_top=yc - 1.22 * p.head_height,
        y_chin=yc + 0.9 * p.head_height,
        jaw_k=1.5 + 2.2 * p.jaw,
        eye_x=0.34 * p.eye_spacing,
        eye_w=0.13 * p.eye_size,
        eye_up=0.062 * p.eye_size,
        eye_lo=0.04 * p.eye_size,
        iris_r=0.052 * p.eye_size,
        brow_y=-0.2 - 0.02 * p.eye_size,
        brow_in=0.12,
        brow_out=0.56 * p.eye_spacing,
        brow_t=0.024 * p.brow_thickness,
        nose_tip=nose_tip,
        nose_w=0.1 * p.nose_width,
        mouth_y=mouth_y,
        mouth_w=0.2 * p.mouth_width,
        lift=0.05 * p.smile * p.mouth_width,
        hair_off=0.07 * p.hair_volume,
    )


def _halfwidth(g: _Geo, y: np.ndarray) -> np.ndarray:
    """Half-width of the head outline at height ``y`` (0 outside the head)."""
    y = np.asarray(y, dtype=np.float64)
    up = np.clip((g.yc - y) / (g.yc - g.y_top), 0, 1)
    lo = np.clip((y - g.yc) / (g.y_chin - g.yc), 0, 1)
    upper = np.sqrt(np.clip(1 - up**2, 0, 1))
    lower = np.sqrt(np.clip(1 - lo**g.jaw_k, 0, 1)) * (1 - 0.12 * lo**2)
    w = g.a * np.where(y < g.yc, upper, lower)
    return np.where((y < g.y_top) | (y > g.y_chin), 0.0, w)


def _head_outline(g: _Geo, n: int = 96) -> np.ndarray:
    """Closed head outline (n points), clockwise in the image from the skull top."""
    t = np.linspace(0, 1, n // 2 + 1)
    # Dense near the chin and top so the tips are round.
    y = g.y_top + (g.y_chin - g.y_top) * (0.5 - 0.5 * np.cos(np.pi * t))
    x = _halfwidth(g, y)
    right = np.stack([x, y], 1)
    left = np.stack([-x[::-1], y[::-1]], 1)[1:-1]
    return np.concatenate([right, left])


def _lower_outline(g: _Geo, y_start: float, n: int) -> np.ndarray:
    """``n`` points evenly spaced along the outline from the left at ``y_start`` round the chin
    to the right (dlib's jaw points 0-16)."""
    y = y_start + (g.y_chin - y_start) * np.sin(np.linspace(0, np.pi / 2, 200))
    x = _halfwidth(g, y)
    half = np.stack([-x, y], 1)
    dense = np.concatenate([half, half[::-1][1:] * [-1, 1]])
    seg = np.r_[0, np.cumsum(np.hypot(*np.diff(dense, axis=0).T))]
    s = np.linspace(0, seg[-1], n)
    return np.stack([np.interp(s, seg, dense[:, 0]), np.interp(s, seg, dense[:, 1])], 1)


def _eye_points(g: _Geo, side: int) -> np.ndarray:
    """Eye contour (6 points, dlib order) of the eye at ``side`` (-1 image left, +1 right)."""
    cx = side * g.eye_x
    w, up, lo = g.eye_w, g.eye_up, g.eye_lo
    outer, inner = cx + side * w, cx - side * w
    pts = [
        (outer, 0.006),
        (cx + side * w * 0.35, -up * 0.95),
        (cx - side * w * 0.35, -up * 0.95),
        (inner, 0.01),
        (cx - side * w * 0.35, lo * 0.95),
        (cx + side * w * 0.35, lo * 0.95),
    ]
    if side < 0:  # dlib: 36 outer, 37-38 upper, 39 inner, 40-41 lower, for both eyes clockwise
        return np.array(pts)
    return np.array([pts[3], pts[2], pts[1], pts[0], pts[5], pts[4]])


def _eye_outline(g: _Geo, side: int, n: int = 40) -> np.ndarray:
    """Closed almond outline of the eye opening (upper lid first, from the image-left corner)."""
    cx = side * g.eye_x
    w, up, lo = g.eye_w, g.eye_up, g.eye_lo
    t = np.linspace(-1, 1, n // 2 + 1)
    x = cx + t * w
    # Upper lid peaks towards the inner corner, lower lid towards the outer one.
    skew = 0.18 * side * t
    top = -up * (1 - t**2) * (1 - skew) + 0.008 * (1 - side * t)
    bot = lo * (1 - t**2) * (1 + skew) + 0.008 * (1 - side * t)
    return np.concatenate([np.stack([x, top], 1), np.stack([x[::-1], bot[::-1]], 1)[1:-1]])


def _brow_line(g: _Geo, side: int, tilt: float, n: int = 5) -> np.ndarray:
    """Brow centre line from the inner to the outer end, arched; ``n`` points."""
    t = np.linspace(0, 1, n)
    x = side * (g.brow_in + (g.brow_out - g.brow_in) * t)
    y = g.brow_y - 0.045 * np.sin(np.pi * np.clip(t * 1.25, 0, 1)) - np.tan(tilt) * 0.3 * (t - 0.3)
    return np.stack([x, y], 1)


def _mouth_curves(g: _Geo, n: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x and the y of the lip line, the upper lip's top and the lower lip's bottom."""
    x = np.linspace(-g.mouth_w, g.mouth_w, n)
    u = x / g.mouth_w
    line = g.mouth_y - g.lift * u**2 + 0.25 * g.lift * (1 - u**2)
    bow = 0.012 * np.exp(-((u / 0.18) ** 2))  # cupid's bow dip
    upper = line - (0.05 * (1 - u**2) ** 0.7 - bow) * g.mouth_w / 0.2
    lower = line + 0.062 * (1 - u**2) ** 0.6 * g.mouth_w / 0.2
    return x, line, upper, lower


def _model_landmarks(p: FaceParams) -> np.ndarray:
    g = _geo(p)
    jaw = _lower_outline(g, 0.03, 17)
    brow_l = _brow_line(g, -1, p.brow_tilt)[::-1]  # 17-21: outer -> inner
    brow_r = _brow_line(g, 1, p.brow_tilt)  # 22-26: inner -> outer
    bridge = np.stack([np.zeros(4), np.linspace(-0.02, g.nose_tip, 4)], 1)
    base_y = g.nose_tip + 0.045
    nostrils = np.stack(
        [
            g.nose_w * np.array([-1, -0.5, 0, 0.5, 1]),
            base_y + np.array([-0.01, 0.005, 0.01, 0.005, -0.01]),
        ],
        1,
    )
    x, line, upper, lower = _mouth_curves(g, 13)
    # Outer lip: 48 left corner, 49-53 upper lip, 54 right corner, 55-59 lower lip back.
    idx_up = [2, 4, 6, 8, 10]
    outer = [(x[0], line[0])] + [(x[i], upper[i]) for i in idx_up]
    outer += [(x[12], line[12])] + [(x[i], lower[i]) for i in idx_up[::-1]]
    inner_lo = line + 0.005
    inner = [(x[1], line[1])] + [(x[i], line[i] - 0.005) for i in (4, 6, 8)]
    inner += [(x[11], line[11])] + [(x[i], inner_lo[i]) for i in (8, 6, 4)]
    pts = np.concatenate(
        [
            jaw,
            brow_l,
            brow_r,
            bridge,
            nostrils,
            _eye_points(g, -1),
            _eye_points(g, 1),
            np.array(outer),
            np.array(inner),
        ]
    )
    assert pts.shape == (68, 2)
    return pts


# -- frames -------------------------------------------------------------------------------------


def face_frame(params: FaceParams, size: float = 256.0, *, jitter: bool = True) -> np.ndarray:
    """3x3 matrix: model coordinates -> pixel index coordinates of a ``size`` crop in which the
    face's landmarks are FFHQ-aligned (then moved by the pose jitter unless ``jitter`` is off)."""
    lm = _model_landmarks(params)
    to_crop = np.linalg.inv(quad_matrix(ffhq_quad(lm), 1))  # model -> unit square (index coords)
    to_crop = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]]) @ to_crop  # -> [0, 1] continuous
    if jitter:
        a = math.radians(params.rotation)
        s = params.scale
        c, sn = math.cos(a) * s, math.sin(a) * s
        # Counter-clockwise in the image (y down) about the square's centre, then the shift.
        rot = np.array([[c, sn, 0], [-sn, c, 0], [0, 0, 1.0]])
        move = np.array([[1, 0, 0.5 + params.shift_x], [0, 1, 0.5 + params.shift_y], [0, 0, 1.0]])
        to_crop = move @ rot @ np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]]) @ to_crop
    # [0, 1] continuous -> pixel index of the size-px crop.
    px = np.array([[size, 0, -0.5], [0, size, -0.5], [0, 0, 1.0]])
    return px @ to_crop


def landmarks(params: FaceParams, size: int = 256) -> np.ndarray:
    """(68, 2) dlib-order landmarks of ``render(params, ..., size)`` in pixel index coordinates
    (pixel (i, j) centred at x = j, y = i), for both styles (the game style's eyes are drawn
    larger around the same centres)."""
    return transform_points(face_frame(params, size), _model_landmarks(params))


# -- drawing ------------------------------------------------------------------------------------


class _Mask:
    """A coverage mask in [0, 1] over the box (x0, y0, x1, y1) of the canvas (pixels)."""

    def __init__(self, a: np.ndarray, box: tuple[int, int, int, int]) -> None:
        self.a = a
        self.box = box

    @property
    def sl(self) -> tuple[slice, slice]:
        x0, y0, x1, y1 = self.box
        return slice(y0, y1), slice(x0, x1)


class _Painter:
    """Float RGB canvas with a model -> pixel frame; shapes are given in model coordinates."""

    def __init__(self, width: int, height: int, frame: np.ndarray) -> None:
        self.w, self.h = width, height
        self.m = frame
        self.inv = np.linalg.inv(frame)
        self.unit = math.sqrt(abs(np.linalg.det(frame[:2, :2])))  # pixels per model unit
        self.img = np.zeros((height, width, 3), np.float32)

    def _box(self, px: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
        x0, y0 = np.floor(px.min(0) - margin).astype(int)
        x1, y1 = np.ceil(px.max(0) + margin).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.w), min(y1, self.h)
        if x1 <= x0 or y1 <= y0:
            return None
        return int(x0), int(y0), int(x1), int(y1)

    def _draw(self, px: np.ndarray, box, blur: float, fn: Callable) -> _Mask | None:
        if box is None:
            return None
        x0, y0, x1, y1 = box
        im = Image.new("L", (x1 - x0, y1 - y0), 0)
        fn(ImageDraw.Draw(im), [(float(x - x0), float(y - y0)) for x, y in px])
        if blur > 0:
            im = im.filter(ImageFilter.GaussianBlur(blur))
        return _Mask(np.asarray(im, dtype=np.float32) * (1 / 255), box)

    def poly(self, pts: np.ndarray, blur: float = 0.0) -> _Mask | None:
        """Filled polygon; ``blur`` is a Gaussian sigma in model units."""
        px = transform_points(self.m, pts)
        b = blur * self.unit
        return self._draw(px, self._box(px, 3 * b + 2), b, lambda d, q: d.polygon(q, fill=255))

    def line(
        self, pts: np.ndarray, width: float, blur: float = 0.0, closed: bool = False
    ) -> _Mask | None:
        """Stroked polyline of ``width`` model units (round joints)."""
        pts = np.concatenate([pts, pts[:1]]) if closed else pts
        px = transform_points(self.m, pts)
        wpx = max(width * self.unit, 1.0)
        b = blur * self.unit
        box = self._box(px, wpx + 3 * b + 2)

        def stroke(d: ImageDraw.ImageDraw, q: list) -> None:
            d.line(q, fill=255, width=int(round(wpx)), joint="curve")
            r = wpx / 2
            for x, y in (q[0], q[-1]):
                d.ellipse((x - r, y - r, x + r, y + r), fill=255)

        return self._draw(px, box, b, stroke)

    def coords(self, m: _Mask) -> tuple[np.ndarray, np.ndarray]:
        """Model coordinates (x, y) of the pixels of ``m``'s box."""
        x0, y0, x1, y1 = m.box
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        i = self.inv.astype(np.float32)
        return i[0, 0] * xs + i[0, 1] * ys + i[0, 2], i[1, 0] * xs + i[1, 1] * ys + i[1, 2]

    def fill(self, m: _Mask | None, color, alpha: float = 1.0) -> None:
        """Paint ``color`` (RGB or an (h, w, 3) array over the mask's box) through the mask."""
        if m is None:
            return
        region = self.img[m.sl]
        c = np.asarray(color, dtype=np.float32)
        region += (c - region) * (m.a * alpha)[:, :, None]

    def shade(self, m: _Mask | None, factor, amount: float = 1.0) -> None:
        """Multiply by ``factor`` (RGB) where the mask is on (soft shadows, cel bands)."""
        if m is None:
            return
        f = 1 + (np.asarray(factor, np.float32) - 1) * (m.a * amount)[:, :, None]
        self.img[m.sl] *= f

    def clip(self, m: _Mask | None, by: _Mask | None) -> _Mask | None:
        """``m`` restricted to where ``by`` is on (by's box must contain m's or overlap it)."""
        if m is None or by is None:
            return None
        ax0, ay0, ax1, ay1 = m.box
        bx0, by0, bx1, by1 = by.box
        x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
        if x1 <= x0 or y1 <= y0:
            return None
        a = (
            m.a[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
            * by.a[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        )
        return _Mask(a, (x0, y0, x1, y1))


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _ribbon(center: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Polygon of a thick curve: ``center`` (N, 2) with half-widths ``half`` (N,)."""
    d = np.gradient(center, axis=0)
    nrm = np.stack([-d[:, 1], d[:, 0]], 1) / np.maximum(np.hypot(*d.T), 1e-9)[:, None]
    half = np.asarray(half, dtype=np.float64)[:, None]
    return np.concatenate([center + nrm * half, (center - nrm * half)[::-1]])


def _smooth(pts: np.ndarray, n: int = 64, closed: bool = False) -> np.ndarray:
    """Catmull-Rom resampling of a polyline through ``pts``."""
    p = np.asarray(pts, dtype=np.float64)
    if closed:
        p = np.concatenate([p[-1:], p, p[:2]])
    else:
        p = np.concatenate([p[:1], p, p[-1:]])
    segs = len(p) - 3
    out = []
    for i in range(segs):
        p0, p1, p2, p3 = p[i : i + 4]
        t = np.linspace(0, 1, max(n // segs, 2), endpoint=False)[:, None]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    if not closed:
        out.append(p[-2:-1])
    return np.concatenate(out)


# -- the face -----------------------------------------------------------------------------------


def _hair_shapes(p: FaceParams, g: _Geo) -> dict[str, np.ndarray]:
    """Polygons (model units) of the hair: ``back`` (behind the head), ``front`` (over the skull
    and forehead), optional ``bun`` and ``locks`` (long hair over the shoulders, in front)."""
    style = p.hair_name
    off = g.hair_off
    # Skull cap grown by the hair volume, from ear level over the top.
    t = np.linspace(-np.pi, 0, 60)
    cap_y = g.yc + (g.yc - g.y_top + off) * np.sin(t)
    cap_x = (g.a + off) * np.cos(t)
    cap = np.stack([cap_x, cap_y], 1)  # left ear level -> top -> right ear level
    shapes: dict[str, np.ndarray] = {}

    if style == "long":
        down = g.y_chin + 1.6
        flare = g.a + off + 0.35
        left = _smooth([[-(g.a + off), g.yc], [-(g.a + off + 0.08), g.y_chin], [-flare, down]], 24)
        shapes["back"] = np.concatenate([left[::-1], cap, (left * [-1, 1])])
    else:
        low = g.yc + 0.15 if style != "bun" else g.yc + 0.05
        shapes["back"] = np.concatenate(
            [[[-(g.a + off * 0.6), low]], cap, [[g.a + off * 0.6, low]]]
        )

    # Hairline: temples at eye level-ish, forehead line, optional side part.
    hair_y = g.y_top + 0.52 * (g.yc - g.y_top) - 0.02 * (p.hair_volume - 1)
    temple_y = g.brow_y - 0.1
    if style == "fringe":
        # Bangs down to just above the brows with a jagged edge.
        n = 9
        xs = np.linspace(-(g.a + off * 0.5), g.a + off * 0.5, 2 * n + 1)
        base = g.brow_y - 0.07 - 0.05 * (xs / g.a) ** 2
        ys = base - np.where(np.arange(2 * n + 1) % 2 == 1, 0.07, 0.0)
        edge = np.stack([xs, ys], 1)
        shapes["front"] = np.concatenate([cap, edge[::-1]])
    else:
        part = -0.25 if style in ("short", "long") else 0.0
        line = _smooth(
            [
                [-(g.a + 0.02), temple_y + 0.08],
                [-(g.a - 0.1), temple_y - 0.06],
                [-0.45, hair_y + 0.08],
                [part, hair_y + 0.02],
                [0.45, hair_y + 0.1],
                [g.a - 0.1, temple_y - 0.06],
                [g.a + 0.02, temple_y + 0.08],
            ],
            48,
        )
        start = np.array([[-(g.a + off), temple_y + 0.12]])
        end = np.array([[g.a + off, temple_y + 0.12]])
        inner = cap[(cap[:, 1] < temple_y + 0.1)]
        shapes["front"] = np.concatenate([start, inner, end, line[::-1]])
    if style == "bun":
        shapes["bun"] = _ellipse(0.0, g.y_top - 0.12 * p.hair_volume, 0.3, 0.24, n=40)
    if style == "long":
        # Locks in front of the ears and shoulders; their tops start inside the skull cap.
        top_y = temple_y - 0.25
        top_x = (g.a + off) * math.sqrt(1 - ((g.yc - top_y) / (g.yc - g.y_top + off)) ** 2)
        lock = _smooth(
            [
                [-(top_x - 0.16), top_y],
                [-(g.a - 0.06), g.yc + 0.1],
                [-(g.a - 0.02), g.y_chin - 0.15],
                [-(g.a + 0.22), g.y_chin + 0.9],
            ],
            32,
        )
        outer = _smooth(
            [
                [-(top_x - 0.02), top_y],
                [-(g.a + off + 0.06), g.yc + 0.2],
                [-(g.a + 0.2), g.y_chin],
                [-(g.a + 0.42), g.y_chin + 0.9],
            ],
            32,
        )
        shapes["lock_l"] = np.concatenate([lock, outer[::-1]])
        shapes["lock_r"] = shapes["lock_l"] * [-1, 1]
    return shapes


def _torso(g: _Geo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neck, shirt and the V neckline polygons."""
    nw = 0.42 * g.a / 0.75
    sh_y = g.y_chin + 0.28
    vneck = np.array([[-nw * 1.1, sh_y - 0.02], [0.0, sh_y + 0.4], [nw * 1.1, sh_y - 0.02]])
    # The neck runs from under the head down into the V of the neckline.
    neck = np.array([[-nw, g.yc + 0.3], [nw, g.yc + 0.3], vneck[2], vneck[1], vneck[0]])
    shirt = _smooth(
        [
            [-2.9, g.y_chin + 8.0],
            [-2.5, sh_y + 1.2],
            [-2.1, sh_y + 0.4],
            [-1.5, sh_y + 0.1],
            [-nw * 1.1, sh_y],
            [nw * 1.1, sh_y],
            [1.5, sh_y + 0.1],
            [2.1, sh_y + 0.4],
            [2.5, sh_y + 1.2],
            [2.9, g.y_chin + 8.0],
        ],
        80,
    )
    return neck, shirt, vneck


def _resize(a: np.ndarray, size: tuple[int, int], method=Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize a float (h, w, C) array to ``size`` = (w, h) channel by channel."""
    chans = [
        np.asarray(Image.fromarray(a[:, :, c]).resize(size, method)) for c in range(a.shape[2])
    ]
    return np.stack(chans, 2)


def _draw_background(pt: _Painter, p: FaceParams, style: str, rng: np.random.Generator) -> None:
    """Linear two-colour gradient (photo: plus out-of-focus blotches and a vignette); smooth, so
    computed at a quarter of the canvas resolution."""
    h, w = max(pt.h // 4, 2), max(pt.w // 4, 2)
    ys = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
    xs = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
    t = np.clip(ys * math.cos(p.bg_angle) + xs * math.sin(p.bg_angle) + 0.5, 0, 1)[:, :, None]
    top, bot = np.asarray(p.bg_top, np.float32), np.asarray(p.bg_bottom, np.float32)
    img = top + (bot - top) * t
    if style == "photo":
        blotch = rng.normal(0, 1, (6, 6, 3)).astype(np.float32)
        img = img + 0.035 * _resize(blotch, (w, h), Image.Resampling.BICUBIC)
        img = img * (1 - 0.35 * (xs**2 + ys**2))[:, :, None]
    pt.img[:] = _resize(img.astype(np.float32), (pt.w, pt.h))


def _skin_field(pt: _Painter, m: _Mask, g: _Geo, p: FaceParams, style: str, noise) -> np.ndarray:
    """Skin colour over the head mask's box: lambert shading on an ellipsoid-ish head."""
    x, y = pt.coords(m)
    hw = np.maximum(_halfwidth(g, y.astype(np.float64)), 1e-3).astype(np.float32)
    nx = np.clip(x / (hw + 0.04), -1, 1)
    ny = np.clip((y - g.yc - 0.1) / (g.y_chin - g.y_top) * 1.1, -1, 1)
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
    light = np.array([0.55 * p.light, -0.45, 1.0])
    light /= np.linalg.norm(light)
    lam = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    skin = _skin_color(p, style)
    if style == "photo":
        s = 0.5 + 0.58 * lam**0.9
        col = skin * s[:, :, None] ** np.array([0.85, 1.0, 1.12], np.float32)
        if noise is not None:
            col *= 1 + noise(x, y)[:, :, None]
        return col
    band = np.where(lam > 0.42, 1.0, 0.0).astype(np.float32)[:, :, None]
    shadow = skin * np.array([0.86, 0.76, 0.78], np.float32)
    return shadow + (skin - shadow) * band


def _skin_color(p: FaceParams, style: str) -> np.ndarray:
    """Base skin colour: the game style idealises it a little (fairer, warmer, cleaner)."""
    skin = np.asarray(p.skin, np.float32)
    if style == "game":
        skin = skin * 0.85 + np.array([1.0, 0.88, 0.8], np.float32) * 0.15
    return skin


def _mottle(rng: np.random.Generator, amp: float = 0.03) -> Callable:
    """A smooth random field over model coordinates (sum of sinusoids), mean 0."""
    k = rng.normal(0, 9.0, (8, 2)).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, 8).astype(np.float32)
    a = (amp / math.sqrt(8) * rng.uniform(0.5, 1.5, 8)).astype(np.float32)

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros_like(x)
        for i in range(8):
            out += a[i] * np.sin(k[i, 0] * x + k[i, 1] * y + ph[i])
        return out

    return f


def _strand_profile(n: int = 4096) -> np.ndarray:
    """Fixed random strand brightness over the angle round the crown, in about [-1, 1]."""
    r = np.random.default_rng(20240611)
    v = r.normal(0, 1, n) + 0.5 * np.repeat(r.normal(0, 1, n // 8), 8)
    k = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    v = np.convolve(np.r_[v[-4:], v, v[:4]], k / k.sum(), mode="valid")
    return (v / np.abs(v).max()).astype(np.float32)


_STRANDS = _strand_profile()


def _ink(c, k: float = 0.3) -> np.ndarray:
    """Outline colour for a fill: a much darker, slightly warm version of it."""
    c = np.asarray(c, np.float32)
    return np.clip(c * k + np.array([0.03, 0.015, 0.02], np.float32), 0, 1)


def _draw_hair(pt: _Painter, m: _Mask | None, p: FaceParams, g: _Geo, style: str, crown) -> None:
    """Hair colour through ``m`` with strands (photo) or a shine band (game)."""
    if m is None:
        return
    hair = np.asarray(p.hair, np.float32)
    x, y = pt.coords(m)
    dx, dy = x - crown[0], y - crown[1]
    ang = np.arctan2(dx, dy + 1e-6)
    r = np.sqrt(dx**2 + dy**2)
    if style == "photo":
        # Strands: a random profile over the angle round the crown, looked up per pixel.
        idx = ((ang + np.pi) * (len(_STRANDS) / (2 * np.pi))).astype(np.int32) % len(_STRANDS)
        strands = _STRANDS[idx]
        side = dx / (r + 1e-3) * (0.5 * p.light)
        lit = 0.72 + 0.4 * np.exp(-(((r - 0.55) / 0.25) ** 2)) * (0.7 + side)
        col = hair * (lit * (1 + 0.22 * strands))[:, :, None] + 0.035 * strands[:, :, None]
        pt.fill(m, np.clip(col, 0, 1))
    else:
        # Flat colour, a darker band low on the hair and a jagged shine ring over the skull.
        ra, rb = g.a + g.hair_off, g.yc - g.y_top + g.hair_off
        q = np.sqrt((x / ra) ** 2 + ((y - g.yc) / rb) ** 2)
        lat = np.arctan2(x / ra, (g.yc - y) / rb)  # 0 at the top, +-pi/2 at ear level
        teeth = 0.06 * np.abs(((lat * 9 / np.pi) % 2) - 1)
        shine = (q > 0.82 - teeth) & (q < 0.88) & (np.abs(lat) < 1.0)
        shine = shine.astype(np.float32)[:, :, None]
        low = (y > g.yc + 0.05).astype(np.float32)[:, :, None]
        light = np.clip(hair * 1.5 + 0.2, 0, 1)
        base = hair + (light - hair) * shine * 0.7
        pt.fill(m, base * (1 - 0.2 * low))


def _draw_eye(pt: _Painter, p: FaceParams, g: _Geo, side: int, style: str) -> None:
    """Sclera, iris, pupil, catchlights and lids. Game: a 1.3 x 1.65 bigger opening round the
    same centre, a banded iris with an ink rim, two big highlights, a heavy lash line."""
    cx = side * g.eye_x
    iris = np.asarray(p.iris, np.float32)
    game = style == "game"
    outline = _eye_outline(g, side)
    if game:
        # A bigger, taller opening around the same centre.
        outline = (outline - [cx, 0]) * [1.3, 1.65] + [cx, -0.008]
    opening = pt.poly(outline)
    sclera = np.array([0.97, 0.96, 0.95] if game else [0.9, 0.87, 0.85], np.float32)
    pt.fill(opening, sclera)
    if not game:
        # The upper lid shades the top of the eyeball.
        pt.shade(pt.clip(pt.poly(outline + [0, -0.05], blur=0.02), opening), (0.7, 0.68, 0.68))
    ir = g.iris_r * (1.45 if game else 1.0)
    iy = -0.006 if not game else 0.0
    ring = pt.clip(pt.poly(_ellipse(cx, iy, ir, ir * (1.18 if game else 1.0))), opening)
    if ring is not None:
        x, y = pt.coords(ring)
        rr = np.sqrt((x - cx) ** 2 + (y - iy) ** 2) / ir
        if game:
            t = np.clip((y - iy) / ir, -1, 1)
            bands = np.where(t < -0.2, 0.45, np.where(t < 0.35, 0.75, 1.05)).astype(np.float32)
            col = np.clip(iris[None, None] * bands[:, :, None] * 1.2 + 0.03, 0, 1)
            col = np.where((rr > 0.86)[:, :, None], _ink(iris, 0.35), col)
        else:
            radial = 0.55 + 0.55 * np.clip(rr, 0, 1) ** 0.8 * 0.9
            radial = np.where(rr > 0.86, 0.45, radial)
            col = iris[None, None] * radial[:, :, None].astype(np.float32)
        pt.fill(ring, col)
    pupil = pt.clip(pt.poly(_ellipse(cx, iy, ir * 0.42, ir * (0.5 if game else 0.42))), opening)
    pt.fill(pupil, (0.04, 0.03, 0.03))
    # Catchlights.
    hx = cx - 0.35 * ir
    if game:
        pt.fill(
            pt.clip(pt.poly(_ellipse(hx, iy - 0.4 * ir, 0.34 * ir, 0.3 * ir, 0.5)), opening), 1.0
        )
        pt.fill(
            pt.clip(
                pt.poly(_ellipse(cx + 0.45 * ir, iy + 0.45 * ir, 0.14 * ir, 0.12 * ir)), opening
            ),
            1.0,
        )
    else:
        pt.fill(
            pt.clip(pt.poly(_ellipse(hx, iy - 0.35 * ir, 0.16 * ir, 0.16 * ir)), opening),
            (0.95, 0.95, 0.95),
            0.85,
        )
    # Lids: upper lash line (thick), lower lid line, crease.
    n = len(outline) // 2 + 1
    upper, lower = outline[:n], np.concatenate([outline[n - 1 :], outline[:1]])
    lash = np.asarray((0.05, 0.035, 0.03), np.float32)
    if game:
        flick = upper[0] if side < 0 else upper[-1]
        flick_pts = (
            np.array([flick, flick + [side * 0.05, -0.035]])
            if side > 0
            else np.array([flick + [side * 0.05, -0.035], flick])
        )
        pt.fill(pt.line(upper, 0.028), lash)
        pt.fill(pt.line(flick_pts, 0.02), lash)
        pt.fill(pt.line(lower[2:-2], 0.008), _ink(p.skin, 0.35))
        pt.fill(pt.line(upper[4:-4] + [0, -0.05], 0.008), _ink(p.skin, 0.45))
    else:
        pt.fill(pt.line(upper, 0.014, blur=0.004), lash, 0.95)
        pt.fill(pt.line(lower[1:-1], 0.006, blur=0.004), _ink(p.skin, 0.5), 0.5)
        crease = upper[3:-3] + [0, -0.045]
        pt.fill(pt.line(crease, 0.01, blur=0.008), _ink(p.skin, 0.55), 0.45)


_INK_W = 0.02  # game-style outline width (model units)


def _outline(pt: _Painter, style: str, pts: np.ndarray, fill, closed: bool = True) -> None:
    """Game style: an ink line along ``pts`` in a dark version of the ``fill`` colour."""
    if style == "game":
        pt.fill(pt.line(pts, _INK_W, closed=closed), _ink(fill))


def _crown(p: FaceParams, g: _Geo) -> tuple[float, float]:
    """Where the hair strands radiate from (over the parting)."""
    return (-0.2 if p.hair_name in ("short", "long") else 0.0, g.y_top + 0.15)


def _draw_back_hair(pt: _Painter, p: FaceParams, g: _Geo, style: str, hair: dict) -> None:
    _draw_hair(pt, pt.poly(hair["back"]), p, g, style, _crown(p, g))
    _outline(pt, style, hair["back"], p.hair)
    if "bun" in hair:
        _draw_hair(pt, pt.poly(hair["bun"]), p, g, style, (0.0, g.y_top - 0.12))
        _outline(pt, style, hair["bun"], p.hair)


def _draw_body(pt: _Painter, p: FaceParams, g: _Geo, style: str) -> None:
    """Shirt, neck and the head's shadow on the neck."""
    photo = style == "photo"
    skin = _skin_color(p, style)
    neck, shirt, vneck = _torso(g)
    shirt_m = pt.poly(shirt)
    shirt_c = np.asarray(p.shirt, np.float32)
    if shirt_m is not None:
        x, y = pt.coords(shirt_m)
        if photo:  # falling off to the sides, soft folds
            s = 0.75 + 0.25 * np.clip(1 - np.abs(x) / 2.2, 0, 1) + 0.04 * np.sin(x * 7 + y * 3)
            pt.fill(shirt_m, shirt_c * s[:, :, None])
        else:  # one cel band on the side away from the light
            band = (x * np.sign(p.light + 1e-6) < -0.9).astype(np.float32)[:, :, None]
            pt.fill(shirt_m, shirt_c * (1 - 0.22 * band))
    _outline(pt, style, shirt, p.shirt, closed=False)
    neck_m = pt.poly(neck)
    tint = (0.86, 0.8, 0.8) if photo else (0.82, 0.74, 0.74)
    pt.fill(neck_m, skin * np.array(tint, np.float32))
    if not photo:  # a light collar trim
        pt.fill(pt.line(vneck, 0.05), np.clip(shirt_c * 0.6 + 0.4, 0, 1))
        _outline(pt, style, vneck, p.shirt, closed=False)
    chin_shadow = _ellipse(0, g.y_chin + 0.05, g.a * 0.75, 0.22)
    if photo:
        pt.shade(pt.clip(pt.poly(chin_shadow, blur=0.06), neck_m), (0.62, 0.55, 0.55))
    else:
        pt.shade(pt.clip(pt.poly(chin_shadow), neck_m), (0.8, 0.72, 0.74))
    _outline(pt, style, neck[[1, 2]], skin, closed=False)
    _outline(pt, style, neck[[4, 0]], skin, closed=False)


def _draw_ears(pt: _Painter, p: FaceParams, g: _Geo, style: str) -> None:
    if p.hair_name == "long":  # covered by the locks
        return
    skin = _skin_color(p, style)
    y = (g.brow_y + g.nose_tip) / 2
    for side in (-1, 1):
        ear = _ellipse(side * (g.a + 0.02), y + 0.04, 0.1, 0.2)
        pt.fill(pt.poly(ear), skin * (0.9 if style == "photo" else 0.93))
        inner = _ellipse(side * (g.a + 0.035), y + 0.05, 0.045, 0.12)
        if style == "photo":
            pt.shade(pt.poly(inner, blur=0.02), (0.7, 0.6, 0.6))
        else:
            pt.shade(pt.poly(inner), (0.82, 0.74, 0.76))
        _outline(pt, style, ear, skin)


def _draw_head(
    pt: _Painter, p: FaceParams, g: _Geo, style: str, rng: np.random.Generator | None
) -> _Mask | None:
    """Skin with its shading: soft shadows (eye sockets, brow ridge, nose, under the nose and
    lip) and blush in the photo style; hard cel shadows, blush and the jaw line in the game
    style. Returns the head's mask."""
    skin = _skin_color(p, style)
    head = pt.poly(_head_outline(g, 160))
    if head is None:
        return None
    noise = _mottle(rng) if (style == "photo" and rng is not None) else None
    pt.fill(head, _skin_field(pt, head, g, p, style, noise))
    away = -1.0 if p.light >= 0 else 1.0  # the side of the nose in shadow

    def soft(pts: np.ndarray, blur: float, factor) -> None:
        pt.shade(pt.clip(pt.poly(pts, blur=blur), head), factor)

    if style == "photo":
        for side in (-1, 1):
            soft(
                _ellipse(side * g.eye_x, -0.04, g.eye_w * 1.45, g.eye_up * 2.4),
                0.045,
                (0.72, 0.64, 0.64),
            )
            ridge = _ribbon(_brow_line(g, side, p.brow_tilt, 16) + [0, 0.05], np.full(16, 0.03))
            soft(ridge, 0.03, (0.82, 0.76, 0.76))
        nose_side = np.array(
            [
                [away * 0.05, -0.05],
                [away * 0.085, g.nose_tip * 0.6],
                [away * (g.nose_w + 0.02), g.nose_tip + 0.02],
                [away * 0.02, g.nose_tip],
            ]
        )
        soft(nose_side, 0.03, (0.74, 0.66, 0.66))
        soft(nose_side * [-1, 1], 0.035, (0.88, 0.84, 0.84))
        soft(_ellipse(0, g.nose_tip + 0.075, g.nose_w * 1.1, 0.035), 0.025, (0.62, 0.54, 0.54))
        soft(_ellipse(0, g.mouth_y + 0.11, g.mouth_w * 0.7, 0.035), 0.025, (0.78, 0.7, 0.7))
        # Highlights on the bridge and the tip of the nose.
        bridge = np.array([[0, -0.02], [0, g.nose_tip - 0.04]])
        pt.fill(pt.clip(pt.line(bridge, 0.035, blur=0.02), head), np.clip(skin * 1.12, 0, 1), 0.5)
        tip = _ellipse(0, g.nose_tip - 0.02, 0.04, 0.03)
        pt.fill(pt.poly(tip, blur=0.02), np.clip(skin * 1.15, 0, 1), 0.55)
        for side in (-1, 1):
            blush = _ellipse(side * (g.eye_x + 0.05), g.nose_tip - 0.02, 0.14, 0.09)
            pt.fill(pt.clip(pt.poly(blush, blur=0.06), head), (0.85, 0.45, 0.45), 0.12)
    else:
        nose_side = np.array(
            [
                [away * 0.015, g.nose_tip * 0.45],
                [away * 0.06, g.nose_tip - 0.01],
                [away * 0.01, g.nose_tip + 0.03],
            ]
        )
        pt.shade(pt.clip(pt.poly(nose_side), head), (0.86, 0.76, 0.78))
        for side in (-1, 1):
            blush = _ellipse(side * (g.eye_x + 0.06), g.nose_tip - 0.01, 0.11, 0.05)
            pt.fill(pt.clip(pt.poly(blush, blur=0.02), head), (0.95, 0.5, 0.5), 0.28)
        pt.fill(pt.line(_lower_outline(g, g.brow_y, 60), _INK_W), _ink(skin))
    return head


def _draw_brow(pt: _Painter, p: FaceParams, g: _Geo, side: int, style: str) -> None:
    """A tapering brow, thick at the inner end."""
    t = np.linspace(0, 1, 24)
    poly = _ribbon(_brow_line(g, side, p.brow_tilt, 24), g.brow_t * (1.15 - 0.75 * t**1.5))
    if style == "photo":
        pt.fill(pt.poly(poly, blur=0.008), np.asarray(p.hair, np.float32) * 0.7 + 0.02, 0.92)
    else:
        pt.fill(pt.poly(poly), _ink(p.hair, 0.6))


def _draw_nose(pt: _Painter, p: FaceParams, g: _Geo, style: str) -> None:
    skin = _skin_color(p, style)
    if style == "game":  # a single ink tick under the tip
        tip = [[-0.04, g.nose_tip + 0.035], [0.0, g.nose_tip + 0.045], [0.035, g.nose_tip + 0.03]]
        pt.fill(pt.line(_smooth(tip, 10), 0.014), _ink(skin))
        return
    for side in (-1, 1):
        nostril = _ellipse(side * g.nose_w * 0.5, g.nose_tip + 0.035, 0.028, 0.014, side * 0.35)
        pt.fill(pt.poly(nostril, blur=0.008), _ink(skin, 0.35), 0.8)
        wing = [
            [side * g.nose_w * 0.65, g.nose_tip - 0.06],
            [side * g.nose_w * 1.02, g.nose_tip],
            [side * g.nose_w * 0.75, g.nose_tip + 0.045],
        ]
        pt.fill(pt.line(_smooth(wing, 12), 0.012, blur=0.012), _ink(skin, 0.55), 0.6)


def _draw_mouth(pt: _Painter, p: FaceParams, g: _Geo, style: str) -> None:
    x, line, upper, lower = _mouth_curves(g, 31)
    lips = np.asarray(p.lips, np.float32)
    up = pt.poly(np.concatenate([np.stack([x, upper], 1), np.stack([x[::-1], line[::-1]], 1)]))
    lo = pt.poly(np.concatenate([np.stack([x, line], 1), np.stack([x[::-1], lower[::-1]], 1)]))
    parting = np.stack([x, line], 1)[1:-1]
    if style == "photo":
        pt.fill(up, lips * 0.82)
        pt.fill(lo, lips)
        gloss = _ellipse(0, line[15] + 0.03, g.mouth_w * 0.35, 0.012)
        pt.fill(pt.poly(gloss, blur=0.01), np.clip(lips * 1.3, 0, 1), 0.5)
        pt.fill(pt.line(parting, 0.012, blur=0.005), _ink(lips, 0.3), 0.9)
    else:  # pale lips, a strong parting line
        skin = _skin_color(p, style)
        pt.fill(lo, np.clip(skin * 0.5 + lips * 0.5, 0, 1))
        pt.fill(up, np.clip(skin * 0.35 + lips * 0.65, 0, 1) * 0.92)
        pt.fill(pt.line(parting, 0.016), _ink(lips, 0.35))


def _draw_front_hair(
    pt: _Painter, p: FaceParams, g: _Geo, style: str, hair: dict, head: _Mask | None
) -> None:
    """Long locks, then the hair over the skull and forehead with its shadow on the skin."""
    crown = _crown(p, g)
    for name in ("lock_l", "lock_r"):
        if name in hair:
            _draw_hair(pt, pt.poly(hair[name]), p, g, style, crown)
            _outline(pt, style, hair[name], p.hair)
    front = pt.poly(hair["front"])
    if style == "photo":
        shadow = pt.poly(hair["front"] + [0, 0.04], blur=0.03)
        pt.shade(pt.clip(shadow, head), (0.7, 0.64, 0.64))
    else:
        pt.shade(pt.clip(pt.poly(hair["front"] + [0.0, 0.045]), head), (0.84, 0.74, 0.76))
    _draw_hair(pt, front, p, g, style, crown)
    _outline(pt, style, hair["front"], p.hair)


def _draw_face(
    pt: _Painter, p: FaceParams, style: str, rng: np.random.Generator | None, body: bool = True
) -> None:
    """Everything but the background, back to front (``body=False``: no neck and shirt)."""
    g = _geo(p)
    hair = _hair_shapes(p, g)
    _draw_back_hair(pt, p, g, style, hair)
    if body:
        _draw_body(pt, p, g, style)
    _draw_ears(pt, p, g, style)
    head = _draw_head(pt, p, g, style, rng)
    for side in (-1, 1):
        _draw_eye(pt, p, g, side, style)
        _draw_brow(pt, p, g, side, style)
    _draw_nose(pt, p, g, style)
    _draw_mouth(pt, p, g, style)
    _draw_front_hair(pt, p, g, style, hair, head)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _default_rng(params: FaceParams) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(params.to_vector().tobytes()))


def _as_rng(rng: np.random.Generator | int | None, params: FaceParams) -> np.random.Generator:
    if rng is None:
        return _default_rng(params)
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _finish(img: np.ndarray, size: tuple[int, int], ss: int) -> np.ndarray:
    """Supersampled float canvas -> uint8 at ``size`` (w, h) with Lanczos."""
    big = Image.fromarray(_to_uint8(img), "RGB")
    if ss == 1:
        return np.asarray(big).copy()
    return np.asarray(big.resize(size, Image.Resampling.LANCZOS)).copy()


def _grain(out: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    noise = rng.normal(0, sigma, out.shape[:2] + (1,)) + rng.normal(0, sigma * 0.5, out.shape)
    return np.clip(np.rint(out + noise), 0, 255).astype(np.uint8)


def render(
    params: FaceParams,
    style: str = "photo",
    size: int = 256,
    rng: np.random.Generator | int | None = None,
    *,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """The face as a (size, size, 3) uint8 RGB image, FFHQ-aligned and moved by the pose jitter.

    ``rng`` (a Generator or seed) drives the photo style's texture noise; ``None`` derives a seed
    from the parameters, so the same params always give the same image. The game style uses no
    randomness. Both styles share the geometry of :func:`landmarks`.
    """
    return _render(params, style, size, rng, supersample, face=True)


def background(
    params: FaceParams,
    style: str = "photo",
    size: int = 256,
    rng: np.random.Generator | int | None = None,
    *,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """The background of ``render(params, style, size, rng)`` alone (without the photo grain):
    where a render differs from it is the face, hair and shoulders."""
    return _render(params, style, size, rng, supersample, face=False)


def _render(
    params: FaceParams,
    style: str,
    size: int,
    rng: np.random.Generator | int | None,
    supersample: int,
    face: bool,
) -> np.ndarray:
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    rng = _as_rng(rng, params)
    ss = int(supersample)
    frame = face_frame(params, size)
    to_ss = np.array([[ss, 0, 0.5 * ss - 0.5], [0, ss, 0.5 * ss - 0.5], [0, 0, 1.0]])
    pt = _Painter(size * ss, size * ss, to_ss @ frame)
    _draw_background(pt, params, style, rng)
    if not face:
        return _finish(pt.img, (size, size), ss)
    _draw_face(pt, params, style, rng if style == "photo" else None)
    out = _finish(pt.img, (size, size), ss)
    if style == "photo":
        out = _grain(out, rng)
    return out


# -- scenes -------------------------------------------------------------------------------------


def _clutter(pt: _Painter, rng: np.random.Generator) -> None:
    """A photo-like backdrop: wall gradient, floor, blurred boxes, discs and stripes."""
    h, w = pt.h, pt.w
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    wall = rng.uniform(0.2, 0.85, 3).astype(np.float32)
    pt.img[:] = wall * (0.8 + 0.3 * (1 - ys / h))[:, :, None]
    horizon = rng.uniform(0.6, 0.85) * h
    floor = rng.uniform(0.1, 0.6, 3).astype(np.float32)
    pt.img[ys >= horizon] = floor
    big = np.zeros((h, w, 3), np.float32)
    msk = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(6, 14))):
        im = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(im)
        x0, y0 = rng.uniform(-0.1, 1.0) * w, rng.uniform(-0.1, 1.0) * h
        bw, bh = rng.uniform(0.05, 0.4) * w, rng.uniform(0.05, 0.5) * h
        kind = rng.integers(3)
        if kind == 0:
            d.rectangle((x0, y0, x0 + bw, y0 + bh), fill=255)
        elif kind == 1:
            d.ellipse((x0, y0, x0 + bw, y0 + bw), fill=255)
        else:
            for k in range(int(rng.integers(3, 8))):
                yy = y0 + k * bh / 6
                d.rectangle((x0, yy, x0 + bw, yy + bh / 16), fill=255)
        m = np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 4) * pt.unit * 0.02)))
        m = m.astype(np.float32) / 255
        col = rng.uniform(0, 1, 3).astype(np.float32)
        big += (col - big) * m[:, :, None]
        msk = np.maximum(msk, m)
    pt.img += (big - pt.img) * msk[:, :, None]


def _scene_painter(
    params: FaceParams,
    canvas: tuple[int, int],
    face_box: tuple[float, float, float, float] | None,
    rng: np.random.Generator,
    ss: int,
) -> tuple[_Painter, np.ndarray]:
    """The painter of a scene at ``ss`` times ``canvas`` and the model -> canvas pixel matrix;
    ``face_box`` None draws it from ``rng`` (three numbers, before anything else)."""
    W, H = canvas
    if face_box is None:
        side = rng.uniform(0.35, 0.6) * min(W, H)
        x0 = rng.uniform(0, W - side)
        y0 = rng.uniform(0, H - side)
        face_box = (x0, y0, x0 + side, y0 + side)
    x0, y0, x1, y1 = (float(v) for v in face_box)
    side_x, side_y = x1 - x0, y1 - y0
    # Unit-square frame -> canvas pixel index.
    unit = face_frame(params, 1.0)  # model -> index of a 1-px crop: continuous = index + 0.5
    to_canvas = np.array([[side_x, 0, x0 - 0.5], [0, side_y, y0 - 0.5], [0, 0, 1.0]])
    to_canvas = to_canvas @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]]) @ unit
    to_ss = np.array([[ss, 0, 0.5 * ss - 0.5], [0, ss, 0.5 * ss - 0.5], [0, 0, 1.0]])
    return _Painter(W * ss, H * ss, to_ss @ to_canvas), to_canvas


def render_photo_scene(
    params: FaceParams,
    canvas: tuple[int, int] = (640, 480),
    face_box: tuple[float, float, float, float] | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    supersample: int = 2,
    style: str = "photo",
) -> tuple[np.ndarray, np.ndarray]:
    """A photo-style face (with shoulders) in a cluttered ``canvas`` = (W, H) photo.

    ``style="game"`` draws the same face in the game style into the same clutter (the same
    ``rng`` state gives the same scene), without the photo's grain: the ground truth of a
    toonifier that restyles the person and keeps the rest of the photo.

    ``face_box`` (x0, y0, x1, y1) is the square of the canvas, in pixel edges, that the face's
    FFHQ crop covers before the pose jitter (so a 256 crop of it is ``render(params)``'s framing);
    ``None`` picks one at random: side 35-60 % of the shorter canvas side, inside the canvas.
    Returns the (H, W, 3) uint8 image and its (68, 2) landmarks in canvas pixel coordinates.
    """
    W, H = canvas
    rng = _as_rng(rng, params)
    ss = int(supersample)
    pt, to_canvas = _scene_painter(params, canvas, face_box, rng, ss)
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    _clutter(pt, rng)
    _draw_face(pt, params, style, rng)
    out = _finish(pt.img, (W, H), ss)
    if style == "photo":
        out = _grain(out, rng)
    return out, transform_points(to_canvas, _model_landmarks(params))


PERSON_PARTS = ("person", "head")


def render_person_mask(
    params: FaceParams,
    canvas: tuple[int, int] = (640, 480),
    face_box: tuple[float, float, float, float] | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    supersample: int = 2,
    part: str = "person",
) -> np.ndarray:
    """Where the person of ``render_photo_scene(params, canvas, face_box, rng)`` is: an (H, W)
    float32 coverage in [0, 1] (1: person, 0: clutter; fractional on anti-aliased edges).

    Pass ``rng`` in the same state as for the scene (e.g. a fresh ``item_params(seed, i)``):
    a random ``face_box`` is drawn from it the same way. ``part="person"`` is everything the
    scene draws over the clutter (hair, head, neck, shirt); ``"head"`` leaves out the body
    (neck and shirt): the face, ears and all hair. The coverage is the union over both styles
    (their outlines differ by the game style's ink lines). Every fill and shade of the
    drawing is affine in the pixels under it, so drawing over a black and over a white canvas
    gives the coverage as one minus their difference. The scene's own pixels are unchanged.
    """
    if part not in PERSON_PARTS:
        raise ValueError(f"part must be one of {', '.join(PERSON_PARTS)}, got {part!r}")
    W, H = canvas
    rng = _as_rng(rng, params)
    ss = int(supersample)
    pt, _ = _scene_painter(params, canvas, face_box, rng, ss)
    cover = np.zeros((pt.h, pt.w), np.float32)
    for style in STYLES:
        layers = []
        for ground in (0.0, 1.0):
            pt.img[:] = ground
            if part == "person":
                _draw_face(pt, params, style, np.random.default_rng(0))
            else:
                _draw_face(pt, params, style, None, body=False)
            layers.append(pt.img.copy())
        through = np.clip(layers[1] - layers[0], 0.0, 1.0).min(2)
        cover = np.maximum(cover, 1.0 - through)
    if ss > 1:
        cover = cover[: H * ss, : W * ss].reshape(H, ss, W, ss).mean((1, 3))
    return np.clip(cover, 0.0, 1.0).astype(np.float32)


# -- datasets -----------------------------------------------------------------------------------


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def item_params(seed: int, index: int) -> tuple[FaceParams, np.random.Generator]:
    """Parameters and the texture generator of dataset item ``index`` (depends only on both)."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    a, b = ss.spawn(2)
    return sample_params(np.random.default_rng(a)), np.random.default_rng(b)


def write_dataset(
    out_dir: str | os.PathLike, n: int, style: str = "photo", seed: int = 0, size: int = 256
) -> Path:
    """Write ``n`` faces as ``{i:05d}.png`` and ``params.json`` (format, style, seed, size, vector
    names and one vector per image) into ``out_dir``. Item i depends only on (seed, i): the same
    call gives byte-identical files, and the two styles with one seed are pixel-aligned pairs."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vectors = []
    for i in range(int(n)):
        p, rng = item_params(seed, i)
        atomic_write_bytes(out / f"{i:05d}.png", _png_bytes(render(p, style, size, rng)))
        vectors.append([float(v) for v in p.to_vector()])
    meta = {
        "format": "toon.synthetic/1",
        "style": style,
        "seed": int(seed),
        "size": int(size),
        "count": int(n),
        "names": FaceParams.vector_names(),
        "params": vectors,
    }
    atomic_write_bytes(out / "params.json", (json.dumps(meta, indent=1) + "\n").encode())
    return out
