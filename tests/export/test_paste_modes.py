"""toon-infer's ``--paste-mask`` and toon-serve's paste: both blend through the person mask by
default (issue 15), and ``--paste-mask square`` keeps the old whole-square paste."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from export.infer_cli import build_parser
from export.infer_cli import main as infer_main
from export.serve_api import ToonifyOptions
from export.serve_service import PASTE_MASK, ToonService
from faces.align import Aligner, align, paste_back
from tests.conftest import project_photo
from tests.export.test_export import model, student  # noqa: F401  (module fixtures)


def _scene() -> tuple[np.ndarray, list]:
    from demo.synthetic import item_params, render_photo_scene

    params, rng = item_params(12000, 3)
    photo, lm = render_photo_scene(params, (480, 360), rng=rng)
    return photo, [Aligner(size=64).warp(photo, lm)]


def test_serve_pastes_like_toon_infer():
    """The service's compose step gives exactly ``paste_back``'s default (person mask, change
    blend) paste, the one toon-infer uses unless told otherwise, and not the square's."""
    photo, faces = _scene()
    outputs = np.full((1, 64, 64, 3), (250, 40, 200), np.uint8)  # changes the whole crop
    args = build_parser().parse_args(["x.jpg"])
    assert PASTE_MASK == args.paste_mask == "person" and args.paste_blend == "change"
    out = ToonService._compose(None, photo, faces, outputs, ToonifyOptions(format="png"))
    served = np.asarray(Image.open(io.BytesIO(out["data"])).convert("RGB"))
    np.testing.assert_array_equal(served, paste_back(photo, faces, list(outputs)))
    square = paste_back(photo, faces, list(outputs), mode="square")
    assert np.abs(square.astype(int) - served.astype(int)).mean() > 1.0


def test_paste_mask_flag(model, tmp_path):  # noqa: F811
    """``--paste-mask square`` changes the corners of the face's square, the default (person)
    leaves them as they were; both replace the face."""
    photo = project_photo("one.jpg")
    outs = {}
    for mode in ("person", "square"):
        dst = tmp_path / f"{mode}.png"
        rc = infer_main(
            [str(photo), "-o", str(dst), "--paste-mask", mode, "--model", str(model)]
            + ["--device", "cpu"]
        )
        assert rc == 0
        outs[mode] = np.asarray(Image.open(dst).convert("RGB")).astype(int)
    src = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    face = align(src.astype(np.uint8), size=64)[0]
    corners = np.rint(face.to_photo(np.array([[6.0, 6.0], [57.0, 6.0]]))).astype(int)
    near = [(y, x) for x, y in corners if 0 <= y < src.shape[0] and 0 <= x < src.shape[1]]
    assert near
    for y, x in near:
        assert np.abs(outs["person"][y, x] - src[y, x]).max() <= 1
    assert max(np.abs(outs["square"][y, x] - src[y, x]).max() for y, x in near) > 4
    nose = np.rint(face.landmarks[30]).astype(int)
    assert np.abs(outs["person"][nose[1], nose[0]] - outs["square"][nose[1], nose[0]]).max() <= 2
