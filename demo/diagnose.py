"""Where the miniature loses: the chain measured stage by stage against the procedural truth.

``python -m demo.diagnose [--demo-out demo/out] [--faces 24] [--out demo/out/diagnosis.json]``

Every number is a distance to the ground truth (the same face drawn in the game style) divided by
the distance of the unchanged photo to it ("do nothing" = 1.0; lower is better), measured the way
a user meets the model: held-out procedural faces in cluttered scenes, through ``toon-infer``'s
path (dlib detection and landmarks, FFHQ crop, model, paste back with toon-infer's defaults), then
compared inside each face's landmark box grown by 10 %, shrunk to the number of crop pixels the
model gave that box (so a 32 px model is not judged against detail it never saw). Rows:

- **floor**: an identity model through the same path (what resampling and pasting alone cost:
  nothing since the paste adds the model's change, 1.09 when it replaced the face), with dlib's
  landmarks and with the exact ones;
- **landmarks**: dlib's 68 points against the renderer's exact points, in % of the eye distance,
  and what that moves the crop by, in crop pixels at the model's resolution;
- **oracle**: a student of the demo's architecture trained on the *true* (photo, game) pairs of
  other faces, exported and run through the same path: the ceiling of the method's last stage
  (for measurement only: no shipped model learns from true pairs);
- **teacher chain** (with ``--demo-out``, a finished ``make demo`` folder): projection fidelity,
  the blended teacher's distance to the truth at every swap level and in both directions, the
  student's fidelity to the teacher on renders against on aligned photos (the render-to-photo gap),
  and the demo's student through the user's path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from common.files import atomic_write_bytes, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
GROW = 0.10  # landmark box growth on each side, as a fraction of its side
SCENE_SEED = 9000  # held-out scenes (the demo's data uses 1000-7000)
ORACLE_SEED = 11000  # the oracle's training faces (disjoint from the held-out scenes)
# The demo student's generator output (``toon-student train --output``), which the oracle
# shares: the input plus the drawn change
STUDENT_OUTPUT = "residual"
# Half-life of the generator EMA (``toon-student train --ema-kimg``) of the demo student and the
# oracle: 2 kimg (5 % of the 40 kimg run), where the ``tiny`` preset keeps 0.2 for its short
# unit-test runs; measured in demo/README.md ("The student's average")
STUDENT_EMA_KIMG = 2.0

Model = Callable[[np.ndarray], np.ndarray]  # uint8 crops [N, S, S, 3] -> same


# ---------------------------------------------------------------------------------------------
# Held-out scenes and the comparison


def held_out_scenes(n: int, canvas: tuple[int, int] = (480, 360)) -> list[dict]:
    """``n`` scenes: the photo, its game-style truth (same clutter), the exact landmarks."""
    from demo.synthetic import item_params, render_photo_scene

    scenes = []
    for i in range(n):
        params, rng = item_params(SCENE_SEED, i)
        photo, lm = render_photo_scene(params, canvas, rng=rng)
        params, rng = item_params(SCENE_SEED, i)
        game, _ = render_photo_scene(params, canvas, rng=rng, style="game")
        scenes.append({"photo": photo, "game": game, "landmarks": lm, "params": params})
    return scenes


def landmark_box(lm: np.ndarray, grow: float = GROW) -> tuple[int, int, int, int]:
    """The square around the 68 landmarks, grown by ``grow`` of its side on each side."""
    lo, hi = lm.min(0), lm.max(0)
    c, side = (lo + hi) / 2, float((hi - lo).max()) * (1 + 2 * grow)
    x0, y0 = np.floor(c - side / 2).astype(int)
    s = int(np.ceil(side))
    return int(x0), int(y0), int(x0) + s, int(y0) + s


def box_l1(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int], res: int) -> float:
    """Mean absolute difference (0..1) of two images inside ``box``, both shrunk to res x res."""

    def cut(img: np.ndarray) -> np.ndarray:
        im = Image.fromarray(img[..., :3]).crop(box).resize((res, res), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.float64) / 255

    return float(np.mean(np.abs(cut(a) - cut(b))))


def compare_res(scene: dict, size: int) -> int:
    """The landmark box's side in crop pixels of a ``size`` model: the resolution at which the
    model actually sees the face (a 32 px crop shows the landmark box at about 20 px)."""
    from faces.warp import ffhq_quad, quad_size

    x0, _, x1, _ = landmark_box(scene["landmarks"])
    crop_px_per_photo_px = size / quad_size(ffhq_quad(scene["landmarks"]))
    return max(8, round((x1 - x0) * crop_px_per_photo_px))


def through_infer_path(model: Model, scene: dict, size: int, exact: bool = False):
    """``toon-infer``'s paste mode on one scene: detect (or take the exact landmarks), align at
    ``size``, run ``model``, paste back. None when no face is found."""
    from faces.align import align, paste_back

    kw = {"size": size, "max_faces": 1}
    faces = align(scene["photo"], landmarks=[scene["landmarks"]] if exact else None, **kw)
    if not faces:
        return None
    crops = np.stack([f.crop[..., :3] for f in faces])
    return paste_back(scene["photo"], faces, list(model(crops)))[..., :3]


def score(model: Model, scenes: list[dict], size: int, **kw) -> dict:
    """Distance to the truth through the user's path, against doing nothing, per face."""
    ratios, wins, missed = [], 0, 0
    l1s, nothing = [], []
    for sc in scenes:
        out = through_infer_path(model, sc, size, **kw)
        if out is None:
            missed += 1
            continue
        box, res = landmark_box(sc["landmarks"]), compare_res(sc, size)
        d, d0 = box_l1(out, sc["game"], box, res), box_l1(sc["photo"], sc["game"], box, res)
        l1s.append(d)
        nothing.append(d0)
        ratios.append(d / d0)
        wins += d < d0
    return {
        "l1": round(float(np.mean(l1s)), 5),
        "l1_nothing": round(float(np.mean(nothing)), 5),
        "ratio": round(float(np.mean(l1s) / np.mean(nothing)), 4),
        "better_than_nothing": f"{wins}/{len(l1s)}",
        "no_face": missed,
    }


# ---------------------------------------------------------------------------------------------
# Landmarks


def landmark_error(scenes: list[dict], size: int) -> dict:
    """dlib's landmarks and crops against the exact ones."""
    from faces.align import align

    errs, quad_px, missed = [], [], 0
    for sc in scenes:
        found = align(sc["photo"], size=size, max_faces=1)
        if not found:
            missed += 1
            continue
        exact = align(sc["photo"], size=size, max_faces=1, landmarks=[sc["landmarks"]])[0]
        lm, ref = found[0].landmarks, sc["landmarks"]
        eyes = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
        errs.append(float(np.linalg.norm(lm - ref, axis=1).mean() / eyes * 100))
        # where the exact landmarks land in dlib's crop, against where they land in the exact crop
        quad_px.append(
            float(np.linalg.norm(found[0].to_crop(ref) - exact.to_crop(ref), axis=1).mean())
        )
    return {
        "mean_error_pct_eye_distance": round(float(np.mean(errs)), 2),
        "max_error_pct_eye_distance": round(float(np.max(errs)), 2),
        "crop_offset_px_at_model_res": round(float(np.mean(quad_px)), 3),
        "no_face": missed,
    }


# ---------------------------------------------------------------------------------------------
# The oracle student


def write_pairs_folder(folder: Path, src: np.ndarray, dst: np.ndarray, shard: int = 500) -> Path:
    """A pairs dataset from uint8 arrays [N, S, S, 3], written with the shard format's own
    writer (``pairs.shards.ShardWriter``) and manifest builder."""
    from pairs.shards import (
        FORMAT,
        FORMAT_VERSION,
        MANIFEST_NAME,
        ShardWriter,
        encode_png,
        manifest_bytes,
        pair_key,
    )

    folder.mkdir(parents=True, exist_ok=True)
    n = len(src)
    static = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "resolution": int(src.shape[1]),
        "count": n,
        "shard_size": shard,
        "num_shards": -(-n // shard),
        "config": {"kind": "oracle: true (photo, game) pairs, for measurement only"},
        "teachers": {},
    }
    entries = []
    for i, start in enumerate(range(0, n, shard)):
        writer = ShardWriter(folder, i)
        stop = min(start + shard, n)
        for k in range(start, stop):
            meta = json.dumps({"k": k, "kind": "oracle"}).encode()
            members = {"src.png": encode_png(src[k]), "dst.png": encode_png(dst[k]), "json": meta}
            writer.add(pair_key(k), members)
        sha, size = writer.commit()
        entries.append(
            {"name": writer.final.name, "index": i, "first": start, "count": stop - start,
             "sha256": sha, "bytes": size}
        )  # fmt: skip
    atomic_write_bytes(folder / MANIFEST_NAME, manifest_bytes(static, entries))
    return folder


def train_oracle(
    work: Path,
    size: int,
    count: int,
    kimg: float,
    preset: str,
    output: str = STUDENT_OUTPUT,
    ema_kimg: float = STUDENT_EMA_KIMG,
) -> Path:
    """Train a student of ``preset`` (generator ``output``, EMA half-life ``ema_kimg``) on
    ``count`` true aligned pairs, as the demo trains its student; returns its ONNX file."""
    from demo.synthetic import item_params, render
    from export.cli import main as export_main
    from student.cli import main as student_main

    src = np.zeros([count, size, size, 3], np.uint8)
    dst = np.zeros_like(src)
    for i in range(count):
        params, rng = item_params(ORACLE_SEED, i)
        src[i] = render(params, "photo", size, rng)
        params, rng = item_params(ORACLE_SEED, i)
        dst[i] = render(params, "game", size, rng)
    pairs = write_pairs_folder(work / "oracle-pairs", src, dst)
    run = work / "oracle-student"
    argv = ["train", "--preset", preset, "--pairs", str(pairs), "--outdir", str(run)]
    argv += ["--kimg", str(kimg), "--tick-kimg", str(max(kimg / 4, 0.1)), "--snap", "1000"]
    argv += ["--workers", "0", "--output", output, "--ema-kimg", str(ema_kimg)]
    if student_main(argv) != 0:
        raise SystemExit("diagnose: oracle training failed")
    onnx = work / "oracle.onnx"
    argv = ["onnx", "--student", str(run / "student.safetensors"), "--out", str(onnx)]
    if export_main(argv) != 0:
        raise SystemExit("diagnose: oracle export failed")
    return onnx


def onnx_model(path: Path) -> Model:
    from export.runtime import Toonifier

    toon = Toonifier(path, device="cpu")
    return toon.run


# ---------------------------------------------------------------------------------------------
# The teacher chain (needs a finished demo folder)


def judge(judges, images: np.ndarray, params: list) -> dict:
    """The offline judges (demo/judges.py) on aligned outputs: the share called game-style, and
    the identity error (non-style parameters read back) against the error on the true game
    renders of the same faces (these are aligned renders, framed like the truth)."""
    from demo.judges import game_truth_error

    err, ref = judges.param_error(images, params), game_truth_error(judges, params)
    return {
        "called_game": round(float(np.mean(judges.style_score(images) > 0.5)), 3),
        "param_error": round(float(err.mean()), 4),
        "param_error_over_truth": round(float(err.mean() / ref.mean()), 3),
    }


def teacher_chain(demo_out: Path, size: int, oracle: Model | None = None) -> dict:
    """Projection, blend levels (both directions), student fidelity on renders vs photos."""
    import torch

    from demo.run import SCALES, base_checkpoint, heldout_face
    from teacher import load_generator
    from teacher.blend import blend_generators

    scale = SCALES["demo"]
    base = load_generator(base_checkpoint(scale))
    finetuned = load_generator(sorted((demo_out / "finetune").glob("network-*.safetensors"))[-1])
    proj = np.load(demo_out / "projection" / "projected_w.npz")
    names = [str(n) for n in proj["names"]]
    truth, face_params = {}, {}
    for i in range(scale.heldout):
        params, photo, game = heldout_face(i, size)
        truth[f"face{i:02d}"] = (photo, game)
        face_params[f"face{i:02d}"] = params
    keep = [k for k, n in enumerate(names) if Path(n).stem in truth]
    photos = np.stack([truth[Path(names[k]).stem][0] for k in keep])
    games = np.stack([truth[Path(names[k]).stem][1] for k in keep])
    w = torch.from_numpy(proj["w"][keep])
    params = [face_params[Path(names[k]).stem] for k in keep]

    def render_u8(G, ws) -> np.ndarray:
        with torch.no_grad():
            img = G.synthesis(ws, noise_mode="const", force_fp32=True)
        return ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

    def l1(a, b) -> float:
        return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))) / 255)

    nothing = l1(photos, games)
    recon = render_u8(base, w)
    mse = np.mean((recon.astype(np.float64) - photos) ** 2)
    out: dict = {
        "faces": len(keep),
        "do_nothing_l1": round(nothing, 5),
        "projection": {
            "psnr_db": round(float(10 * np.log10(255**2 / mse)), 2),
            "reconstruction_to_truth_ratio": round(l1(recon, games) / nothing, 4),
            "finetuned_render_to_truth_ratio": round(
                l1(render_u8(finetuned, w), games) / nothing, 4
            ),
        },
    }
    levels = [2**i for i in range(2, int(np.log2(size)) + 1)]
    sweeps = {}
    for direction, (low, high) in {
        "coarse_from_base_fine_from_finetuned": (base, finetuned),
        "coarse_from_finetuned_fine_from_base": (finetuned, base),
    }.items():
        row = {}
        for r in [0, *levels]:
            G = blend_generators(low, high, swap_res=r, mapping_from="low")
            row[str(r)] = round(l1(render_u8(G, w), games) / nothing, 4)
        sweeps[direction] = row
    out["blend_levels_ratio_to_truth"] = sweeps
    onnx = demo_out / "toon.onnx"
    if onnx.exists():
        student = onnx_model(onnx)
        blended = load_generator(demo_out / "blended.safetensors")
        teacher_out = render_u8(blended, w)
        out["student_vs_teacher"] = {
            "on_base_renders_l1": round(l1(student(recon), render_u8(blended, w)), 5),
            "on_aligned_photos_l1": round(l1(student(photos), teacher_out), 5),
            "student_on_photos_ratio_to_truth": round(l1(student(photos), games) / nothing, 4),
            "teacher_path_ratio_to_truth": round(l1(teacher_out, games) / nothing, 4),
        }
        judges_file = REPO / "demo" / "assets" / f"judges{size}.safetensors"
        if judges_file.exists():
            from demo.judges import load_judges

            judges = load_judges(judges_file)
            out["judges_on_aligned_faces"] = {
                "do_nothing_photo": judge(judges, photos, params),
                "teacher_path": judge(judges, teacher_out, params),
                "student": judge(judges, student(photos), params),
                "truth": judge(judges, games, params),
            }
            if oracle is not None:
                out["judges_on_aligned_faces"]["oracle"] = judge(judges, oracle(photos), params)
    if oracle is not None:
        out["oracle_on_aligned_photos_ratio_to_truth"] = round(
            l1(oracle(photos), games) / nothing, 4
        )
    return out


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--faces", type=int, default=24, help="held-out scenes (default 24)")
    ap.add_argument("--size", type=int, default=32, help="model resolution (default 32)")
    ap.add_argument("--demo-out", default=None, help="a finished demo folder (teacher chain)")
    ap.add_argument("--oracle-pairs", type=int, default=4000, help="oracle training pairs")
    ap.add_argument("--oracle-kimg", type=float, default=20.0, help="oracle training length")
    ap.add_argument("--oracle-preset", default="tiny", help="student preset (default tiny)")
    ap.add_argument(
        "--oracle-output", default=STUDENT_OUTPUT, help=f"generator output ({STUDENT_OUTPUT})"
    )
    ap.add_argument("--no-oracle", action="store_true", help="skip the oracle")
    ap.add_argument("--work", default="demo/out/diagnose", help="scratch folder")
    ap.add_argument("--out", default="demo/out/diagnosis.json", help="JSON report")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    scenes = held_out_scenes(args.faces)
    report: dict = {"faces": args.faces, "size": args.size}

    def identity(crops: np.ndarray) -> np.ndarray:
        return crops

    report["floor_identity"] = {
        "dlib_landmarks": score(identity, scenes, args.size),
        "exact_landmarks": score(identity, scenes, args.size, exact=True),
    }
    print(json.dumps(report["floor_identity"], indent=1), flush=True)
    report["landmarks"] = landmark_error(scenes, args.size)
    print(json.dumps(report["landmarks"], indent=1), flush=True)
    oracle = None
    if not args.no_oracle:
        t = time.time()
        oracle = onnx_model(
            train_oracle(
                work,
                args.size,
                args.oracle_pairs,
                args.oracle_kimg,
                args.oracle_preset,
                args.oracle_output,
            )
        )
        report["oracle"] = {
            "dlib_landmarks": score(oracle, scenes, args.size),
            "exact_landmarks": score(oracle, scenes, args.size, exact=True),
            "pairs": args.oracle_pairs,
            "kimg": args.oracle_kimg,
            "preset": args.oracle_preset,
            "output": args.oracle_output,
            "train_s": round(time.time() - t, 1),
        }
        print(json.dumps(report["oracle"], indent=1), flush=True)
    if args.demo_out:
        demo_out = Path(args.demo_out)
        onnx = demo_out / "toon.onnx"
        if onnx.exists():
            report["demo_student"] = score(onnx_model(onnx), scenes, args.size)
        report["teacher_chain"] = teacher_chain(demo_out, args.size, oracle)
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
