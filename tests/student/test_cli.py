"""``toon-student`` train / eval / apply / inspect end to end at toy size, with stand-in feature
networks for the perceptual loss, FID and LPIPS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from student.cli import main
from student.data import open_pairs, split_pairs
from student.io import load_student
from student.ops import float_to_uint8, uint8_to_float
from tests.conftest import TINY_TEACHER_NAME, tiny_teacher_file
from tests.pairs_fixture import write_pairs

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run on one intra-op thread: these small tensors gain nothing from more, and on a busy
    2-core machine OpenMP threads that wait on each other make the same test 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StandInInception(nn.Module):
    """Like inception-2015-12-05.pt: ``net(uint8 x, return_features=True)`` -> [N, 8]."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if not return_features:
            raise RuntimeError("stand-in inception: call with return_features=True")
        f = F.adaptive_avg_pool2d(x.to(torch.float32) / 255, 2).flatten(1)
        return torch.cat([f[:, :4], f[:, 4:8] ** 2], dim=1)


class StandInVGG16(nn.Module):
    """Like vgg16.pt's LPIPS mode: float images in [0, 255], ``resize_images=False,
    return_lpips=True`` -> unit-norm features; differentiable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        resize_images: bool = True,
        return_lpips: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        if not return_lpips or resize_images:
            raise RuntimeError("stand-in vgg16: call with resize_images=False, return_lpips=True")
        f = F.adaptive_avg_pool2d(torch.relu(self.conv(x.to(torch.float32) / 127.5 - 1)), 4)
        f = f.flatten(1)
        return f / torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp(min=1e-8)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "p" not in _CACHE:
        _CACHE["p"] = write_pairs(tmp_path_factory.mktemp("pairs"), tiny_teacher_file(), 128, 32)
    return _CACHE["p"]


@pytest.fixture(scope="module")
def feature_nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nets")
    paths = {"inception": folder / "inception.pt", "vgg16": folder / "vgg16.pt"}
    torch.manual_seed(0)
    torch.jit.script(StandInInception()).save(str(paths["inception"]))
    torch.jit.script(StandInVGG16()).save(str(paths["vgg16"]))
    return paths


@pytest.fixture(scope="module")
def student_file(
    pairs_dir: Path, feature_nets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A short CLI training run with the perceptual loss (stand-in VGG16)."""
    if "s" not in _CACHE:
        out = tmp_path_factory.mktemp("run")
        argv = [
            "train",
            "--preset",
            "tiny",
            "--pairs",
            str(pairs_dir),
            "--outdir",
            str(out),
            "--kimg",
            "0.048",
            "--tick-kimg",
            "0.024",
            "--holdout-percent",
            "20",
            "--vgg16",
            str(feature_nets["vgg16"]),
            "--quiet",
        ]
        assert main(argv) == 0
        lines = [json.loads(x) for x in (out / "stats.jsonl").read_text().splitlines()]
        assert "Loss/G/vgg" in lines[-1] and lines[-1]["Progress/kimg"] == 0.048
        _CACHE["s"] = out / "student.safetensors"
    return _CACHE["s"]


def test_eval_writes_a_json_report_and_grid(
    student_file: Path, pairs_dir: Path, feature_nets, tmp_path: Path, capsys
) -> None:
    report_path, grid = tmp_path / "report.json", tmp_path / "grid.png"
    argv = ["eval", "--student", str(student_file), "--pairs", str(pairs_dir), "--quiet"]
    rc = main(
        argv
        + ["--out", str(report_path), "--grid", str(grid), "--grid-rows", "3"]
        + ["--inception", str(feature_nets["inception"]), "--vgg16", str(feature_nets["vgg16"])]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads(report_path.read_text())
    assert printed == report
    assert report["pairs"]["holdout_percent"] == 20.0  # the student's own split
    assert set(report["metrics"]) == {"l1", "psnr", "ssim", "fid", "lpips"}
    assert set(report["identity"]) == {"l1", "psnr", "ssim", "lpips"}
    assert report["metrics"]["fid"] >= 0 and report["metrics"]["lpips"] >= 0
    assert report["l1_ratio"] == pytest.approx(report["metrics"]["l1"] / report["identity"]["l1"])
    img = np.asarray(Image.open(grid))
    assert img.shape == (3 * 32, 3 * 32, 3)  # rows: pairs; columns: src | student | teacher
    held = list(split_pairs(open_pairs(pairs_dir), "heldout", 20.0, limit=1))
    assert np.array_equal(img[:32, :32], held[0][1].transpose(1, 2, 0))
    assert np.array_equal(img[:32, 64:], held[0][2].transpose(1, 2, 0))

    rc = main(argv + ["--max-pairs", "3", "--holdout-percent", "50"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"]["evaluated_pairs"] == 3 and "fid" not in report["metrics"]


def test_apply_runs_the_torch_model_on_crops(student_file: Path, pairs_dir: Path, tmp_path):
    crops = tmp_path / "crops"
    (crops / "sub").mkdir(parents=True)
    held = list(split_pairs(open_pairs(pairs_dir), "heldout", 20.0, limit=3))
    for i, (_, src, _) in enumerate(held):
        Image.fromarray(src.transpose(1, 2, 0)).save(crops / ("sub" if i else ".") / f"c{i}.png")
    big = Image.fromarray(held[0][1].transpose(1, 2, 0)).resize((64, 64), Image.NEAREST)
    big.save(crops / "big.jpg", quality=95)
    Image.new("RGB", (40, 32)).save(crops / "wide.png")
    out = tmp_path / "out"
    rc = main(["apply", "--student", str(student_file), "--input", str(crops), "--out", str(out)])
    assert rc == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["big.png", "c0.png", "sub/c1.png", "sub/c2.png"]
    G = load_student(student_file)
    with torch.no_grad():
        ref = float_to_uint8(G(uint8_to_float(torch.from_numpy(held[1][1][None]))))[0]
    got = np.asarray(Image.open(out / "sub" / "c1.png")).transpose(2, 0, 1)
    assert np.array_equal(got, ref.numpy())
    assert Image.open(out / "big.png").size == (32, 32)  # resized to the training resolution
    # --size 0 keeps sizes: the 64 px crop stays 64 px
    rc = main(["apply", "--student", str(student_file), "--input", str(crops / "big.jpg"),
               "--out", str(tmp_path / "keep"), "--size", "0"])  # fmt: skip
    assert rc == 0 and Image.open(tmp_path / "keep" / "big.png").size == (64, 64)


def test_cli_errors_are_one_line(student_file: Path, pairs_dir: Path, tmp_path: Path, capsys):
    teacher = tmp_path / "snapshot.pkl"  # what a user might pass by mistake
    teacher.write_bytes(b"\x80\x04\x95 a pickle, not a safetensors file")
    cases = [
        (["eval", "--student", str(teacher), "--pairs", str(pairs_dir)], "not a safetensors"),
        (["eval", "--student", str(student_file), "--pairs", str(tmp_path)], "no manifest.json"),
        (
            ["eval", "--student", str(tmp_path / "x.safetensors"), "--pairs", str(pairs_dir)],
            "file not found",
        ),  # fmt: skip
        (
            [
                "apply",
                "--student",
                str(student_file),
                "--input",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
            ],
            "input not found",
        ),  # fmt: skip
        (
            [
                "eval",
                "--student",
                str(student_file),
                "--pairs",
                str(pairs_dir),
                "--inception",
                str(tmp_path / "inc.pt"),
            ],
            "download it yourself",
        ),  # fmt: skip
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("toon-student: error: ") and "\n" not in err, err
        assert message in err, err
    assert main(["inspect", str(student_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "student.generator" and info["arch"]["preset"] == "tiny"
    assert info["source"]["pairs_manifest_sha256"] == open_pairs(pairs_dir).manifest_sha256
    assert info["source"]["teachers"]["base"]["file"] == TINY_TEACHER_NAME


@pytest.mark.parametrize(
    "device,dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
        pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
    ],
)
def test_perceptual_loss_runs_in_float32_under_autocast(feature_nets, device, dtype):
    """Inside autocast (where the feature network alone computes in reduced precision) the
    perceptual loss equals the float32 loss exactly: its guard turns autocast off. (The
    network is the stand-in as an eager module: TorchScript ignores autocast by default, an
    eager network, or a future TorchScript, does not.)"""
    from student.loss import PerceptualLoss

    loss = PerceptualLoss(feature_nets["vgg16"], device=device)
    loss.net = StandInVGG16().to(device).eval()
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 3, 32, 32, generator=g).to(device) * 2 - 1 for _ in range(2))
    ref = loss(a, b)
    with torch.autocast(device_type=device, dtype=dtype):
        unguarded = loss.net((a + 1) * 127.5, resize_images=False, return_lpips=True)
        got = loss(a, b)
    assert unguarded.dtype == dtype  # autocast is on: without the guard, the loss would round
    assert got.dtype == torch.float32 and torch.equal(got, ref)
