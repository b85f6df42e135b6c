"""What toon-infer writes, pixel by pixel, against expectations computed without it.

- Models whose function is known in closed form (ONNX graphs built here, carrying the exported
  model's ``toon.*`` metadata): ``invert`` answers 255 - x, ``magenta`` answers (255, 0, 255)
  everywhere. With them the pasted photo is the photo where nothing is pasted and magenta
  where the face is, and the geometry of "where" comes from the face's quad alone.
- The random ``tiny`` student run by PyTorch (not ONNX Runtime) on the aligned crops.
- An EXIF-rotated JPEG whose upright pixels are rotated here with numpy.

Photos: ``skimage.data.astronaut()`` (NASA, public domain), one face; the same mirrored beside
it, two faces.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from export.infer_cli import main as infer_main
from faces.align import align
from student.io import load_student
from tests.serve_helpers import SIZE

MAGENTA = np.array([255, 0, 255])
FEATHER = 0.1  # paste_back's default feather, as a fraction of the crop side


def _known_model(base: Path, dst: Path, kind: str) -> Path:
    """An ONNX model with ``base``'s ``toon.*`` metadata and io (uint8 [N, S, S, 3] in and
    out) computing ``kind``: ``invert`` (255 - x), ``magenta`` (every pixel 255, 0, 255) or
    ``same`` (x)."""
    meta = {p.key: p.value for p in onnx.load(str(base)).metadata_props}
    shape = ["N", SIZE, SIZE, 3]
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, shape)
    y = helper.make_tensor_value_info("toon", TensorProto.UINT8, shape)
    consts = [
        helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("colour", TensorProto.FLOAT, [3], MAGENTA.astype(float).tolist()),
    ]
    nodes = [helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT)]
    if kind == "invert":
        nodes.append(helper.make_node("Sub", ["c255", "xf"], ["yf"]))
    elif kind == "same":
        nodes.append(helper.make_node("Identity", ["xf"], ["yf"]))
    else:
        nodes.append(helper.make_node("Mul", ["xf", "zero"], ["z"]))
        nodes.append(helper.make_node("Add", ["z", "colour"], ["yf"]))
    nodes.append(helper.make_node("Cast", ["yf"], ["toon"], to=TensorProto.UINT8))
    graph = helper.make_graph(nodes, kind, [x], [y], initializer=consts)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    from skimage.data import astronaut

    one = np.asarray(Image.fromarray(astronaut()).resize((256, 256), Image.Resampling.LANCZOS))
    two = np.concatenate([one, one[:, ::-1]], axis=1)
    folder = tmp_path_factory.mktemp("photos")
    paths = {"one": folder / "one.png", "two": folder / "two.png"}
    Image.fromarray(one).save(paths["one"])
    Image.fromarray(two).save(paths["two"])
    # Stored on its side with EXIF orientation 6 ("rotate 90 degrees clockwise to show").
    exif = Image.Exif()
    exif[0x0112] = 6
    paths["exif"] = folder / "sideways.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(one, 1))).save(
        paths["exif"], quality=95, exif=exif.tobytes()
    )
    return paths


@pytest.fixture(scope="module")
def known(model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("known")
    return {k: _known_model(model, folder / f"{k}.onnx", k) for k in ("invert", "magenta", "same")}


def _align_options(model: Path) -> dict:
    """How the model's crops are aligned (its ``toon.align`` metadata, as the runtime reads
    it)."""
    from export.runtime import Toonifier

    return Toonifier(model, device="cpu").align_options()


def _infer(model: Path, *argv: str) -> None:
    assert infer_main([*argv, "--model", str(model), "--device", "cpu"]) == 0


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _crop_coords(quad: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every photo pixel centre in the crop's coordinates (0..SIZE across the square), from
    the quad's corners alone (top-left, bottom-left, bottom-right, top-right)."""
    q0, ex, ey = quad[0], (quad[3] - quad[0]) / SIZE, (quad[1] - quad[0]) / SIZE
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    d = np.stack([xs + 0.5, ys + 0.5], -1) - q0
    uv = d @ np.linalg.inv(np.stack([ex, ey]))
    return uv[..., 0], uv[..., 1]


def _regions(faces, shape, margin: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(core, outside): pixels deeper in some crop square than the feathered edge (plus
    ``margin`` crop pixels), and pixels more than ``margin`` outside every square."""
    core = np.zeros(shape, bool)
    outside = np.ones(shape, bool)
    lo, hi = FEATHER * SIZE + margin, SIZE - FEATHER * SIZE - margin
    for f in faces:
        u, v = _crop_coords(f.quad, shape)
        core |= (u > lo) & (u < hi) & (v > lo) & (v < hi)
        outside &= (u < -margin) | (u > SIZE + margin) | (v < -margin) | (v > SIZE + margin)
    return core, outside


def test_crop_mode_writes_the_model_output_of_each_aligned_face(model, known, photos, tmp_path):
    """``--crop``: face K's file is the model's answer for the K-th aligned crop: exactly
    255 - crop for ``invert``, and PyTorch's student within one level for the real model."""
    rgb = _rgb(photos["two"]).astype(np.uint8)
    faces = align(rgb, **_align_options(model))
    assert len(faces) == 2
    _infer(known["invert"], str(photos["two"]), "--crop", "-o", str(tmp_path / "inv"))
    for k, f in enumerate(faces):
        got = _rgb(tmp_path / "inv" / f"two_toon_face{k}.png")
        assert np.array_equal(got, 255 - f.crop[:, :, :3].astype(int)), k
    _infer(model, str(photos["two"]), "--crop", "-o", str(tmp_path / "real"))
    G = load_student(model.parent / "student.safetensors")
    with torch.no_grad():
        x = torch.from_numpy(np.stack([f.crop[:, :, :3] for f in faces])).permute(0, 3, 1, 2)
        y = G(x.float() / 127.5 - 1).permute(0, 2, 3, 1).numpy()
    want = np.clip(np.rint((y + 1) * 127.5), 0, 255).astype(int)
    for k in range(2):
        got = _rgb(tmp_path / "real" / f"two_toon_face{k}.png")
        assert np.abs(got - want[k]).max() <= 1, k  # ONNX Runtime vs PyTorch rounding
        assert np.abs(got - faces[k].crop[:, :, :3]).mean() > 20  # not the input passed on


def test_square_paste_replaces_exactly_the_crop_squares(known, photos, tmp_path):
    """``--paste-mask square`` with the magenta model: magenta deeper in each face's square
    than the feathered edge, the photo untouched outside both squares, a blend of the two in
    between."""
    out = tmp_path / "sq.png"
    argv = ["--paste-mask", "square", "--paste-blend", "replace", "-o", str(out)]
    _infer(known["magenta"], str(photos["two"]), *argv)
    src, got = _rgb(photos["two"]), _rgb(out)
    faces = align(src.astype(np.uint8), **_align_options(known["magenta"]))
    core, outside = _regions(faces, src.shape[:2])
    assert core.sum() > 2 * 40 * 40 and outside.sum() > 0.5 * outside.size
    assert np.abs(got[core] - MAGENTA).max() <= 1
    assert np.array_equal(got[outside], src[outside])
    lo, hi = np.minimum(src, MAGENTA), np.maximum(src, MAGENTA)
    assert ((got >= lo - 1) & (got <= hi + 1)).all()


def test_person_paste_replaces_the_face_and_keeps_the_background(known, photos, tmp_path):
    """The default mask (person) with the magenta model's output pasted in place of the
    photo: magenta on the face (nose and the eyes' landmarks), the photo outside the squares,
    and less of the square replaced than the square paste replaces (the person, not the
    corners)."""
    out = tmp_path / "person.png"
    _infer(known["magenta"], str(photos["one"]), "--paste-blend", "replace", "-o", str(out))
    src, got = _rgb(photos["one"]), _rgb(out)
    (face,) = align(src.astype(np.uint8), **_align_options(known["magenta"]))
    core, outside = _regions([face], src.shape[:2])
    assert np.array_equal(got[outside], src[outside])
    for i in (27, 28, 29, 30, 37, 44):  # nose bridge and tip, one point of each eye
        x, y = np.rint(face.landmarks[i]).astype(int)
        assert np.abs(got[y, x] - MAGENTA).max() <= 1, i
    lo, hi = np.minimum(src, MAGENTA), np.maximum(src, MAGENTA)
    assert ((got >= lo - 1) & (got <= hi + 1)).all()
    magenta_core = (np.abs(got - MAGENTA).max(-1) <= 1) & core
    assert magenta_core.sum() < 0.9 * core.sum()  # part of the square keeps the photo


def test_default_paste_adds_the_change_and_leaves_an_unchanged_face_as_it_was(
    known, photos, tmp_path
):
    """The default blend adds the model's change: a model that changes nothing gives the
    photo back bit for bit, while pasting its output in place of the photo pays the
    resampling of the face to the crop and back. The invert model's change, added to the
    photo, is what the replacing paste's result predicts in closed form."""
    src = _rgb(photos["two"])
    res = {}
    for name, argv in (
        ("same", []),
        ("same_replace", ["--paste-blend", "replace"]),
        ("invert", ["--paste-mask", "square"]),
        ("invert_replace", ["--paste-mask", "square", "--paste-blend", "replace"]),
    ):
        dst = tmp_path / f"{name}.png"
        _infer(known[name.split("_")[0]], str(photos["two"]), *argv, "-o", str(dst))
        res[name] = _rgb(dst)
    assert np.array_equal(res["same"], src)
    assert np.abs(res["same_replace"] - src).max() > 10
    faces = align(src.astype(np.uint8), **_align_options(known["same"]))
    core, outside = _regions(faces, src.shape[:2])
    for name in ("invert", "invert_replace"):
        assert np.array_equal(res[name][outside], src[outside])
    # In the squares' cores (mask 1) replace gives r = 255 - W(crop) and change gives
    # photo + W(255 - crop) - W(crop) = photo - 255 + 2 r (W: the warp back, linear).
    change, r = res["invert"][core], res["invert_replace"][core]
    err = np.abs(change - np.clip(src[core] - 255 + 2 * r, 0, 255))
    assert err.mean() <= 1.0 and np.percentile(err, 99) <= 3
    assert np.abs(change - r).max() > 10


def test_exif_rotated_photo_gives_the_upright_photo_result(model, photos, tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 is toonified upright: the result equals
    the result for its pixels rotated here with numpy and saved losslessly."""
    with Image.open(photos["exif"]) as im:
        stored = np.asarray(im.convert("RGB"))  # decoded, not transposed
    upright = tmp_path / "upright.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, -1))).save(upright)
    _infer(model, str(photos["exif"]), "-o", str(tmp_path / "a.png"))
    _infer(model, str(upright), "-o", str(tmp_path / "b.png"))
    a, b = _rgb(tmp_path / "a.png"), _rgb(tmp_path / "b.png")
    assert a.shape == (256, 256, 3) and np.array_equal(a, b)
    assert np.abs(a - _rgb(upright)).max() > 50  # a face was pasted


def test_stdout_gives_the_same_pixels_as_a_file(model, photos, tmp_path, monkeypatch, capsysbinary):
    _infer(model, str(photos["one"]), "-o", str(tmp_path / "f.png"))

    class Stdin:
        buffer = io.BytesIO(photos["one"].read_bytes())

        @staticmethod
        def isatty() -> bool:
            return False

    monkeypatch.setattr("sys.stdin", Stdin)
    capsysbinary.readouterr()
    _infer(model, "-")
    with Image.open(io.BytesIO(capsysbinary.readouterr().out)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), _rgb(tmp_path / "f.png"))
