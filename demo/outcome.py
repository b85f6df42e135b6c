"""The miniature's measured outcome: does the distilled student toonify faces it never saw?

Held-out procedural faces in cluttered scenes go through ``toon-infer``'s path (dlib detection
and landmarks, FFHQ crop at the model's resolution, model, paste of the model's change through
the person mask: toon-infer's defaults), and the result is
compared with the same scene drawn in the game style, inside the face's landmark box shrunk to
the pixels the model gave it (:mod:`demo.diagnose` holds that comparison). Reported per model:

- L1 to the truth against doing nothing (the unchanged photo), per face and in the mean, and
  inside two regions the renderer knows from its exact landmarks: the eyes and the face outline;
- the **share of the gap closed**, ``(L_nothing - L_model) / (L_nothing - L_oracle)``, where the
  oracle is a student of the same architecture trained on *true* pairs of other faces (a
  measuring instrument: no shipped model learns from true pairs);
- the offline judges (:mod:`demo.judges`) on the model's aligned output crops: the share called
  game-style and the identity error over the error on the *truth cut the same way*: the game
  scene cropped with the photo's own dlib alignment, which is what a perfect toonifier would
  output for that crop. The error over the exact, canonically framed game render is reported
  beside it (``param_error_over_render``); it also charges the model for dlib's landmark error
  and the scene's framing, which no toonifier can undo (the truth cut the same way already
  scores about 1.3 there).

The alignment of every scene is computed once and shared by all models, so they are compared on
exactly the same crops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from demo.diagnose import (
    REPO,
    STUDENT_EMA_KIMG,
    STUDENT_OUTPUT,
    Model,
    compare_res,
    held_out_scenes,
    landmark_box,
)

EYES = (slice(36, 42), slice(42, 48))
JAW = slice(0, 17)


@dataclass
class Scene:
    """One held-out scene with what every model shares: aligned faces, box, regions."""

    photo: np.ndarray
    game: np.ndarray
    params: object
    faces: list  # faces.align.AlignedFace (empty: dlib found no face)
    truth_crop: np.ndarray | None  # the game scene cut with the photo's alignment (uint8 [S,S,3])
    box: tuple[int, int, int, int]
    res: int
    regions: dict[str, np.ndarray]  # bool [res, res] masks inside the box


def region_masks(lm: np.ndarray, box: tuple[int, int, int, int], res: int) -> dict[str, np.ndarray]:
    """Eye and outline masks at the comparison resolution, from the exact landmarks: each eye's
    six points grown to an ellipse 1.6x their extent, and a band along the jaw line about a
    twelfth of the face width wide. Drawn at 8x the comparison resolution, then reduced."""
    x0, y0, x1, y1 = box
    k = 8 * res / (x1 - x0)

    def to_px(p: np.ndarray) -> list[tuple[float, float]]:
        return [((x - x0) * k, (y - y0) * k) for x, y in p]

    size = (8 * res, 8 * res)
    eyes = Image.new("L", size, 0)
    draw = ImageDraw.Draw(eyes)
    for sl in EYES:
        pts = np.asarray(to_px(lm[sl]))
        c, half = pts.mean(0), (pts.max(0) - pts.min(0)) / 2 * 1.6 + 2
        draw.ellipse([c[0] - half[0], c[1] - half[1], c[0] + half[0], c[1] + half[1]], fill=255)
    outline = Image.new("L", size, 0)
    width = max(2, round((lm[16, 0] - lm[0, 0]) * k / 12))
    ImageDraw.Draw(outline).line(to_px(lm[JAW]), fill=255, width=width, joint="curve")

    def reduce(m: Image.Image) -> np.ndarray:
        return np.asarray(m.resize((res, res), Image.Resampling.BOX)) >= 128

    return {"eyes": reduce(eyes), "outline": reduce(outline)}


def prepare(n: int, size: int) -> list[Scene]:
    """``n`` held-out scenes (the diagnosis's seeds), aligned once with dlib as toon-infer does."""
    from faces.align import align

    out = []
    for sc in held_out_scenes(n):
        box = landmark_box(sc["landmarks"])
        res = compare_res(sc, size)
        found = align(sc["photo"], size=size, max_faces=1)
        truth = None
        if found:  # the same crop of the game scene: the photo's landmarks given by hand
            truth = align(sc["game"], size=size, landmarks=[found[0].landmarks])[0].crop[..., :3]
        out.append(
            Scene(
                photo=sc["photo"],
                game=sc["game"],
                params=sc["params"],
                faces=found,
                truth_crop=truth,
                box=box,
                res=res,
                regions=region_masks(sc["landmarks"], box, res),
            )
        )
    return out


def _cut(img: np.ndarray, box: tuple[int, int, int, int], res: int) -> np.ndarray:
    im = Image.fromarray(img[..., :3]).crop(box).resize((res, res), Image.Resampling.BOX)
    return np.asarray(im, dtype=np.float64) / 255


def run_model(model: Model, scenes: list[Scene]) -> tuple[list, np.ndarray]:
    """The pasted result of every scene (None where no face was found) and the model's aligned
    output crops [N_found, S, S, 3]."""
    from faces.align import paste_back

    pasted, crops = [], []
    for sc in scenes:
        if not sc.faces:
            pasted.append(None)
            continue
        out = model(np.stack([f.crop[..., :3] for f in sc.faces]))
        crops.append(out[0])
        pasted.append(paste_back(sc.photo, sc.faces, list(out))[..., :3])
    return pasted, np.stack(crops) if crops else np.zeros([0, 1, 1, 3], np.uint8)


def distances(pasted: list, scenes: list[Scene]) -> dict[str, np.ndarray]:
    """Per-face L1 to the truth (mean, eyes, outline) for a model's results and for doing
    nothing; faces without a detection are left out of both."""
    rows: dict[str, list[float]] = {}
    for out, sc in zip(pasted, scenes, strict=True):
        if out is None:
            continue
        truth = _cut(sc.game, sc.box, sc.res)
        for who, img in (("model", out), ("nothing", sc.photo)):
            diff = np.abs(_cut(img, sc.box, sc.res) - truth).mean(-1)
            rows.setdefault(f"{who}_mean", []).append(float(diff.mean()))
            for name, m in sc.regions.items():
                rows.setdefault(f"{who}_{name}", []).append(float(diff[m].mean()))
    return {k: np.asarray(v) for k, v in rows.items()}


def summarize(d: dict[str, np.ndarray]) -> dict:
    """Ratios to doing nothing (of the means over faces) and the win count."""
    out = {
        "l1": round(float(d["model_mean"].mean()), 5),
        "l1_nothing": round(float(d["nothing_mean"].mean()), 5),
        "ratio": round(float(d["model_mean"].mean() / d["nothing_mean"].mean()), 4),
        "better_than_nothing": int(np.sum(d["model_mean"] < d["nothing_mean"])),
        "faces": int(len(d["model_mean"])),
    }
    for region in ("eyes", "outline"):
        out[f"{region}_ratio"] = round(
            float(d[f"model_{region}"].mean() / d[f"nothing_{region}"].mean()), 4
        )
    return out


def gap_closed(model: dict, oracle: dict) -> float:
    """``(L_nothing - L_model) / (L_nothing - L_oracle)``, all through the same pipe."""
    return round((model["l1_nothing"] - model["l1"]) / (model["l1_nothing"] - oracle["l1"]), 3)


def truth_crops(scenes: list[Scene]) -> np.ndarray:
    """The truth cut like the model's input, for the faces that were found: uint8 [N, S, S, 3]."""
    return np.stack([sc.truth_crop for sc in scenes if sc.faces])


def truth_model(scenes: list[Scene]) -> Model:
    """A perfect toonifier for one pass of :func:`run_model` over ``scenes``: it returns each
    found face's truth crop in turn (the ceiling of the pipe: paste and comparison cost only)."""
    it = iter([sc.truth_crop for sc in scenes if sc.faces])
    return lambda crops: next(it)[None]


def judge_crops(judges, crops: np.ndarray, scenes: list[Scene]) -> dict:
    """The judges on aligned output crops of the faces that were found: the share called
    game-style, and the identity error over the error on the truth cut the same way
    (``param_error_over_truth``, the goal's measure) and over the exact game render
    (``param_error_over_render``)."""
    from demo.judges import game_truth_error

    params = [sc.params for sc in scenes if sc.faces]
    err = judges.param_error(crops, params).mean()
    same_crop = judges.param_error(truth_crops(scenes), params).mean()
    render = game_truth_error(judges, params).mean()
    return {
        "called_game": round(float(np.mean(judges.style_score(crops) > 0.5)), 3),
        "param_error_over_truth": round(float(err / same_crop), 3),
        "param_error_over_render": round(float(err / render), 3),
    }


def measure(models: dict[str, Model], scenes: list[Scene], judges=None) -> dict:
    """:func:`summarize` (and the judges, when given) for every model and for ``truth``, a
    perfect toonifier (:func:`truth_model`); the share of the gap closed for every model when
    one of them is called ``oracle``."""
    report = {}
    models = {**models, "truth": truth_model(scenes)} if "truth" not in models else models
    for name, model in models.items():
        pasted, crops = run_model(model, scenes)
        row = summarize(distances(pasted, scenes))
        if judges is not None and len(crops):
            row["judges"] = judge_crops(judges, crops, scenes)
        report[name] = row
    if "oracle" in report:
        for name, row in report.items():
            if name != "oracle":
                row["gap_closed"] = gap_closed(row, report["oracle"])
    return report


def spread(rows: list[dict], keys: tuple[str, ...]) -> dict:
    """Mean, min and max over training seeds of the given figures."""
    out = {}
    for k in keys:
        v = np.asarray([r[k] for r in rows], dtype=np.float64)
        out[k] = {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
                  "max": round(float(v.max()), 4)}  # fmt: skip
    return out


GOALS = {
    "gap_closed_at_least": 0.5,
    "better_than_nothing_at_least": 20 / 24,  # share of the faces
    "stretch_ratio_at_most": 0.70,
    "called_game_at_least": 0.9,
    "param_error_over_truth_at_most": 1.5,
}


def oracle_asset(size: int) -> Path:
    """Where the shipped oracle of a resolution lives (``python -m demo.outcome oracle``)."""
    return REPO / "demo" / "assets" / f"oracle{size}.onnx"


def demo_outcome(
    work: Path,
    size: int,
    faces: int,
    students: dict[int, Path],
    oracle_pairs: int,
    oracle_kimg: float,
    judges_file: Path | None,
    oracle_file: Path | None = None,
) -> dict:
    """The outcome of one demo run: every seed's exported student, the oracle and the identity
    model on ``faces`` held-out scenes; the spread over seeds and which goals are met. The oracle
    is ``oracle_file`` when given (the shipped asset), else trained here on ``oracle_pairs`` true
    pairs of other faces for ``oracle_kimg``."""
    from demo.diagnose import onnx_model, train_oracle

    t = time.time()
    if oracle_file is None:
        oracle_file = train_oracle(work, size, oracle_pairs, oracle_kimg, "tiny")
    oracle = onnx_model(oracle_file)
    oracle_s = time.time() - t
    judges = None
    if judges_file is not None and judges_file.exists():
        from demo.judges import load_judges

        judges = load_judges(judges_file)
    models: dict[str, Model] = {"oracle": oracle, "identity": lambda crops: crops}
    for seed, onnx in sorted(students.items()):
        models[f"student_seed{seed}"] = onnx_model(onnx)
    rows = measure(models, prepare(faces, size), judges)
    seeds = [rows[f"student_seed{s}"] for s in sorted(students)]
    keys = ("ratio", "gap_closed", "better_than_nothing", "eyes_ratio", "outline_ratio")
    report: dict = {"faces": faces, "seeds": sorted(students), "models": rows}
    report["students"] = spread(seeds, keys)
    if judges is not None:
        report["students"].update(
            spread(
                [r["judges"] for r in seeds],
                ("called_game", "param_error_over_truth", "param_error_over_render"),
            )
        )
    report["goals"] = GOALS
    report["met"] = goals_met(report["students"], faces)
    report["oracle"] = {"file": str(oracle_file), "seconds": round(oracle_s, 1)}
    return report


def goals_met(students: dict, faces: int) -> dict[str, bool]:
    """Which goals the mean over seeds meets (:data:`GOALS`; judges only when measured)."""
    met = {
        "gap_closed": students["gap_closed"]["mean"] >= GOALS["gap_closed_at_least"],
        "better_than_nothing": students["better_than_nothing"]["mean"]
        >= GOALS["better_than_nothing_at_least"] * faces,
        "stretch_ratio": students["ratio"]["mean"] <= GOALS["stretch_ratio_at_most"],
        "eyes_improve": students["eyes_ratio"]["mean"] < 1.0,
        "outline_improves": students["outline_ratio"]["mean"] < 1.0,
    }
    if "called_game" in students:
        met["called_game"] = students["called_game"]["mean"] >= GOALS["called_game_at_least"]
        met["identity_kept"] = (
            students["param_error_over_truth"]["mean"] <= GOALS["param_error_over_truth_at_most"]
        )
    return met


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.outcome oracle --size 32 --out demo/assets/oracle32.onnx``: train the
    oracle (the demo student's architecture on true pairs of other faces; for measurement only)
    and write its ONNX file."""
    import argparse
    import shutil
    import tempfile

    ap = argparse.ArgumentParser(description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    po = sub.add_parser("oracle", help="train the oracle and write its ONNX file")
    po.add_argument("--size", type=int, default=32)
    po.add_argument("--pairs", type=int, default=4000, help="true pairs (default 4000)")
    po.add_argument("--kimg", type=float, default=20.0, help="training length (default 20)")
    po.add_argument(
        "--output", default=STUDENT_OUTPUT, help=f"generator output (default {STUDENT_OUTPUT})"
    )
    po.add_argument(
        "--ema-kimg",
        type=float,
        default=STUDENT_EMA_KIMG,
        help=f"generator EMA half-life (default {STUDENT_EMA_KIMG}, the demo student's)",
    )
    po.add_argument("--out", required=True, help="ONNX file to write")
    args = ap.parse_args(argv)
    from demo.diagnose import train_oracle

    with tempfile.TemporaryDirectory() as work:
        onnx = train_oracle(
            Path(work), args.size, args.pairs, args.kimg, "tiny", args.output, args.ema_kimg
        )
        shutil.copyfile(onnx, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
