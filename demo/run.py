"""The whole pipeline at toy size on the CPU: ``make demo`` (or ``python -m demo.run``).

Stages (each uses the project's own commands; outputs under ``--out``, default ``demo/out``):

1. base teacher: ``demo/assets/base32.safetensors``, a 32 px StyleGAN2 trained from scratch on
   procedural photo-style faces by this project's ``toon-teacher finetune`` (command in
   ``demo/README.md``);
2. ADA fine-tuning on 2000 procedural game-style faces that keeps the base's mapping network and
   its blocks up to 8 px (``--freezeg 8 --freeze-mapping``), so a w keeps drawing the same face
   (a structure loss instead, ``Scale.structure_weight``, measured worse: demo/README.md);
3. blending (layer swapping) at the level and direction ``toon-teacher blend-search`` recommends
   with the offline judges (``demo/judges.py``) as its style and identity networks, and the
   blend grid over levels;
4. projection of held-out photo-style faces into the base (W+);
5. pair generation: synthetic pairs from random latents, and projected pairs from the photos
   (and encoded ones: their codes from the shipped inversion encoder, ``python -m
   demo.inversion`` measures it);
6. student training on the synthetic pairs;
7. ONNX export and verification;
8. ``toon-infer`` on held-out synthetic photos (in scenes) and on real photos, pasted back;
9. the outcome (:mod:`demo.outcome`): students of three seeds and an oracle (the same student
   trained on true pairs of other faces, a measuring instrument) through ``toon-infer``'s path on
   24 held-out scenes, against the procedural truth.

It ends with ``summary.json`` and ``contact_sheet.png``: where every artifact is, the student's
fidelity to the teacher on held-out pairs, the distance of the student's and the teacher path's
outputs to the procedural ground truth (the same face drawn in the game style), and the speed of
the student's single pass against the teacher's project-and-render path on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scale:
    """Sizes of one demo run."""

    name: str
    size: int
    game_faces: int
    finetune_kimg: float
    finetune_tick: float
    freezed: int
    swap_res: int
    heldout: int
    project_steps: int
    pairs: int
    student_kimg: float
    student_tick: float
    scenes: int
    search_seeds: str  # seeds blend-search renders at every level
    freezeg: int  # fine-tuning keeps the base's blocks up to this resolution (and its mapping)
    student_seeds: int  # students trained (seeds 0..n-1) for the spread of the outcome
    outcome_faces: int  # held-out scenes of the outcome measurement
    oracle_pairs: int  # true pairs of the oracle (a measuring instrument, never shipped)
    oracle_kimg: float
    structure_weight: float = 0.0  # fine-tuning's structure loss against the base (0: off)
    structure_res: int = 8  # ... comparing renders downsampled to 4 .. this
    photo_pairs: int = 2000  # real-photo pairs (encoder codes, delta targets) beside the z pairs
    search_photos: int = 500  # photos blend-search scores the blends on


SCALES = {
    "demo": Scale(
        "demo", 32, 2000, 20.0, 4.0, 0, 8, 8, 400, 4000, 40.0, 8.0, 4, "0-63", 8, 1, 24, 4000, 20.0
    ),
    "full": Scale(
        "full", 32, 2000, 20.0, 4.0, 0, 8, 8, 400, 4000, 40.0, 8.0, 4, "0-63", 8, 3, 24, 4000, 20.0
    ),
    "smoke": Scale(
        "smoke",
        32,
        64,
        0.128,
        0.064,
        2,
        8,
        2,
        50,
        512,
        2.4,
        0.8,
        1,
        "0-15",
        0,
        1,
        4,
        256,
        0.4,
        photo_pairs=128,
        search_photos=32,
    ),
}


HELDOUT_SEED = 5000  # held-out photo-style faces (stage 4 projects the first of them)
PAIR_PHOTOS_SEED = 3000  # photo-style inputs of the real-photo pairs (their truth is never drawn)
SEARCH_PHOTOS_SEED = 3500  # photo-style inputs blend-search scores the blends on
ENCODER = REPO / "demo" / "assets" / "encoder32.safetensors"


def heldout_face(i: int, size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """``(params, photo, game-style truth)`` of held-out face ``i`` (no jitter)."""
    from demo.synthetic import item_params, render

    params, rng = item_params(HELDOUT_SEED, i)
    params = params.without_jitter()
    photo = render(params, "photo", size, rng)
    return params, photo, render(params, "game", size, rng)


def log(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run(prog: str, main, argv: list[str]) -> None:
    """Run one of the project's CLIs in-process and stop the demo if it fails."""
    print(f"$ {prog} {' '.join(argv)}", flush=True)
    rc = main(argv)
    if rc not in (0, None):
        raise SystemExit(f"demo: {prog} failed with exit status {rc}")


def shared_dir() -> Path:
    return Path(os.environ.get("TOON_SHARED", REPO.parent / "shared"))


def base_checkpoint(scale: Scale) -> Path:
    path = REPO / "demo" / "assets" / "base32.safetensors"
    if not path.exists():
        raise SystemExit(f"demo: base teacher {path} is missing (see demo/README.md)")
    return path


def uint8_to_unit(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / 255.0


def l1_psnr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean absolute difference (0..1 scale) and PSNR (dB) of two uint8 images."""
    x, y = uint8_to_unit(a), uint8_to_unit(b)
    mse = float(np.mean((x - y) ** 2))
    return float(np.mean(np.abs(x - y))), float(10 * np.log10(1.0 / max(mse, 1e-12)))


def choose_blend(out, scale, base, finetuned, game, blended, teacher_main) -> list[str]:
    """Run ``toon-teacher blend-search`` with the miniature's judges as its style and identity
    networks (they never see a (photo, game) pair of the same face) and return the ``blend``
    arguments it recommends; without a recommendation, the scale's fixed level, base structure.

    With the shipped encoder it scores the hard switch and two smooth widths on the delta images
    of ``scale.search_photos`` photo-style faces (inputs only): what the student's real-photo
    pairs will hold."""
    import shlex

    from demo.judges import export_feature_nets, load_judges

    judges = REPO / "demo" / "assets" / f"judges{scale.size}.safetensors"
    fallback = ["blend", "--low", str(base), "--high", str(finetuned)]
    fallback += ["--swap-res", str(scale.swap_res), "--mapping-from", "low", "--out", str(blended)]
    if not judges.exists():
        print(f"demo: {judges} missing; blending at the fixed level {scale.swap_res}")
        return fallback
    nets = export_feature_nets(load_judges(judges), out / "judges")
    search = out / "blend_search"
    argv = ["blend-search", "--base", str(base), "--toon", str(finetuned), "--data", str(game)]
    argv += ["--style-net", str(nets.style), "--identity-net", str(nets.identity)]
    argv += ["--identity-threshold", str(nets.identity_threshold), "--seeds", scale.search_seeds]
    argv += ["--trunc", "0.7", "--device", "cpu", "--out", str(search)]
    if ENCODER.exists() and scale.size == 32:
        from demo.synthetic import write_dataset

        photos = write_dataset(
            out / "data" / "search-photos", scale.search_photos, "photo",
            seed=SEARCH_PHOTOS_SEED, size=scale.size,
        )  # fmt: skip
        (photos / "params.json").unlink()  # inputs only
        argv += ["--photos", str(photos), "--encoder", str(ENCODER), "--smooth", "0,0.5,1"]
    run("toon-teacher", teacher_main, argv)
    rec = json.loads((search / "report.json").read_text())["recommendation"]
    if rec is None:
        print(
            f"demo: blend-search recommends nothing; blending at the fixed level {scale.swap_res}"
        )
        return fallback
    words = shlex.split(rec["blend_command"])[1:]  # drop "toon-teacher"
    words[words.index("--out") + 1] = str(blended)
    return words


def train_student(scale: Scale, pairs: Path, outdir: Path, seed: int, student_main) -> Path:
    """``toon-student train`` at the scale's size with one seed (the residual output: the
    student draws the photo's change; the generator EMA at a 2 kimg half-life); returns the
    student file."""
    from demo.diagnose import STUDENT_EMA_KIMG, STUDENT_OUTPUT

    argv = ["train", "--preset", "tiny", "--output", STUDENT_OUTPUT]
    argv += ["--ema-kimg", str(STUDENT_EMA_KIMG)]
    argv += ["--pairs", str(pairs), "--outdir", str(outdir)]
    argv += ["--kimg", str(scale.student_kimg), "--tick-kimg", str(scale.student_tick)]
    argv += ["--snap", "1000", "--workers", "0", "--seed", str(seed)]
    run("toon-student", student_main, argv)
    return outdir / "student.safetensors"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="demo")
    ap.add_argument("--out", default=None, help="output folder (default demo/out)")
    ap.add_argument("--keep", action="store_true", help="reuse an existing output folder")
    args = ap.parse_args(argv)
    scale = SCALES[args.scale]
    out = Path(args.out or REPO / "demo" / ("out-smoke" if scale.name == "smoke" else "out"))
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    timings: dict[str, float] = {}

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    # Tiny CPU training can drift into subnormal floats, which x86 computes many times slower
    # (a demo fine-tune once slowed 50x after 10 kimg); flushing them costs no accuracy here.
    torch.set_flush_denormal(True)

    from demo.synthetic import item_params, render_photo_scene, write_dataset
    from export.cli import main as export_main
    from export.infer_cli import main as infer_main
    from pairs.cli import main as pairs_main
    from student.cli import main as student_main
    from teacher.cli import main as teacher_main

    size = scale.size
    base = base_checkpoint(scale)

    # -- 1. base ------------------------------------------------------------------------------
    log(f"1/9 base teacher: {base}")
    run("toon-teacher", teacher_main, ["inspect", str(base)])

    # -- 2. fine-tune on game-style faces -----------------------------------------------------
    t = time.time()
    keep = (
        f"structure loss up to {scale.structure_res} px"
        if scale.structure_weight
        else f"blocks up to {scale.freezeg} px kept"
        if scale.freezeg
        else "every block trained"
    )
    log(f"2/9 ADA fine-tuning on {scale.game_faces} game-style faces ({keep})")
    game = out / "data" / "game"
    write_dataset(game, scale.game_faces, "game", seed=2000, size=size)
    ft = out / "finetune"
    run(
        "toon-teacher",
        teacher_main,
        [
            "finetune",
            "--base",
            str(base),
            "--data",
            str(game),
            "--preset",
            "tiny",
            "--batch",
            "8" if scale.name == "smoke" else "16",
            "--kimg",
            str(scale.finetune_kimg),
            "--tick-kimg",
            str(scale.finetune_tick),
            "--snap",
            "1000",
            "--target",
            "0.5",
            "--mirror",
            "--augpipe",
            "scale,xflip,noise",
            "--freezed",
            str(scale.freezed),
            "--outdir",
            str(ft),
            *(["--freezeg", str(scale.freezeg), "--freeze-mapping"] if scale.freezeg else []),
            *(
                ["--structure-weight", str(scale.structure_weight)]
                + ["--structure-res", str(scale.structure_res)]
                if scale.structure_weight
                else []
            ),
        ],
    )
    finetuned = sorted(ft.glob("network-snapshot-*.safetensors"))[-1]
    timings["finetune_s"] = time.time() - t

    # -- 3. blend -----------------------------------------------------------------------------
    t = time.time()
    log("3/9 choosing the blend level with blend-search (the offline judges), then blending")
    blended = out / "blended.safetensors"
    blend_argv = choose_blend(out, scale, base, finetuned, game, blended, teacher_main)
    run("toon-teacher", teacher_main, blend_argv)
    levels = ",".join(str(2**i) for i in range(2, int(np.log2(size))))
    run(
        "toon-teacher",
        teacher_main,
        [
            "blend-grid",
            "--low",
            str(base),
            "--high",
            str(finetuned),
            "--seeds",
            "0-3",
            "--levels",
            levels,
            "--trunc",
            "0.7",
            "--mapping-from",
            "low",
            "--device",
            "cpu",
            "--out",
            str(out / "blend_grid.png"),
        ],
    )
    timings["blend_s"] = time.time() - t

    # -- 4. projection of held-out photo-style faces --------------------------------------------
    t = time.time()
    log(f"4/9 projecting {scale.heldout} held-out photo-style faces into the base (W+)")
    held = out / "data" / "heldout"
    held.mkdir(parents=True, exist_ok=True)
    truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    from PIL import Image

    for i in range(scale.heldout):
        _params, photo, game_truth = heldout_face(i, size)
        name = f"face{i:02d}"
        Image.fromarray(photo).save(held / f"{name}.png")
        truth[name] = (photo, game_truth)
    proj = out / "projection"
    t_proj = time.time()
    run(
        "toon-teacher",
        teacher_main,
        [
            "project",
            "--network",
            str(base),
            "--target",
            str(held),
            "--aligned",
            "--space",
            "w+",
            "--steps",
            str(scale.project_steps),
            "--batch",
            str(scale.heldout),
            "--device",
            "cpu",
            "--outdir",
            str(proj),
        ],
    )
    project_s_per_face = (time.time() - t_proj) / scale.heldout
    timings["projection_s"] = time.time() - t

    # -- 5. pairs ---------------------------------------------------------------------------------
    t = time.time()
    photo_pairs = scale.photo_pairs if ENCODER.exists() and size == 32 else 0
    log(
        f"5/9 generating {scale.pairs} synthetic pairs, {photo_pairs} encoded real-photo pairs "
        f"(delta targets) and {scale.heldout} projected pairs"
    )
    pairs = out / "pairs"
    run(
        "toon-pairs",
        pairs_main,
        [
            "generate",
            "--base",
            str(base),
            "--toon",
            str(blended),
            "--count",
            str(scale.pairs),
            "--seed",
            "0",
            "--trunc",
            "0.7",
            "--shard-size",
            str(max(scale.pairs // 4, 1)),
            "--device",
            "cpu",
            "--out",
            str(pairs),
        ],
    )
    pairs_real = out / "pairs-projected"
    run(
        "toon-pairs",
        pairs_main,
        [
            "generate",
            "--toon",
            str(blended),
            "--latents",
            str(proj / "projected_w.npz"),
            "--photos",
            str(held),
            "--device",
            "cpu",
            "--out",
            str(pairs_real),
        ],
    )
    student_pairs = pairs
    if photo_pairs:  # photo-style faces coded by the shipped encoder: photo + the teacher's change
        enc_argv = ["generate", "--base", str(base), "--toon", str(blended)]
        enc_argv += ["--encoder", str(ENCODER), "--device", "cpu"]
        run("toon-pairs", pairs_main, [*enc_argv, "--photos", str(held), "--out",
                                      str(out / "pairs-encoded")])  # fmt: skip
        photos = write_dataset(
            out / "data" / "pair-photos", photo_pairs, "photo", seed=PAIR_PHOTOS_SEED, size=size
        )
        (photos / "params.json").unlink()  # inputs only: their game-style truth is never drawn
        photo_set = out / "pairs-photos"
        run("toon-pairs", pairs_main, [*enc_argv, "--photos", str(photos), "--target", "delta",
                                      "--shard-size", "1000", "--out", str(photo_set)])  # fmt: skip
        student_pairs = out / "pairs-mixed"
        run("toon-pairs", pairs_main, ["merge", str(pairs), str(photo_set), "--out",
                                      str(student_pairs)])  # fmt: skip
    run(
        "toon-pairs",
        pairs_main,
        ["preview", str(student_pairs), "--n", "8", "--start", str(scale.pairs),
         "--out", str(out / "pairs_preview.png")] if photo_pairs else
        ["preview", str(pairs), "--n", "8", "--out", str(out / "pairs_preview.png")],
    )  # fmt: skip
    timings["pairs_s"] = time.time() - t

    # -- 6. student ---------------------------------------------------------------------------
    t = time.time()
    log("6/9 training the student on the synthetic and real-photo pairs")
    srun = out / "student"
    train_student(scale, student_pairs, srun, 0, student_main)
    student_file = srun / "student.safetensors"
    run(
        "toon-student",
        student_main,
        [
            "eval",
            "--student",
            str(student_file),
            "--pairs",
            str(student_pairs),
            "--device",
            "cpu",
            "--out",
            str(out / "student_eval.json"),
            "--grid",
            str(out / "student_eval.png"),
        ],
    )
    student_eval = json.loads((out / "student_eval.json").read_text())
    timings["student_s"] = time.time() - t

    # -- 7. export ------------------------------------------------------------------------------
    t = time.time()
    log("7/9 exporting the student to ONNX (verified against torch)")
    onnx_path = out / "toon.onnx"
    run(
        "toon-export",
        export_main,
        ["onnx", "--student", str(student_file), "--out", str(onnx_path)],
    )
    timings["export_s"] = time.time() - t

    # -- 8. toon-infer ----------------------------------------------------------------------------
    t = time.time()
    log("8/9 toon-infer on held-out synthetic photos and real photos (pasted back)")
    scenes = out / "data" / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    for i in range(scale.scenes):
        params, rng = item_params(7000, i)
        img, _ = render_photo_scene(params, canvas=(480, 360), rng=rng)
        Image.fromarray(img).save(scenes / f"scene{i:02d}.jpg", quality=95)
    real = shared_dir() / "faces"
    real_inputs = sorted(p for p in real.glob("*") if p.suffix.lower() in {".jpg", ".png"})
    if not real_inputs:
        from skimage import data as skdata

        Image.fromarray(skdata.astronaut()).save(out / "data" / "astronaut.png")
        real_inputs = [out / "data" / "astronaut.png"]
    infer_out = out / "toonified"
    for inputs in ([str(scenes)], [str(p) for p in real_inputs]):
        rc = infer_main(
            [
                *inputs,
                "-o",
                str(infer_out),
                "--model",
                str(onnx_path),
                "--device",
                "cpu",
                "--skip-empty",
            ]
        )
        if rc not in (0, 3):
            raise SystemExit(f"demo: toon-infer failed with exit status {rc}")
    timings["infer_s"] = time.time() - t

    # -- 9. outcome ------------------------------------------------------------------------------
    t = time.time()
    log(
        f"9/9 outcome: {scale.student_seeds} student seed(s) and the oracle through toon-infer's "
        f"path on {scale.outcome_faces} held-out scenes"
    )
    from demo.outcome import demo_outcome, oracle_asset

    students = {0: onnx_path}
    for seed in range(1, scale.student_seeds):
        f = train_student(scale, student_pairs, out / f"student-seed{seed}", seed, student_main)
        students[seed] = out / f"student-seed{seed}.onnx"
        run("toon-export", export_main, ["onnx", "--student", str(f), "--out", str(students[seed])])
    judges = REPO / "demo" / "assets" / f"judges{size}.safetensors"
    outcome = demo_outcome(
        out / "oracle", size, scale.outcome_faces, students, scale.oracle_pairs,
        scale.oracle_kimg, judges, oracle_asset(size) if scale.name != "smoke" else None,
    )  # fmt: skip
    timings["outcome_s"] = time.time() - t

    # -- summary -----------------------------------------------------------------------------------
    log("summary")
    summary = summarize(
        out, scale, truth, proj, blended, onnx_path, student_eval, project_s_per_face, timings
    )
    summary["outcome"] = outcome
    summary["total_s"] = round(time.time() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    contact_sheet(out, truth, summary, infer_out, real_inputs, scenes)
    print(json.dumps({k: summary[k] for k in ("quality", "speed", "total_s")}, indent=2))
    print(json.dumps({"students": outcome["students"], "met": outcome["met"]}, indent=2))
    print(
        f"\nartifacts: {out}\n  summary.json, contact_sheet.png, blend_grid.png, "
        f"pairs_preview.png, student_eval.png, toonified/"
    )
    return 0


def summarize(
    out, scale, truth, proj, blended, onnx_path, student_eval, project_s_per_face, timings
) -> dict:
    """Quality against the procedural ground truth and speed of both paths."""
    import torch
    from PIL import Image

    from export.runtime import Toonifier
    from teacher import load_generator

    names = sorted(truth)
    ws = np.load(proj / "projected_w.npz")
    row = {str(n): i for i, n in enumerate(ws["names"])}
    G = load_generator(blended)
    with torch.no_grad():
        w = torch.from_numpy(ws["w"][[row[n] for n in names]])
        t = time.perf_counter()
        img = G.synthesis(w, noise_mode="const", force_fp32=True)
        render_s = (time.perf_counter() - t) / len(names)
    teacher_out = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    toon = Toonifier(onnx_path, device="cpu", threads=2)
    photos = np.stack([truth[n][0] for n in names])
    student_out = toon.run(photos)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        toon.run(photos[:1])
        times.append(time.perf_counter() - t)
    student_s = float(np.median(times))
    for i, n in enumerate(names):
        Image.fromarray(teacher_out[i]).save(out / "projection" / f"{n}_teacher_toon.png")
        Image.fromarray(student_out[i]).save(out / "projection" / f"{n}_student_toon.png")

    def dist(outputs: np.ndarray) -> dict[str, float]:
        vals = [l1_psnr(outputs[i], truth[n][1]) for i, n in enumerate(names)]
        return {
            "l1": round(float(np.mean([v[0] for v in vals])), 4),
            "psnr_db": round(float(np.mean([v[1] for v in vals])), 2),
        }

    teacher_path_s = project_s_per_face + render_s
    return {
        "scale": scale.name,
        "resolution": scale.size,
        "artifacts": {
            "base": str(base_checkpoint(scale)),
            "finetune_run": str(out / "finetune"),
            "blended": str(blended),
            "blend_grid": str(out / "blend_grid.png"),
            "projected_w": str(proj / "projected_w.npz"),
            "pairs": str(out / "pairs"),
            "student_pairs": str(
                out / ("pairs-mixed" if (out / "pairs-mixed").exists() else "pairs")
            ),
            "pairs_projected": str(out / "pairs-projected"),
            "pairs_encoded": str(out / "pairs-encoded"),
            "student": str(out / "student" / "student.safetensors"),
            "onnx": str(onnx_path),
            "toonified": str(out / "toonified"),
            "contact_sheet": str(out / "contact_sheet.png"),
        },
        "quality": {
            "student_vs_teacher_heldout_pairs": {
                "student": student_eval.get("metrics"),
                "do_nothing_source": student_eval.get("identity"),
                "l1_ratio": student_eval.get("l1_ratio"),
            },
            "to_ground_truth_on_heldout_faces": {
                "do_nothing_photo": dist(photos),
                "teacher_path_project_and_render": dist(teacher_out),
                "student_onnx": dist(student_out),
                "faces": len(names),
            },
        },
        "speed": {
            "student_single_pass_ms": round(student_s * 1e3, 2),
            "teacher_path_per_face_s": round(teacher_path_s, 2),
            "teacher_projection_steps": scale.project_steps,
            "teacher_over_student": round(teacher_path_s / student_s),
        },
        "blend": _blend_choice(out),
        "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
    }


def _blend_choice(out: Path) -> dict:
    """The level and direction blend-search recommended (None when the demo fell back)."""
    report = out / "blend_search" / "report.json"
    rec = json.loads(report.read_text())["recommendation"] if report.exists() else None
    if rec is None:
        return {"chosen_by": "fixed level (no blend-search recommendation)"}
    keep = ("direction", "level", "style_norm", "share_changed", "blend_command")
    return {"chosen_by": "toon-teacher blend-search", **{k: rec[k] for k in keep}}


def contact_sheet(out, truth, summary, infer_out, real_inputs, scenes) -> None:
    """One PNG: held-out faces (photo | teacher path | student | ground truth), then photos."""
    from PIL import Image, ImageDraw, ImageOps

    tile = 128
    names = sorted(truth)
    rows = []
    for n in names:
        cells = [
            truth[n][0],
            np.asarray(Image.open(out / "projection" / f"{n}_teacher_toon.png")),
            np.asarray(Image.open(out / "projection" / f"{n}_student_toon.png")),
            truth[n][1],
        ]
        rows.append([Image.fromarray(c).resize((tile, tile), Image.NEAREST) for c in cells])
    pairs_imgs = []
    for src in list(sorted(scenes.glob("*.jpg"))) + list(real_inputs):
        res = sorted(infer_out.glob(Path(src).stem + "_toon.*"))
        if res:
            upright = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
            pairs_imgs.append((upright, Image.open(res[0]).convert("RGB")))
    width = 4 * tile
    header = 20
    photo_h = 200
    height = header + len(rows) * tile + len(pairs_imgs) * photo_h
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, label in enumerate(["photo", "teacher path", "student", "ground truth"]):
        draw.text((k * tile + 4, 4), label, fill="black")
    y = header
    for cells in rows:
        for k, c in enumerate(cells):
            sheet.paste(c, (k * tile, y))
        y += tile
    for src, res in pairs_imgs:
        for k, im in enumerate((src, res)):
            im = im.copy()
            im.thumbnail((width // 2, photo_h))
            sheet.paste(im, (k * width // 2, y))
        y += photo_h
    sheet.save(out / "contact_sheet.png")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
