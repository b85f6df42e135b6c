"""The ``toon-teacher`` command line: import, inspect, sample, and its error messages."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli import ToonError
from teacher import CheckpointError, load_generator
from teacher.cli import main
from teacher.dataset import DatasetError
from teacher.identity import IdentityError
from teacher.metrics import MetricsError
from teacher.pickle_reader import CorruptPickleError, UnsafePickleError
from teacher.project import ProjectError
from teacher.sample import parse_seeds
from tests.conftest import shared_file


def test_parse_seeds():
    assert parse_seeds("0-3,7, 10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds("5") == [5]
    for bad in ["", "a-b", "3-1", "1,,x"]:
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_import_then_inspect(tmp_path, capsys):
    pkl = shared_file("fixtures", "tiny32.pkl")
    out = tmp_path / "tiny32.safetensors"
    assert main(["import", str(pkl), str(out)]) == 0
    assert "teacher.generator" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    net = info["networks"]["G_ema"]
    assert net["arch"]["img_resolution"] == 32 and net["arch"]["num_fp16_res"] == 4
    assert net["source"]["file"] == "tiny32.pkl" and len(net["source"]["sha256"]) == 64
    assert main(["inspect", str(pkl)]) == 0
    assert set(json.loads(capsys.readouterr().out)["networks"]) == {"G", "G_ema", "D"}


def test_sample_writes_seed_images_matching_the_generator(tmp_path):
    pkl = shared_file("fixtures", "tiny32.pkl")
    outdir = tmp_path / "samples"
    rc = main(
        [
            "sample",
            "--network",
            str(pkl),
            "--seeds",
            "3-5",
            "--trunc",
            "0.7",
            "--device",
            "cpu",
            "--outdir",
            str(outdir),
        ]
    )
    assert rc == 0
    files = sorted(p.name for p in outdir.iterdir())
    assert files == ["grid.png", "seed0003.png", "seed0004.png", "seed0005.png"]
    assert Image.open(outdir / "grid.png").size == (64, 64)  # 2x2 tiles of 32 px
    # Seed k means z = RandomState(k).randn(z_dim), rendered with noise 'const'.
    G = load_generator(pkl)
    z = torch.from_numpy(np.random.RandomState(4).randn(1, G.z_dim).astype(np.float32))
    with torch.no_grad():
        img = G(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True)
    expected = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    got = np.asarray(Image.open(outdir / "seed0004.png"))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    assert main(["sample", "--network", str(bad), "--outdir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("toon-teacher: error:") and "\n" not in err and str(bad) in err
    assert main(["import", str(tmp_path / "missing.pkl"), str(tmp_path / "x.safetensors")]) == 1
    assert "file not found" in capsys.readouterr().err
    pkl = shared_file("fixtures", "tiny32.pkl")
    assert main(["import", str(pkl), str(tmp_path / "x.bin")]) == 1
    assert "must end in .safetensors" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_teacher_errors_are_toon_errors():
    """Every teacher error is reported by the one CLI wrapper as a one-line message; the pickle
    reader's errors stay ``pickle.UnpicklingError`` too, for callers that catch those."""
    for cls in (CheckpointError, DatasetError, MetricsError, ProjectError, IdentityError):
        assert issubclass(cls, ToonError)
    for cls in (UnsafePickleError, CorruptPickleError):
        assert issubclass(cls, ToonError) and issubclass(cls, pickle.UnpicklingError)
