"""The miniature's inversion table (demo/inversion.py) with the shipped base and encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo import inversion

ASSETS = Path(__file__).resolve().parents[2] / "demo" / "assets"


def _table(faces: int, refine_steps: tuple[int, ...], project_steps: int):
    """The inversion table of the shipped base and encoder on ``faces`` held-out photos."""
    encoder = ASSETS / "encoder32.safetensors"
    if not encoder.exists():
        pytest.fail(f"{encoder} is missing (demo/README.md says how to make it)")
    return inversion.inversion_table(
        ASSETS / "base32.safetensors",
        encoder,
        ASSETS / "judges32.safetensors",
        faces,
        refine_steps,
        project_steps,
    )


def test_the_shipped_encoder_beats_the_mean_face_and_refinement_improves_it():
    """On 4 held-out photos: the encoder's codes reconstruct far better than ``w_avg`` (the
    floor), a few refinement steps from them improve PSNR and beat as many steps from
    ``w_avg``, and every row is timed."""
    report, strip = _table(4, (10,), 20)
    rows = report["methods"]
    mean, enc = rows["mean face (w_avg)"], rows[report["encoder_row"]]
    refined = rows["encoder + 10 steps"]
    assert enc["psnr_db"] > mean["psnr_db"] + 4
    if report["encoder_passes"] > 1:  # the feedback passes improve on the first
        assert enc["psnr_db"] > rows["encoder alone, 1 pass"]["psnr_db"]
    assert enc["identity_error_over_photo"] < mean["identity_error_over_photo"]
    assert refined["psnr_db"] > enc["psnr_db"]
    same_budget = rows["projection 10 steps from w_avg (refinement's terms)"]
    assert refined["psnr_db"] > same_budget["psnr_db"]  # a better start
    assert enc["seconds_per_photo"] > 0
    assert rows["projection 20 steps from w_avg"]["seconds_per_photo"] > 0
    assert strip.shape == (4 * 32, len(report["strip_columns"]) * 32, 3)


@pytest.mark.slow
def test_the_shipped_encoder_plus_50_steps_is_as_faithful_as_400_step_projection():
    """Issue goal, on the 24 held-out photos of demo/README.md's table: the shipped encoder's
    codes refined for 50 steps reconstruct at least as well as 400-step projection from
    ``w_avg`` (mean PSNR, worst PSNR within 0.1 dB, and the judges' identity error), and the
    encoder alone is far better than the mean face. Speed is measured by the table and
    bench/encoder.py, not asserted here."""
    report, _ = _table(24, (50,), 400)
    rows = report["methods"]
    refined, proj = rows["encoder + 50 steps"], rows["projection 400 steps from w_avg"]
    assert refined["psnr_db"] >= proj["psnr_db"]
    assert refined["psnr_db_min"] >= proj["psnr_db_min"] - 0.1
    assert refined["identity_error_over_photo"] <= proj["identity_error_over_photo"]
    enc = rows[report["encoder_row"]]
    assert enc["psnr_db"] > rows["mean face (w_avg)"]["psnr_db"] + 8
