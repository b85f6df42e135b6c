"""Steady faces in video: detect every few frames, track landmarks in between, smooth them.

Per frame, every tracked face gets new 68-point landmarks from the shape predictor run in a box
placed by the face's previous (smoothed) landmarks, so the box moves as smoothly as the face
and the landmarks with it (``FaceDetector.landmarks(..., exact=True)``: sub-pixel box, unrounded
output). The box stands to the landmarks as the detector's box stood to the landmarks it gave
when the track began (:func:`box_relation`), so the predictor sees the framing it was trained on.

The full detector runs only every ``detect_every`` frames, on a downscaled frame, and at once
after a scene cut (the frame's thumbnail changed by more than ``cut_level`` levels on average):
a detection that overlaps no track starts one; a track that no detection confirmed in
``max_misses`` rounds in a row ends (after a cut, at once), and so does one whose face leaves
the frame or collapses. Faces therefore appear within ``detect_every`` frames of showing up.

Landmarks are smoothed over time by One-Euro filters (Casiez, Roussel and Vogel, CHI 2012):
low-pass filters whose cutoff rises with the speed of the signal, so a face that stands still
is held steady (low cutoff: the predictor's frame-to-frame noise is removed) and a face that
moves is followed with little lag (high cutoff). The landmarks are split first
(:class:`LandmarkSmoother`) into the face's rigid motion (a similarity transform fitted to all
68 points against the track's first shape: four numbers in which the noise of single points
averages out) and what remains (expression, head turn), smoothed more strongly. The alignment
square, several times larger than the spread of the landmarks, magnifies any wobble of their
angle; fitting the angle to all 68 points instead of the recipe's eye and mouth corners keeps it
steady. Everything is filtered in units of the face's size, so the same settings hold for small
and large faces.

Imports: numpy and the torch-free ``faces``. Never torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from faces.detect import FaceDetector
from faces.image import to_gray
from faces.warp import ffhq_quad, quad_size

THUMB_STEP = 8  # scene-cut test: every 8th pixel of the gray frame in each direction


@dataclass(frozen=True)
class TrackConfig:
    """How faces are followed from frame to frame."""

    detect_every: int = 5  # run the detector every N frames (and after a scene cut)
    max_faces: int | None = None  # track at most this many faces, largest first (None: all)
    min_cutoff: float = 0.3  # rigid motion: One-Euro cutoff at rest (Hz); lower: steadier, lags
    beta: float = 2.0  # rigid motion: One-Euro speed gain (per face-size per second)
    shape_cutoff: float = 0.25  # the rest (expression, head turn): One-Euro cutoff at rest (Hz)
    shape_beta: float = 1.0  # the rest: One-Euro speed gain
    d_cutoff: float = 1.0  # One-Euro cutoff of the speed estimates (Hz)
    smooth: bool = True  # False: raw landmarks (for measuring what the filter does)
    max_misses: int = 2  # detection rounds in a row a track may go unconfirmed
    match_iou: float = 0.3  # least box overlap for a detection to confirm a track
    cut_level: float = 40.0  # mean thumbnail change (levels of 255) that counts as a scene cut
    max_outside: float = 0.5  # a track ends when more than this share of its box leaves the frame

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {self.detect_every}")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError("max_faces must be at least 1 (or None for all)")
        if min(self.min_cutoff, self.shape_cutoff, self.d_cutoff) <= 0:
            raise ValueError("min_cutoff, shape_cutoff and d_cutoff must be positive")
        if min(self.beta, self.shape_beta) < 0:
            raise ValueError("beta and shape_beta must be at least 0")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of an exponential filter with ``cutoff`` Hz sampled every ``dt`` s."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The One-Euro filter of an array signal, element by element.

    ``x_hat = x_hat + a(fc) * (x - x_hat)`` with ``fc = min_cutoff + beta * |dx_hat|``, where
    ``dx_hat`` is the signal's speed (units per second) low-passed at ``d_cutoff`` Hz and
    ``a(fc) = 1 / (1 + 1 / (2 pi fc dt))``. The first sample passes unchanged.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        """The filtered value of sample ``x`` taken ``dt`` seconds after the previous one."""
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or dt <= 0:
            if self.x is None:
                self.x, self.dx = x.copy(), np.zeros_like(x)
            return self.x.copy()
        dx = (x - self.x) / dt
        self.dx = self.dx + _alpha(self.d_cutoff, dt) * (dx - self.dx)
        a = _alpha(self.min_cutoff + self.beta * np.abs(self.dx), dt)
        self.x = self.x + a * (x - self.x)
        return self.x.copy()


class LandmarkSmoother:
    """One face's landmarks smoothed over time: rigid motion and the rest filtered apart.

    Each sample is fitted by the similarity transform ``p = A q + t`` (``A = [[a, -b], [b,
    a]]``, least squares over every point) from the first sample's centred shape ``q``; the
    transform (``t / size, a, b``) goes through one One-Euro filter and the residual shape
    ``A^-1 (p - t) - q`` (in units of the size) through another; the output is rebuilt from the
    two filtered parts. ``size``: the first sample's :func:`landmark_frame` size.
    """

    def __init__(self, first: np.ndarray, config: TrackConfig) -> None:
        centre, self.size = landmark_frame(first)
        self.size = max(self.size, 1.0)
        self.ref = (first - centre) / self.size
        self.rigid = OneEuroFilter(config.min_cutoff, config.beta, config.d_cutoff)
        self.shape = OneEuroFilter(config.shape_cutoff, config.shape_beta, config.d_cutoff)
        self(first, 0.0)

    def split(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rigid parameters (4,), residual shape (P, 2)) of a sample."""
        t = landmarks.mean(0)
        d = (landmarks - t) / self.size
        q = self.ref
        var = float((q * q).sum())
        a = float((q * d).sum()) / var
        b = float((q[:, 0] * d[:, 1] - q[:, 1] * d[:, 0]).sum()) / var
        A = np.array([[a, -b], [b, a]])
        residual = d @ np.linalg.inv(A).T - q
        return np.array([t[0] / self.size, t[1] / self.size, a, b]), residual

    def join(self, rigid: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """Landmarks (P, 2) from rigid parameters and a residual shape (inverse of split)."""
        a, b = rigid[2], rigid[3]
        A = np.array([[a, -b], [b, a]])
        return ((self.ref + residual) @ A.T + rigid[:2]) * self.size

    def __call__(self, landmarks: np.ndarray, dt: float) -> np.ndarray:
        """The smoothed landmarks for a sample taken ``dt`` seconds after the previous one."""
        rigid, residual = self.split(np.asarray(landmarks, dtype=np.float64))
        return self.join(self.rigid(rigid, dt), self.shape(residual, dt))


def landmark_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (2,) and size (RMS distance from the centre) of a set of landmarks."""
    c = landmarks.mean(0)
    return c, float(np.sqrt(((landmarks - c) ** 2).sum(1).mean()))


def box_relation(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """``box`` (x0, y0, x1, y1) in the landmarks' own frame: centre offset and width, height,
    in units of the landmarks' size (4,)."""
    c, s = landmark_frame(landmarks)
    mid = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return np.array([*(mid - c) / s, (box[2] - box[0]) / s, (box[3] - box[1]) / s])


def box_from(relation: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The box that stands to ``landmarks`` as ``relation`` says (inverse of box_relation)."""
    c, s = landmark_frame(landmarks)
    mid = c + relation[:2] * s
    half = relation[2:] * s / 2
    return np.array([mid[0] - half[0], mid[1] - half[1], mid[0] + half[0], mid[1] + half[1]])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _outside(box: np.ndarray, width: int, height: int) -> float:
    """Share of the box's area outside the frame."""
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    if area <= 0:
        return 1.0
    w = max(0.0, min(box[2], width) - max(box[0], 0.0))
    h = max(0.0, min(box[3], height) - max(box[1], 0.0))
    return float(1.0 - w * h / area)


class GrayOnDemand:
    """The gray frame (:func:`faces.image.to_gray`) converted only where it is read: indexing
    gives ``to_gray`` of the RGB pixels indexed, the same values as the whole frame's gray
    (the conversion is pixel by pixel). Between detection rounds the tracker reads only the
    patch around each face (``FaceDetector.landmarks`` slices it) and a sparse thumbnail."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self.shape = rgb.shape[:2]

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        return to_gray(self.rgb[index])


@dataclass
class Track:
    """One followed face. ``landmarks``: smoothed (68, 2) frame pixels (what to align with);
    ``raw``: the predictor's, this frame; ``box``: the predictor's box this frame."""

    id: int
    landmarks: np.ndarray
    raw: np.ndarray
    box: np.ndarray
    relation: np.ndarray
    smoother: LandmarkSmoother = field(repr=False)
    misses: int = 0
    age: int = 0


class FaceTracker:
    """Faces of consecutive video frames, steady (see the module docstring).

    ``tracker.update(rgb, t)`` per frame, in order, with its time in seconds; returns the live
    tracks, oldest first. ``stats`` counts detector runs and the time spent (seconds) in
    detection and in landmarks.
    """

    def __init__(self, detector: FaceDetector, config: TrackConfig | None = None) -> None:
        self.detector = detector
        self.config = config or TrackConfig()
        self.tracks: list[Track] = []
        self._next_id = 0
        self._frame = 0
        self._time: float | None = None
        self._thumb: np.ndarray | None = None
        self.stats = {"detections": 0, "cuts": 0, "detect_s": 0.0, "landmarks_s": 0.0}

    def update(self, rgb: np.ndarray, t: float) -> list[Track]:
        """Track the faces of the next frame ``rgb`` (H, W, 3 uint8) shown at ``t`` seconds."""
        import time

        c = self.config
        gray = GrayOnDemand(rgb)
        dt = 0.0 if self._time is None else t - self._time
        self._time = t
        thumb = gray[::THUMB_STEP, ::THUMB_STEP].astype(np.int16)
        cut = self._thumb is not None and float(np.abs(thumb - self._thumb).mean()) > c.cut_level
        self._thumb = thumb
        if cut:
            self.stats["cuts"] += 1
        for tr in self.tracks:
            tr.box = box_from(tr.relation, tr.landmarks)
        if cut or self._frame % c.detect_every == 0:
            t0 = time.perf_counter()
            gray = to_gray(rgb)  # the detector searches the whole frame
            self._detect(rgb, gray, cut)
            self.stats["detect_s"] += time.perf_counter() - t0
        self._frame += 1
        t0 = time.perf_counter()
        height, width = gray.shape
        kept = []
        for tr in self.tracks:
            raw = self.detector.landmarks(gray, tr.box, exact=True)
            if not self._plausible(raw, tr, width, height):
                continue
            tr.raw = raw
            if c.smooth:
                tr.landmarks = tr.smoother(raw, dt)
            else:
                tr.landmarks = raw
            tr.age += 1
            kept.append(tr)
        self.tracks = self._dedupe(kept)
        self.stats["landmarks_s"] += time.perf_counter() - t0
        return list(self.tracks)

    def _plausible(self, raw: np.ndarray, tr: Track, width: int, height: int) -> bool:
        """False when the face was lost: it left the frame, shrank or grew by half in one
        frame, or its landmarks give no alignment square."""
        if not np.all(np.isfinite(raw)):
            return False
        _, s = landmark_frame(raw)
        _, s_prev = landmark_frame(tr.landmarks)
        if not 0.67 < s / max(s_prev, 1e-6) < 1.5:
            return False
        try:
            q = ffhq_quad(raw)
        except ValueError:
            return False
        if not quad_size(q) > 4:
            return False
        return _outside(box_from(tr.relation, raw), width, height) <= self.config.max_outside

    def _detect(self, rgb: np.ndarray, gray: np.ndarray, cut: bool) -> None:
        """Run the detector: confirm tracks, start new ones, end the unconfirmed."""
        c = self.config
        self.stats["detections"] += 1
        dets = self.detector.boxes(rgb, gray)
        free = list(range(len(dets)))
        pairs = sorted(
            ((iou(tr.box, dets[j].box), i, j) for i, tr in enumerate(self.tracks) for j in free),
            reverse=True,
        )
        matched_tracks: set[int] = set()
        for overlap, i, j in pairs:
            if overlap < c.match_iou:
                break
            if i in matched_tracks or j not in free:
                continue
            matched_tracks.add(i)
            free.remove(j)
        alive = []
        for i, tr in enumerate(self.tracks):
            if i in matched_tracks:
                tr.misses = 0
            else:
                tr.misses += 1
                if cut or tr.misses > c.max_misses:
                    continue
            alive.append(tr)
        self.tracks = alive
        for j in free:  # detections are largest first
            if c.max_faces is not None and len(self.tracks) >= c.max_faces:
                break
            self._start(gray, dets[j].box)

    def _start(self, gray: np.ndarray, box: np.ndarray) -> None:
        raw = self.detector.landmarks(gray, box, exact=True)
        if not np.all(np.isfinite(raw)):
            return
        tr = Track(
            id=self._next_id,
            landmarks=raw,
            raw=raw,
            box=np.asarray(box, dtype=np.float64),
            relation=box_relation(box, raw),
            smoother=LandmarkSmoother(raw, self.config),
        )
        self._next_id += 1
        self.tracks.append(tr)

    def _dedupe(self, tracks: list[Track]) -> list[Track]:
        """Two tracks that ran onto one face: keep the older."""
        out: list[Track] = []
        for tr in tracks:  # oldest first
            box = box_from(tr.relation, tr.landmarks)
            if all(iou(box, box_from(o.relation, o.landmarks)) < 0.5 for o in out):
                out.append(tr)
        return out
