"""Inversion in the miniature: the encoder against projection, and encoder-made real-photo pairs.

``python -m demo.inversion table --encoder demo/assets/encoder32.safetensors``
    On held-out procedural photos (faces no network saw), ways into the base's W+: the mean
    face (``w_avg``), the encoder alone, the encoder plus 30 and 50 refinement steps, and
    projection from ``w_avg`` for 30 steps (the same budget) and 400 steps (the demo's
    projection settings). For each: reconstruction PSNR
    and L1 against the photo, identity (the miniature's parameter regressor's error on the
    reconstruction over its error on the photo itself) and seconds per photo on this machine.

``python -m demo.inversion students --demo-out demo/out [--target delta] [--toon FILE] [--no-z]``
    Whether real-photo pairs made with the encoder help the student: ``toon-pairs generate
    --encoder`` on procedural photo-style faces (inputs only: their game-style truth is never
    rendered), with render or delta targets, alone or mixed with z pairs of the same teacher, a
    student trained on them with the demo's settings, and it and the z-pair student through
    ``toon-infer``'s path against the truth (:mod:`demo.outcome`).

The procedural truth is used for measurement only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from demo.diagnose import REPO

HELDOUT_SEED = 9100  # held-out photos of the table (no network trained on this stream)
PHOTOS_SEED = 9500  # photo-style faces of the encoded pairs (inputs only)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def heldout_photos(n: int, size: int) -> tuple[np.ndarray, list]:
    """``n`` photo-style faces of the held-out stream and their parameters."""
    from demo.synthetic import item_params, render

    photos, params = [], []
    for i in range(n):
        p, rng = item_params(HELDOUT_SEED, i)
        photos.append(render(p, "photo", size, rng))
        params.append(p)
    return np.stack(photos), params


def inversion_table(
    base_file: Path,
    encoder_file: Path,
    judges_file: Path | None,
    n: int,
    refine_steps: tuple[int, ...],
    project_steps: int,
) -> tuple[dict, np.ndarray]:
    """The table of the module docstring and a strip (photo | each method's reconstruction)."""
    from teacher.encoder import load_encoder
    from teacher.io import load_discriminator, load_generator
    from teacher.project import REFINE, ProjectConfig, project, psnr
    from teacher.sample import to_uint8

    G = load_generator(base_file)
    D = load_discriminator(base_file)
    E = load_encoder(encoder_file)
    photos, params = heldout_photos(n, G.img_resolution)
    target = _to_tensor(photos)
    judges = None
    if judges_file is not None and judges_file.exists():
        from demo.judges import load_judges

        judges = load_judges(judges_file)

    def render(ws: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return G.synthesis(ws, noise_mode="const", force_fp32=True)

    rows: dict[str, dict] = {}
    recons: dict[str, np.ndarray] = {}

    def add(name: str, images: torch.Tensor, seconds: float, **extra) -> None:
        u8 = to_uint8(images)
        row = {
            "psnr_db": round(float(psnr(images, target).mean()), 2),
            "psnr_db_min": round(float(psnr(images, target).min()), 2),
            "l1": round(float((images - target).abs().mean() / 2), 4),
            "seconds_per_photo": round(seconds / n, 5),
            **extra,
        }
        if judges is not None:
            err = judges.param_error(u8, params).mean()
            row["identity_error_over_photo"] = round(float(err / photo_err), 3)
        rows[name] = row
        recons[name] = u8

    photo_err = judges.param_error(photos, params).mean() if judges is not None else 1.0
    w_avg = G.mapping.w_avg.reshape(1, 1, -1).repeat(n, G.num_ws, 1)
    add("mean face (w_avg)", render(w_avg), 0.0)

    cfg = dict(optimize_noise=False, seed=0)
    # Untimed warm-up of both paths, so the first timed method pays no one-time costs.
    with torch.no_grad():
        E.invert(target, G)
    project(G, target, ProjectConfig(steps=2, **cfg), D=D)
    for k in range(1, E.passes + 1):
        t = time.perf_counter()
        with torch.no_grad():
            codes = E.invert(target, G, k)
        enc_s = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(n):  # one photo at a time: the latency a user sees
                E.invert(target[i : i + 1], G, k)
        enc_one_s = time.perf_counter() - t
        name = f"encoder alone, {k} pass{'es' * (k > 1)}"
        add(name, render(codes), enc_s, seconds_per_photo_batch1=round(enc_one_s / n, 5))
    for k in refine_steps:
        t = time.perf_counter()
        res = project(G, target, ProjectConfig(steps=k, **REFINE, **cfg), D=D, init_ws=codes)
        add(f"encoder + {k} steps", res.images, enc_s + time.perf_counter() - t)
    # From w_avg: the same budget with the refinement's loss terms, and the full projection.
    same = dict(cfg, dfeat_weight=REFINE["dfeat_weight"], pyramid=REFINE["pyramid"])
    for k, extra, label in (
        (min(refine_steps), same, " (refinement's terms)"),
        (project_steps, cfg, ""),
    ):
        t = time.perf_counter()
        res = project(G, target, ProjectConfig(steps=k, **extra), D=D)
        add(f"projection {k} steps from w_avg{label}", res.images, time.perf_counter() - t)
    proj = rows[f"projection {project_steps} steps from w_avg"]
    for row in rows.values():
        if row["seconds_per_photo"] > 0:
            row["times_faster_than_projection"] = round(
                proj["seconds_per_photo"] / row["seconds_per_photo"], 1
            )
    report = {
        "faces": n,
        "size": G.img_resolution,
        "base": base_file.name,
        "encoder": encoder_file.name,
        "photo_identity_error": round(float(photo_err), 4) if judges is not None else None,
        "threads": torch.get_num_threads(),
        "encoder_passes": E.passes,
        "encoder_row": f"encoder alone, {E.passes} pass{'es' * (E.passes > 1)}",
        "methods": rows,
    }
    from common.images import make_grid

    show = min(n, 8)
    order = ["photo", *rows]
    recons["photo"] = photos
    tiles = [recons[name][i] for i in range(show) for name in order]
    strip = make_grid(tiles, cols=len(order))
    report["strip_columns"] = order
    return report, strip


def student_comparison(
    demo_out: Path,
    encoder_file: Path,
    photos: int,
    faces: int,
    seeds: int,
    work: Path,
    refine_steps: int = 0,
    target: str = "render",
    toon: Path | None = None,
    with_z: bool = True,
) -> dict:
    """Students trained on z pairs alone and on ``photos`` encoder-made real-photo pairs (with
    the z pairs unless ``with_z`` is false), through toon-infer's path (:mod:`demo.outcome`).

    ``toon`` is the teacher (default the demo's blended model, whose z pairs and student the
    demo already made); ``target`` the real-photo pairs' target (``toon-pairs generate
    --target``: ``render`` or ``delta``)."""
    from demo.diagnose import onnx_model
    from demo.outcome import measure, oracle_asset, prepare, spread
    from demo.run import SCALES, base_checkpoint, train_student
    from demo.synthetic import write_dataset
    from export.cli import main as export_main
    from pairs.cli import main as pairs_main
    from pairs.shards import iter_pairs
    from student.cli import main as student_main

    scale = SCALES["demo"]
    demo_teacher = toon is None
    blended = demo_out / "blended.safetensors" if toon is None else toon
    zpairs = demo_out / "pairs"
    for need in (blended, zpairs / "manifest.json") if demo_teacher else (blended,):
        if not need.exists():
            raise SystemExit(f"inversion: {need} missing; run make demo first")
    work.mkdir(parents=True, exist_ok=True)
    base = base_checkpoint(scale)
    if not demo_teacher:  # the same z pairs as the demo's, from this teacher
        zpairs = work / f"pairs-z-{blended.stem}"
        argv = ["generate", "--base", str(base), "--toon", str(blended), "--count", "4000"]
        argv += ["--seed", "0", "--trunc", "0.7", "--shard-size", "1000", "--device", "cpu"]
        if pairs_main([*argv, "--out", str(zpairs)]) != 0:
            raise SystemExit("inversion: z pair generation failed")
    folder = write_dataset(work / "photos", photos, "photo", seed=PHOTOS_SEED, size=scale.size)
    (folder / "params.json").unlink()  # inputs only
    t = time.time()
    kind = f"{target}-refined{refine_steps}" if refine_steps else target
    encoded = work / f"pairs-encoded-{kind}-{blended.stem}"
    argv = ["generate", "--toon", str(blended), "--photos", str(folder), "--device", "cpu"]
    argv += ["--target", target, "--base", str(base)]
    if refine_steps:  # encoder codes refined by projection, then pairs from those latents
        from teacher.cli import main as teacher_main

        proj = work / f"projected-refined{refine_steps}"
        targv = ["project", "--network", str(base), "--target", str(folder), "--aligned"]
        targv += ["--encoder", str(encoder_file), "--steps", str(refine_steps), "--batch", "250"]
        targv += ["--device", "cpu", "--outdir", str(proj)]
        if teacher_main(targv) != 0:
            raise SystemExit("inversion: projection failed")
        argv += ["--latents", str(proj / "projected_w.npz")]
    else:
        argv += ["--encoder", str(encoder_file)]
    if pairs_main([*argv, "--out", str(encoded)]) != 0:
        raise SystemExit("inversion: encoded pair generation failed")
    encoded_s = time.time() - t
    tag = f"{'mixed' if with_z else 'photos'}-{kind}-{blended.stem}"
    mixed = encoded
    if with_z:  # one dataset for the student
        mixed = work / f"pairs-{tag}"
        shutil.rmtree(mixed, ignore_errors=True)
        if pairs_main(["merge", str(zpairs), str(encoded), "--out", str(mixed)]) != 0:
            raise SystemExit("inversion: merging the pairs failed")
    label = f"{'z + ' if with_z else ''}encoded pairs, {target} targets" + (
        f", refined {refine_steps} steps" if refine_steps else ""
    )
    zname = "z pairs (the demo's)" if demo_teacher else "z pairs"
    students: dict[str, dict[int, Path]] = {zname: {}, label: {}}
    for seed in range(seeds):
        for name, pairs in ((zname, zpairs), (label, mixed)):
            own = demo_out / "toon.onnx"
            if name == zname and demo_teacher and seed == 0 and own.exists():
                students[name][seed] = own
                continue
            run_tag = f"z-{blended.stem}" if name == zname else tag
            f = train_student(
                scale, pairs, work / f"student-{run_tag}-seed{seed}", seed, student_main
            )
            onnx = work / f"student-{run_tag}-seed{seed}.onnx"
            if export_main(["onnx", "--student", str(f), "--out", str(onnx)]) != 0:
                raise SystemExit("inversion: export failed")
            students[name][seed] = onnx
    models = {"oracle": onnx_model(oracle_asset(scale.size)), "identity": lambda c: c}
    for name, files in students.items():
        for seed, f in files.items():
            models[f"{name} seed{seed}"] = onnx_model(f)
    judges_file = REPO / "demo" / "assets" / f"judges{scale.size}.safetensors"
    judges = None
    if judges_file.exists():
        from demo.judges import load_judges

        judges = load_judges(judges_file)
    rows = measure(models, prepare(faces, scale.size), judges)
    keys = ("ratio", "gap_closed", "better_than_nothing", "eyes_ratio", "outline_ratio")
    summary = {}
    for name, files in students.items():
        seed_rows = [rows[f"{name} seed{s}"] for s in sorted(files)]
        summary[name] = spread(seed_rows, keys)
        if judges is not None:
            summary[name].update(
                spread([r["judges"] for r in seed_rows], ("called_game", "param_error_over_truth"))
            )
    return {
        "faces": faces,
        "seeds": seeds,
        "encoded_photos": photos,
        "z_pairs": sum(1 for _ in iter_pairs(zpairs)),
        "refine_steps": refine_steps,
        "target": target,
        "teacher": str(blended),
        "with_z_pairs": with_z,
        "encoded_pairs_seconds": round(encoded_s, 1),
        "students": summary,
        "models": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    enc_default = REPO / "demo" / "assets" / "encoder32.safetensors"
    pt = sub.add_parser("table", help="the encoder against projection on held-out photos")
    pt.add_argument("--encoder", default=str(enc_default))
    pt.add_argument("--base", default=str(REPO / "demo" / "assets" / "base32.safetensors"))
    pt.add_argument("--faces", type=int, default=24)
    pt.add_argument("--refine-steps", default="30,50", help="comma list (default 30,50)")
    pt.add_argument("--project-steps", type=int, default=400)
    pt.add_argument("--out", default=str(REPO / "demo" / "out-inversion"))
    ps = sub.add_parser("students", help="z pairs alone against z + encoder-made photo pairs")
    ps.add_argument("--encoder", default=str(enc_default))
    ps.add_argument("--demo-out", default=str(REPO / "demo" / "out"))
    ps.add_argument("--photos", type=int, default=2000, help="encoded real-photo pairs")
    ps.add_argument("--faces", type=int, default=24, help="held-out scenes measured")
    ps.add_argument("--seeds", type=int, default=1, help="training seeds per student kind")
    ps.add_argument(
        "--refine-steps", type=int, default=0, help="refine the codes by projection first"
    )
    ps.add_argument(
        "--target", choices=("render", "delta"), default="render",
        help="the encoded pairs' target (toon-pairs generate --target; default render)",
    )  # fmt: skip
    ps.add_argument("--toon", default=None, help="teacher (default DEMO_OUT/blended.safetensors)")
    ps.add_argument("--no-z", action="store_true", help="the encoded pairs alone, no z pairs")
    ps.add_argument("--out", default=str(REPO / "demo" / "out-inversion"))
    for sp in (pt, ps):
        sp.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cmd == "table":
        judges = REPO / "demo" / "assets" / "judges32.safetensors"
        report, strip = inversion_table(
            Path(args.base), Path(args.encoder), judges, args.faces,
            tuple(int(x) for x in args.refine_steps.split(",")), args.project_steps,
        )  # fmt: skip
        from common.images import save_png

        save_png(strip, out / "inversion_strip.png")
        (out / "inversion.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return 0
    report = student_comparison(
        Path(args.demo_out), Path(args.encoder), args.photos, args.faces, args.seeds,
        out / "students", args.refine_steps, args.target,
        None if args.toon is None else Path(args.toon), not args.no_z,
    )  # fmt: skip
    name = f"students-{args.target}" + (f"-refined{args.refine_steps}" if args.refine_steps else "")
    name += "-photos-only" if args.no_z else ""
    if args.toon is not None:
        name += f"-{Path(args.toon).stem}"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"students": report["students"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
