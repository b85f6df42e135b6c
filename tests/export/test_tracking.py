"""The tracker's pieces: the One-Euro filter, the rigid/residual split of the landmarks, and
the box that follows them (pure numpy; references worked out by hand in each test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.tracking import (
    LandmarkSmoother,
    OneEuroFilter,
    TrackConfig,
    box_from,
    box_relation,
    iou,
)


def test_one_euro_at_rest_is_an_exponential_filter():
    """beta = 0: a plain low-pass with a = 1 / (1 + 1 / (2 pi fc dt)); a unit step after the
    first sample climbs as 1 - (1 - a)^k."""
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    dt = 1 / 30
    a = 1 / (1 + 1 / (2 * math.pi * 1.0 * dt))
    assert f(np.zeros(2), dt) == pytest.approx([0, 0])
    got = [f(np.ones(2), dt)[0] for _ in range(5)]
    assert got == pytest.approx([1 - (1 - a) ** k for k in range(1, 6)])


def test_one_euro_quiets_noise_and_follows_motion():
    rng = np.random.default_rng(0)
    t = np.arange(300) / 30
    noise = rng.normal(0, 1, t.size)
    f = OneEuroFilter(min_cutoff=0.3, beta=0.0)
    still = np.array([f(np.array([x]), 1 / 30)[0] for x in noise])
    assert np.std(np.diff(still[30:])) < 0.1 * np.std(np.diff(noise))
    # A ramp of 10 units/s: the speed term raises the cutoff, so the lag shrinks with beta.
    lags = []
    for beta in (0.0, 1.0):
        f = OneEuroFilter(min_cutoff=0.3, beta=beta)
        out = [f(np.array([10 * x]), 1 / 30)[0] for x in t]
        lags.append(10 * t[-1] - out[-1])
    assert lags[1] < 0.2 * lags[0]


def _face(angle: float = 0.2, scale: float = 40.0, shift=(300.0, 200.0)) -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, (68, 2))
    r = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return base @ r.T * scale + shift


def test_smoother_splits_a_similarity_motion_into_the_rigid_part():
    first = _face(0.0, 40.0, (300, 200))
    s = LandmarkSmoother(first, TrackConfig())
    moved = _face(0.1, 44.0, (310, 195))  # the same shape turned, scaled and moved
    rigid, residual = s.split(moved)
    assert np.abs(residual).max() < 1e-9
    assert math.atan2(rigid[3], rigid[2]) == pytest.approx(0.1)
    assert math.hypot(rigid[2], rigid[3]) == pytest.approx(1.1)
    assert s.join(rigid, residual) == pytest.approx(moved)


def test_box_relation_round_trip_and_iou():
    lm = _face()
    box = np.array([250.0, 150.0, 350.0, 260.0])
    assert box_from(box_relation(box, lm), lm) == pytest.approx(box)
    moved = lm + [20.0, -10.0]
    assert box_from(box_relation(box, lm), moved) == pytest.approx(box + [20, -10, 20, -10])
    assert iou(box, box) == pytest.approx(1.0)
    assert iou(box, box + [50, 0, 50, 0]) == pytest.approx(50 * 110 / (2 * 100 * 110 - 50 * 110))
    assert iou(box, box + [200, 0, 200, 0]) == 0.0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        TrackConfig(detect_every=0)
    with pytest.raises(ValueError):
        TrackConfig(min_cutoff=0)


def test_gray_on_demand_is_the_whole_frames_gray():
    """The tracker converts only the patches it reads between detections: any slice equals the
    same slice of the whole frame's gray (faces.image.to_gray, Pillow's L, pixel by pixel)."""
    from export.tracking import GrayOnDemand
    from faces.image import to_gray

    rgb = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    full = to_gray(rgb)
    lazy = GrayOnDemand(rgb)
    assert lazy.shape == full.shape
    for index in [
        (slice(3, 20), slice(5, 40)),
        (slice(None, None, 8), slice(None, None, 8)),
        (slice(30, 37), slice(0, 53)),
    ]:
        assert np.array_equal(lazy[index], full[index])
