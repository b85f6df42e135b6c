"""End-to-end smoke run of the whole pipeline (``demo/run.py --scale smoke``, about a minute).

Fine-tunes the shipped 32 px demo base on procedural game faces, blends, projects, generates
pairs, trains the student, exports ONNX and runs toon-infer on real photos.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_file


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    from demo.run import main

    photo = shared_file("faces", "obama_small.jpg")
    out = tmp_path / "demo"
    assert main(["--scale", "smoke", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    held = summary["quality"]["student_vs_teacher_heldout_pairs"]
    # The student is closer to the teacher on held-out pairs than the unchanged input is.
    assert held["student"]["l1"] < held["do_nothing_source"]["l1"]
    for key in ("finetune_run", "blended", "projected_w", "pairs", "student", "onnx"):
        assert (out / summary["artifacts"][key].split(str(out) + "/")[-1]).exists(), key
    # The shipped encoder coded the held-out photos into real-photo pairs, one per photo.
    encoded = json.loads((out / "pairs-encoded" / "manifest.json").read_text())
    assert encoded["config"]["latent_kind"] == "encoded"
    assert encoded["count"] == len(list((out / "data" / "heldout").glob("*.png")))
    # The exported model toonified a real photo: same size, the face region changed.
    result = out / "toonified" / "obama_small_toon.jpg"
    src = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    res = np.asarray(Image.open(result).convert("RGB")).astype(int)
    assert res.shape == src.shape
    assert np.abs(res - src).mean() > 1.0
    assert (out / "contact_sheet.png").exists() and (out / "blend_grid.png").exists()
    # The outcome was measured through toon-infer's path: its paste adds the model's change,
    # so the identity model gives every scene back as it was (exactly doing nothing), and the
    # share of the gap closed follows its definition from the rows it reports.
    outcome = summary["outcome"]
    rows = outcome["models"]
    assert rows["identity"]["ratio"] == pytest.approx(1.0, abs=1e-9)
    assert rows["identity"]["better_than_nothing"] == 0
    student, oracle = rows["student_seed0"], rows["oracle"]
    expected = (student["l1_nothing"] - student["l1"]) / (student["l1_nothing"] - oracle["l1"])
    assert student["gap_closed"] == pytest.approx(expected, abs=2e-3)
    assert set(outcome["met"]) >= {"gap_closed", "better_than_nothing", "eyes_improve"}
