"""The miniature's outcome measurement (demo/outcome.py) against independent expectations."""

from __future__ import annotations

import numpy as np
import pytest

from demo import outcome
from demo.diagnose import box_l1
from demo.synthetic import landmarks

SIZE = 32


@pytest.fixture(scope="module")
def scenes():
    return outcome.prepare(3, SIZE)


def test_region_masks_cover_eyes_and_jaw_only():
    params_lm = landmarks(_params(), 256).astype(np.float64)
    box = outcome.landmark_box(params_lm)
    res = 40
    masks = outcome.region_masks(params_lm, box, res)
    x0, y0, x1, _ = box
    k = res / (x1 - x0)

    def px(p):
        return int((p[1] - y0) * k), int((p[0] - x0) * k)

    for sl in outcome.EYES:
        assert masks["eyes"][px(params_lm[sl].mean(0))]
    assert not masks["eyes"][px(params_lm[30])]  # nose tip
    assert not masks["eyes"][px(params_lm[8])]  # chin
    assert masks["outline"][px(params_lm[8])]
    assert masks["outline"][px(params_lm[3])]
    assert not masks["outline"][px(params_lm[30])]
    assert 0.02 < masks["eyes"].mean() < 0.25
    assert 0.03 < masks["outline"].mean() < 0.35


def _params():
    from demo.synthetic import item_params

    return item_params(9000, 0)[0]


def test_mean_distance_is_the_diagnosis_distance(scenes):
    def identity(crops):
        return crops

    pasted, crops = outcome.run_model(identity, scenes)
    d = outcome.distances(pasted, scenes)
    ref = [
        box_l1(o, s.game, s.box, s.res)
        for o, s in zip(pasted, scenes, strict=True)
        if o is not None
    ]
    assert len(ref) == len(d["model_mean"]) == len(crops) >= 2
    np.testing.assert_allclose(d["model_mean"], ref, rtol=1e-9)
    nothing = [box_l1(s.photo, s.game, s.box, s.res) for s in scenes if s.faces]
    np.testing.assert_allclose(d["nothing_mean"], nothing, rtol=1e-9)


def test_a_model_that_returns_the_truth_wins_everywhere(scenes):
    """A cheating model that answers each crop with the same crop of the game-style scene must
    beat doing nothing on every face and in both regions; the identity model must not."""
    from faces.align import align

    lookup = {s.faces[0].crop[..., :3].tobytes(): s for s in scenes if s.faces}

    def cheat(crops):
        out = []
        for c in crops:
            s = lookup[c.tobytes()]  # the game scene cut with the same landmarks
            out.append(align(s.game, size=SIZE, landmarks=[s.faces[0].landmarks])[0].crop)
        return np.stack(out)[..., :3]

    report = outcome.measure({"cheat": cheat, "identity": lambda c: c}, scenes)
    cheat_row, ident = report["cheat"], report["identity"]
    assert report["truth"] == cheat_row  # measure()'s own perfect toonifier answers the same
    assert cheat_row["better_than_nothing"] == cheat_row["faces"]
    assert cheat_row["ratio"] < 0.6
    assert cheat_row["eyes_ratio"] < 0.7 and cheat_row["outline_ratio"] < 0.7
    assert ident["ratio"] > 0.95


def test_gap_closed_and_spread_by_hand():
    model = {"l1": 0.05, "l1_nothing": 0.06}
    oracle = {"l1": 0.04}
    assert outcome.gap_closed(model, oracle) == pytest.approx(0.5)
    rows = [{"x": 1.0}, {"x": 2.0}, {"x": 4.0}]
    s = outcome.spread(rows, ("x",))["x"]
    assert (s["mean"], s["min"], s["max"]) == (pytest.approx(7 / 3, abs=1e-4), 1.0, 4.0)


def test_truth_crops_are_the_game_scene_cut_with_the_photos_alignment(scenes):
    """The truth crops (the judges' reference and measure()'s perfect toonifier): the game scene
    cut by the photo's own landmarks, computed here independently of outcome.truth_crops."""
    from faces.align import align

    found = [s for s in scenes if s.faces]
    expect = [align(s.game, size=SIZE, landmarks=[s.faces[0].landmarks])[0].crop[..., :3]
              for s in found]  # fmt: skip
    np.testing.assert_array_equal(outcome.truth_crops(scenes), np.stack(expect))


class _MeanJudges:
    """Stand-in judges: 'game' when the mean pixel is above 100, error = mean pixel / 100."""

    def style_score(self, images):
        return (images.reshape(len(images), -1).mean(1) > 100).astype(np.float64)

    def param_error(self, images, params):
        assert len(images) == len(params)
        return images.reshape(len(images), -1).mean(1) / 100.0

    size = SIZE


def test_identity_is_judged_against_the_truth_cut_the_same_way(scenes, monkeypatch):
    from demo import judges as judges_mod

    found = [s for s in scenes if s.faces]
    crops = np.full((len(found), SIZE, SIZE, 3), 150, np.uint8)
    truth_err = np.mean([s.truth_crop.mean() / 100 for s in found])
    monkeypatch.setattr(judges_mod, "game_truth_error", lambda j, p: np.full(len(p), 0.75))
    row = outcome.judge_crops(_MeanJudges(), crops, scenes)
    assert row["called_game"] == 1.0
    assert row["param_error_over_truth"] == pytest.approx(1.5 / truth_err, abs=1e-3)
    assert row["param_error_over_render"] == pytest.approx(2.0, abs=1e-3)
