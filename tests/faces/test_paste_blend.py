"""``paste_back``'s blends: ``change`` (default) adds the model's change of its crop to the
photo, ``replace`` puts the output in its place."""

from __future__ import annotations

import numpy as np
import pytest

from faces.align import PASTE_BLENDS, align, paste_back


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skimage = pytest.importorskip("skimage", reason="scikit-image gives the astronaut photo")
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def faces(astronaut):
    """The astronaut's face aligned at 256 px (the face spans about 170 photo px: drawn
    larger in the crop than in the photo) and at 64 px (smaller in the crop)."""
    big, small = align(astronaut, size=256)[0], align(astronaut, size=64)[0]
    assert big.scale > 1 > small.scale  # crop px per photo px
    return {"crop_larger": big, "crop_smaller": small}


def test_an_unchanged_face_keeps_the_photo_exactly_with_change(astronaut, faces):
    """The model returns its input: ``change`` gives the photo back bit for bit, while
    ``replace`` pays the resampling to the crop and back (the loss ``change`` avoids)."""
    for face in faces.values():
        same = [face.crop[:, :, :3]]
        np.testing.assert_array_equal(
            paste_back(astronaut, [face], same, blend="change"), astronaut
        )
    face = faces["crop_larger"]
    replaced = paste_back(astronaut, [face], [face.crop[:, :, :3]], blend="replace")
    assert np.abs(replaced.astype(int) - astronaut).max() > 10


def test_change_adds_the_models_change(astronaut, faces):
    """An output 20 levels brighter than its crop: on the face, far inside the mask, the
    photo becomes 20 levels brighter (within rounding), its own detail kept."""
    face = faces["crop_larger"]
    crop = face.crop[:, :, :3].astype(int)
    out = np.clip(crop + 20, 0, 255).astype(np.uint8)
    got = paste_back(astronaut, [face], [out], blend="change").astype(int)
    # Nose, cheeks and eye corners: inside the person mask and the square's flat middle.
    for i in (30, 29, 2, 14, 36, 45):
        x, y = np.rint(face.landmarks[i]).astype(int)
        if (astronaut[y - 1 : y + 2, x - 1 : x + 2] > 230).any():
            continue  # near a clipped level
        assert np.abs(got[y, x] - astronaut[y, x].astype(int) - 20).max() <= 2, i


def test_change_is_the_default_and_keeps_a_large_faces_sharpness(astronaut, faces):
    """The default is ``change``. Where the face is larger in the photo than the 64 px
    output, a model that only brightens keeps the photo's detail: the result's high
    frequencies (photo minus its blur) match the photo's far better than ``replace``'s,
    which are those of the upsampled 64 px crop."""
    from PIL import Image, ImageFilter

    face = faces["crop_smaller"]
    out = [np.clip(face.crop[:, :, :3].astype(int) + 10, 0, 255).astype(np.uint8)]
    default = paste_back(astronaut, [face], out)
    np.testing.assert_array_equal(default, paste_back(astronaut, [face], out, blend="change"))
    replaced = paste_back(astronaut, [face], out, blend="replace")

    def detail(img: np.ndarray) -> np.ndarray:
        blur = Image.fromarray(img).filter(ImageFilter.GaussianBlur(3))
        return img.astype(float) - np.asarray(blur, dtype=float)

    x0, y0, x1, y1 = np.rint(face.box).astype(int)
    region = (slice(y0, y1), slice(x0, x1))
    want = detail(astronaut)[region]
    err_change = np.abs(detail(default)[region] - want).mean()
    err_replace = np.abs(detail(replaced)[region] - want).mean()
    assert err_change < 0.5 * err_replace, (err_change, err_replace)


def test_an_unknown_blend_is_refused(astronaut, faces):
    face = faces["crop_smaller"]
    with pytest.raises(ValueError, match="change, replace"):
        paste_back(astronaut, [face], [face.crop], blend="mix")
    assert PASTE_BLENDS[0] == "change"
