"""ONNX export, its verification, the torch-free runtime and the toon-infer CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export.cli import main as export_main
from export.infer_cli import main as infer_main
from export.onnx_export import ExportError, export_onnx, verify_model
from export.runtime import ModelError, Toonifier
from student.io import load_student, save_student
from student.networks import build_generator, generator_arch
from tests.conftest import REPO, project_photo

SIZE = 64


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A small random student with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    arch = generator_arch("tiny")
    G = build_generator(arch).train()
    with torch.no_grad():
        for _ in range(3):
            G(torch.randn(4, 3, SIZE, SIZE))
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    save_student(
        G.eval(),
        arch,
        path,
        source={"teachers": {"base": "ab" * 32}},
        training={"resolution": SIZE},
    )
    return path


@pytest.fixture(scope="module")
def model(student, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "toon.onnx"
    export_onnx(student, out)
    return out


def _torch_uint8(student: Path, images: np.ndarray) -> np.ndarray:
    G = load_student(student)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = G(x)
    return np.clip(np.rint((y.numpy() + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def test_uint8_export_matches_torch_within_one_level(student, model):
    m = onnx.load(str(model))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    assert not list(model.parent.glob("*.data"))  # one self-contained file
    toon = Toonifier(model, device="cpu")
    rs = np.random.RandomState(3)
    for batch in (1, 3):
        images = (rs.rand(batch, SIZE, SIZE, 3) * 255).astype(np.uint8)
        got = toon.run(images)
        assert got.dtype == np.uint8 and got.shape == images.shape
        diff = np.abs(got.astype(int) - _torch_uint8(student, images).astype(int)).max()
        assert diff <= 1


def test_float_export_matches_torch_within_1e4(student, tmp_path):
    out = tmp_path / "float.onnx"
    export_onnx(student, out, io="float")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(1).uniform(-1, 1, (3, 3, SIZE, SIZE)).astype(np.float32)
    got = sess.run(None, {"image": x})[0]
    with torch.no_grad():
        ref = load_student(student)(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-4


def test_metadata_round_trip(student, model):
    toon = Toonifier(model, device="cpu")
    meta = toon.metadata
    assert meta["toon.format_version"] == "1" and meta["toon.io"] == "uint8"
    assert int(meta["toon.size"]) == SIZE == toon.size
    assert json.loads(meta["toon.align"]) == {"recipe": "ffhq", "size": SIZE}
    assert json.loads(meta["toon.teachers"]) == {"base": "ab" * 32}
    from common.files import file_sha256

    assert meta["toon.student_sha256"] == file_sha256(student)
    assert meta["toon.preset"] == "tiny" and toon.device == "cpu"


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("toon.format_version", "99", "unknown toon model format version"),
        ("toon.io", "jpeg", "unknown model io"),
    ],
)
def test_runtime_refuses_unknown_metadata(model, tmp_path, key, value, match):
    m = onnx.load(str(model))
    for p in m.metadata_props:
        if p.key == key:
            p.value = value
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ModelError, match=match):
        Toonifier(bad, device="cpu")


def test_fp16_variant_reports_psnr(student, tmp_path):
    out = tmp_path / "fp16.onnx"
    report = export_onnx(student, out, precision="fp16")
    psnrs = [b["psnr_db"] for b in report.checks["batches"].values()]
    assert min(psnrs) >= 40.0
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(student, fp32)
    assert out.stat().st_size < 0.6 * fp32.stat().st_size


def test_verification_catches_a_wrong_model(student, model, tmp_path):
    other = generator_arch("tiny")
    torch.manual_seed(9)
    G2 = build_generator(other).eval()
    path = tmp_path / "other.safetensors"
    save_student(G2, other, path, training={"resolution": SIZE})
    with pytest.raises(ExportError, match="differs from torch"):
        verify_model(model, load_student(path))


def test_export_cli_errors_and_inspect(student, model, tmp_path, capsys):
    assert (
        export_main(
            [
                "onnx",
                "--student",
                str(tmp_path / "none.safetensors"),
                "--out",
                str(tmp_path / "x.onnx"),
            ]
        )
        == 1
    )
    assert "file not found" in capsys.readouterr().err
    assert (
        export_main(
            ["onnx", "--student", str(student), "--out", str(tmp_path / "x.onnx"), "--int8"]
        )
        == 1
    )
    assert "--calib" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    assert export_main(["inspect", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"]["image"] == ["batch", SIZE, SIZE, 3]
    assert info["metadata"]["toon.io"] == "uint8"
    assert export_main(["verify", str(model), "--student", str(student)]) == 0


# ---------------------------------------------------------------------------------------------
# toon-infer


def test_infer_two_faces_replaced_and_outside_untouched(model, tmp_path):
    photo = project_photo("two.jpg")
    out = tmp_path / "out.png"
    rc = infer_main([str(photo), "-o", str(out), "--model", str(model), "--device", "cpu"])
    assert rc == 0
    from faces.align import align, load_image

    src = load_image(photo).astype(int)
    res = np.asarray(Image.open(out)).astype(int)
    assert res.shape == src.shape
    faces = align(photo, size=SIZE)
    assert len(faces) == 2
    for f in faces:
        x0, y0, x1, y1 = f.box.astype(int)
        assert np.abs(res[y0:y1, x0:x1] - src[y0:y1, x0:x1]).mean() > 5  # face changed
    # Far from both crop squares the photo is unchanged.
    assert np.array_equal(res[:5, :5], src[:5, :5])


def test_infer_keeps_alpha_and_exif_orientation(model, tmp_path):
    rgba = project_photo("rgba.png")
    out_dir = tmp_path / "o"
    rc = infer_main(
        [
            str(rgba),
            str(project_photo("exif.jpg")),
            "-o",
            str(out_dir),
            "--model",
            str(model),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    with Image.open(rgba) as im:
        alpha_in = np.asarray(im.convert("RGBA"))[:, :, 3]
    res = Image.open(out_dir / "rgba_toon.png")
    assert res.mode == "RGBA" and np.array_equal(np.asarray(res)[:, :, 3], alpha_in)
    from faces.align import load_image

    upright = load_image(project_photo("exif.jpg"))
    with Image.open(out_dir / "exif_toon.jpg") as b:
        assert (b.height, b.width) == upright.shape[:2]


def test_infer_crop_mode_json_report(model, tmp_path, capsys):
    rc = infer_main(
        [
            str(project_photo("two.jpg")),
            "--crop",
            "-o",
            str(tmp_path / "c"),
            "--model",
            str(model),
            "--json",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["faces"] == 2 and len(report["outputs"]) == 2 and "model" in report["timings_ms"]
    for p in report["outputs"]:
        assert Image.open(p).size == (SIZE, SIZE)


def test_infer_error_paths(model, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (120, 130, 140)).save(blank)
    good = tmp_path / "obama_small.jpg"  # beside broken.jpg: -o o/ keeps that one folder flat
    good.write_bytes(project_photo("one.jpg").read_bytes())
    rc = infer_main(
        [str(bad), str(good), "-o", str(tmp_path / "o"), "--model", str(model), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "broken.jpg" in err
    assert (tmp_path / "o" / "obama_small_toon.jpg").exists()  # the other file still processed
    rc = infer_main([str(blank), "-o", str(tmp_path / "o2"), "--model", str(model)])
    assert rc == 3 and "no face found" in capsys.readouterr().err
    assert (
        infer_main([str(blank), "--skip-empty", "-o", str(tmp_path / "o2"), "--model", str(model)])
        == 0
    )
    copy = tmp_path / "me.png"
    Image.open(good).save(copy)
    assert infer_main([str(copy), "-o", str(copy), "--model", str(model)]) == 1
    assert "overwrite the input" in capsys.readouterr().err
    assert infer_main([str(good), "--model", str(tmp_path / "none.onnx")]) == 1
    assert "model not found" in capsys.readouterr().err


def test_infer_help_does_not_import_torch():
    code = (
        "import sys\nfrom export.infer_cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nassert 'torch' not in sys.modules\nprint('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_residual_student_exports_and_matches_pytorch(tmp_path):
    """A student with the residual output (input plus its change, clipped) exports, and ONNX
    Runtime gives PyTorch's answer within one level."""
    torch.manual_seed(1)
    arch = generator_arch("tiny", output="residual")
    G = build_generator(arch).train()
    with torch.no_grad():
        torch.nn.init.normal_(G.head.weight, std=0.05)  # a change to draw
        for _ in range(3):
            G(torch.randn(4, 3, SIZE, SIZE))
    path = tmp_path / "student.safetensors"
    save_student(G.eval(), arch, path, source={"teachers": {"base": "cd" * 32}},
                 training={"resolution": SIZE})  # fmt: skip
    out = tmp_path / "toon.onnx"
    export_onnx(path, out)
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    got = Toonifier(out, device="cpu").run(images).astype(int)
    want = _torch_uint8(path, images).astype(int)
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - images).mean() > 1.0  # the change is there
