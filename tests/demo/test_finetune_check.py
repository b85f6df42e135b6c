"""The fine-tune check (demo/finetune_check.py): a teacher equal to the base changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from demo import finetune_check

ASSETS = Path(__file__).resolve().parents[2] / "demo" / "assets"


def test_a_teacher_equal_to_the_base_scores_as_doing_nothing_and_another_does_not(tmp_path):
    base = ASSETS / "base32.safetensors"
    if not base.exists():
        pytest.fail(f"{base} is missing (demo/README.md says how to make it)")
    report = finetune_check.check(base, base, faces=2, steps=5, work=tmp_path)
    # photo + base(w) - base(w) is the photo: exactly doing nothing.
    assert report["delta"] == 1.0 and report["delta_noise_none"] == 1.0
    assert report["render"] == report["reconstruction"]
    for rows in report["blends"].values():
        assert all(row["ratio"] == report["reconstruction"] for row in rows.values())
    assert (tmp_path / "proj-2-5" / "projected_w.npz").exists()  # cached for the next call

    from teacher import load_generator, save_network

    other = load_generator(base)
    with torch.no_grad():
        other.synthesis.b32.torgb.bias.add_(0.3)  # a teacher that brightens every render
    other_file = save_network(other, tmp_path / "other.safetensors")
    moved = finetune_check.check(other_file, base, faces=2, steps=5, work=tmp_path)
    assert moved["delta"] != 1.0 and moved["render"] != report["render"]
    assert moved["reconstruction"] == report["reconstruction"]  # the same projected codes
