"""``toon-teacher project`` and ``toon-teacher toonify``: the slow, optimization-based path.

``project`` inverts photos into the generator (aligning them first unless ``--aligned``);
``toonify`` is the full teacher path for one photo: align, project with the base, render the
latent with the blended model, paste back. It is the quality and speed reference the student
must beat.

Photo alignment lives in the torch-free ``faces.align`` module; it is imported here, in the
command layer, only when a photo needs aligning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.files import atomic_write, atomic_write_text
from common.images import IMAGE_EXTENSIONS, save_png
from common.runs import pick_device
from faces.align import align
from teacher.io import load_discriminator, load_generator, read_networks
from teacher.project import REFINE, ProjectConfig, project, psnr, save_projected_w
from teacher.sample import to_uint8


def _list_inputs(target: str) -> list[Path]:
    p = Path(target)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{p}: no images found")
        return files
    if not p.exists():
        raise ValueError(f"{p}: file not found")
    return [p]


def _load_aligned(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None


def _to_tensor(crops: list[np.ndarray], device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.stack([c[:, :, :3] for c in crops])).permute(0, 3, 1, 2)
    return x.to(device).float() / 127.5 - 1


def _identity(a: np.ndarray, b: np.ndarray) -> float | None:
    try:
        from teacher.identity import identity_distance

        return identity_distance(a, b)
    except Exception:  # the identity report is optional; projection results stand without it
        return None


def _save_noise(path: Path, noise: dict[str, torch.Tensor]) -> None:
    """Write the optimized noise maps as ``.npz`` (one array per buffer name), atomically."""
    arrays = {k: v.cpu().numpy() for k, v in noise.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _project_batch(G, D, crops, cfg: ProjectConfig, vgg16, device, desc: str, encoder=None):
    from tqdm import tqdm

    target = _to_tensor(crops, device)
    init = None
    if encoder is not None:
        with torch.no_grad():
            init = encoder(target)
    bar = tqdm(total=cfg.steps, desc=desc, unit="step", leave=False, disable=cfg.steps == 0)

    def tick(_step: int, dist: float) -> None:
        bar.update(1)
        bar.set_postfix(dist=f"{dist:.4g}")

    result = project(G, target, cfg, vgg16=vgg16, D=D, progress=tick, init_ws=init)
    bar.close()
    return result, target


def _projection_setup(args: argparse.Namespace, G, network: str, device, prog: str):
    """The start codes of ``--encoder`` as a function of the target batch (the encoder on
    ``device``, checked against ``G``, run for ``--passes``) or None, and the schedule overrides
    it implies; refuses ``--steps 0`` without an encoder."""
    if args.steps < 0:
        raise ValueError(f"--steps must be at least 0, got {args.steps}")
    overrides: dict = {}
    if args.lr is not None:
        overrides["initial_lr"] = args.lr
    if not args.encoder:
        if args.steps == 0:
            raise ValueError("--steps 0 renders the start as it is: it needs --encoder FILE")
        if args.passes is not None:
            raise ValueError("--passes counts encoder passes: it needs --encoder FILE")
        return None, overrides
    from teacher.encoder import check_pair, load_encoder

    E = load_encoder(args.encoder)
    warning = check_pair(E, G, network)
    if warning:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    passes = E.passes if args.passes is None else args.passes
    try:
        E.check_passes(passes)
    except ValueError as e:
        raise ValueError(f"--passes {passes}: {Path(args.encoder).name}: {e}") from None
    E = E.to(device)
    start = f"{Path(args.encoder).name} codes after {passes} pass(es)"
    print(f"{prog}: start = {start}, then {args.steps} refinement step(s)", file=sys.stderr)
    return (lambda target: E.invert(target, G, passes)), {**REFINE, **overrides}


def loss_terms(
    loss: str,
    vgg16: str | None,
    dfeat_weight: float,
    network: str,
    has_d: bool,
    pyramid: bool = True,
) -> tuple[str, list[str], str]:
    """(kind, terms, why) of the projection distance the flags select, for the start line and
    ``report.json``: ``vgg`` (perceptual) or ``pixel`` (image pyramid, plus discriminator
    features when the network file holds D and the weight is positive)."""
    if loss == "vgg" or (loss == "auto" and vgg16):
        return "vgg", ["vgg16 perceptual"], f"--vgg16 {vgg16}"
    terms = ["pixel pyramid mse" if pyramid else "pixel mse"]
    if dfeat_weight <= 0:
        why = "--dfeat-weight 0"
    elif not has_d:
        why = (
            f"{network} holds no discriminator, so the discriminator-feature term is off "
            "(toon-teacher import keeps D)"
        )
    else:
        terms.append(f"{dfeat_weight:g} x discriminator features")
        why = f"the discriminator of {network}"
    if loss == "auto":
        why += "; no --vgg16, so no perceptual term (NVIDIA's vgg16.pt projects better)"
    return "pixel", terms, why


def cmd_project(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    G = load_generator(args.network).to(device)
    has_d = "D" in read_networks(args.network)
    E, schedule = _projection_setup(args, G, args.network, device, "project")
    if args.dfeat_weight is not None:
        schedule["dfeat_weight"] = args.dfeat_weight
    dfeat = schedule.setdefault("dfeat_weight", ProjectConfig.dfeat_weight)
    pyramid = schedule.get("pyramid", True)
    kind, terms, why = loss_terms(args.loss, args.vgg16, dfeat, args.network, has_d, pyramid)
    if E is not None and args.dfeat_weight is None and kind == "pixel":
        why = (
            "refining encoder codes: full-resolution pixel mse only (--dfeat-weight W adds "
            "the discriminator's)"
        )
    print(f"project: loss = {' + '.join(terms)} ({why})", file=sys.stderr)
    D = None
    if kind == "pixel" and dfeat > 0 and has_d:
        D = load_discriminator(args.network).to(device)
    cfg = ProjectConfig(
        space=args.space,
        steps=args.steps,
        optimize_noise=args.optimize_noise,
        loss=args.loss,
        seed=args.seed,
        **schedule,
    )
    batch = 1 if args.optimize_noise else args.batch
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)

    crops: list[np.ndarray] = []
    names: list[str] = []
    for path in _list_inputs(args.target):
        if args.aligned:
            crops.append(_load_aligned(path, G.img_resolution))
            names.append(path.stem)
            continue
        faces = align(path, size=G.img_resolution, max_faces=args.max_faces)
        if not faces:
            print(f"{path}: no face found, skipped")
        for i, face in enumerate(faces):
            crops.append(face.crop[:, :, :3])
            names.append(path.stem if len(faces) == 1 else f"{path.stem}_face{i}")
    if not crops:
        raise ValueError("no faces to project")

    all_ws = []
    report = []
    for start in range(0, len(crops), batch):
        chunk = crops[start : start + batch]
        t0 = time.time()
        res, target = _project_batch(
            G,
            D,
            chunk,
            cfg,
            args.vgg16,
            device,
            desc=f"project {start + 1}-{start + len(chunk)}/{len(crops)}",
            encoder=E,
        )
        elapsed = time.time() - t0
        recon = to_uint8(res.images)
        values = psnr(res.images, target).tolist()
        for j, name in enumerate(names[start : start + len(chunk)]):
            save_png(chunk[j], outdir / f"{name}_target.png")
            save_png(recon[j], outdir / f"{name}_proj.png")
            report.append(
                {
                    "name": name,
                    "psnr_db": round(values[j], 3),
                    "final_distance": float(res.final[j]),
                    "identity_distance": _identity(chunk[j], recon[j]),
                    "seconds": round(elapsed / len(chunk), 3),
                }
            )
        all_ws.append(res.ws.cpu())
        if args.optimize_noise:
            _save_noise(outdir / f"{names[start]}_noise.npz", res.noise)
    ws = torch.cat(all_ws)
    save_projected_w(outdir / "projected_w.npz", ws, names=names)
    summary = {
        "network": str(args.network),
        "space": cfg.space,
        "steps": cfg.steps,
        "start": str(args.encoder) if args.encoder else "w_avg",
        "initial_lr": cfg.initial_lr,
        "loss": kind,
        "loss_terms": terms,
        "loss_why": why,
        "optimize_noise": cfg.optimize_noise,
        "images": report,
    }
    atomic_write_text(outdir / "report.json", json.dumps(summary, indent=2))
    for r in report:
        ident = r["identity_distance"]
        ident_s = f", identity distance {ident:.3f}" if ident is not None else ""
        print(f"{r['name']}: PSNR {r['psnr_db']:.2f} dB{ident_s}")
    print(f"wrote {outdir / 'projected_w.npz'} ({len(names)} latents) and report.json")
    return 0


def cmd_toonify(args: argparse.Namespace) -> int:
    from faces.align import paste_back

    device = pick_device(args.device)
    timings: dict[str, float] = {}
    t = time.time()
    base = load_generator(args.base).to(device)
    toon = load_generator(args.blended).to(device)
    if base.arch != toon.arch:
        raise ValueError("--base and --blended have different architectures")
    timings["load_s"] = time.time() - t

    t = time.time()
    faces = align(args.photo, size=base.img_resolution, max_faces=args.max_faces)
    timings["align_s"] = time.time() - t
    if not faces:
        raise ValueError(f"{args.photo}: no face found")
    E, schedule = _projection_setup(args, base, args.base, device, "toonify")
    cfg = ProjectConfig(
        space=args.space,
        steps=args.steps,
        loss=args.loss,
        optimize_noise=False,
        seed=args.seed,
        **schedule,
    )
    pyramid = schedule.get("pyramid", True)
    kind, terms, why = loss_terms(args.loss, args.vgg16, 0.0, args.base, False, pyramid)
    if kind == "pixel":  # toonify has no discriminator term
        why = "toonify uses no discriminator term" + why[len("--dfeat-weight 0") :]
    print(f"toonify: projection loss = {' + '.join(terms)} ({why})", file=sys.stderr)
    t = time.time()
    res, target = _project_batch(
        base,
        None,
        [f.crop[:, :, :3] for f in faces],
        cfg,
        args.vgg16,
        device,
        desc="project",
        encoder=E,
    )
    timings["project_s"] = time.time() - t
    t = time.time()
    with torch.no_grad():
        out = toon.synthesis(
            res.ws.to(device), noise_mode="const", force_fp32=device.type != "cuda"
        )
    toon_crops = to_uint8(out)
    timings["render_s"] = time.time() - t
    t = time.time()
    pasted = paste_back(args.photo, faces, list(toon_crops))
    timings["paste_s"] = time.time() - t

    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = Path(args.photo).stem
    save_png(pasted, outdir / f"{stem}_toon.png")
    recon = to_uint8(res.images)
    for i, (face, crop) in enumerate(zip(faces, toon_crops, strict=True)):
        save_png(face.crop[:, :, :3], outdir / f"{stem}_face{i}_aligned.png")
        save_png(recon[i], outdir / f"{stem}_face{i}_proj.png")
        save_png(crop, outdir / f"{stem}_face{i}_toon.png")
    save_projected_w(
        outdir / "projected_w.npz",
        res.ws.cpu(),
        names=[f"{stem}_face{i}" for i in range(len(faces))],
    )
    report = {
        "photo": str(args.photo),
        "faces": len(faces),
        "steps": cfg.steps,
        "space": cfg.space,
        "start": str(args.encoder) if args.encoder else "w_avg",
        "psnr_db": [round(v, 3) for v in psnr(res.images, target).tolist()],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "total_s": round(sum(timings.values()) - timings["load_s"], 3),
    }
    atomic_write_text(outdir / "report.json", json.dumps(report, indent=2))
    print(
        f"wrote {outdir / (stem + '_toon.png')}: {len(faces)} face(s), "
        f"{report['total_s']:.1f} s (projection {timings['project_s']:.1f} s)"
    )
    return 0


def _add_projection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--space",
        choices=["w", "w+"],
        default="w+",
        help="w: one latent; w+: one per layer (default, keeps identity better)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="optimizer steps (default 1000; with --encoder, 0 keeps the encoder's codes)",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="start from this encoder's codes (toon-teacher encoder train) instead of w_avg, "
        "then refine for --steps",
    )
    p.add_argument(
        "--passes",
        type=int,
        default=None,
        help="passes of a feedback encoder (default: the number it was trained with)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="initial learning rate (default 0.1; 0.2 with a slower ramp-up and no latent noise "
        "for codes from --encoder)",
    )
    p.add_argument(
        "--loss",
        choices=["auto", "vgg", "pixel"],
        default="auto",
        help="auto: VGG16 when --vgg16 is given, else the pixel fallback",
    )
    p.add_argument("--vgg16", default=None, help="NVIDIA's vgg16.pt (perceptual distance)")
    p.add_argument("--max-faces", type=int, default=None, help="faces per photo (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def add_projection_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``project`` and ``toonify``."""
    p = sub.add_parser("project", help="project photos into the generator's latent space")
    p.add_argument("--network", required=True, help="generator checkpoint")
    p.add_argument("--target", required=True, help="photo or folder of photos")
    p.add_argument(
        "--aligned",
        action="store_true",
        help="targets are already FFHQ-aligned crops (no face detection)",
    )
    p.add_argument("--batch", type=int, default=8, help="latents optimized together")
    p.add_argument(
        "--optimize-noise",
        action="store_true",
        help="also optimize the noise maps (NVIDIA's projector; one image at a time; "
        "the latents alone then replay less exactly)",
    )
    p.add_argument(
        "--dfeat-weight",
        type=float,
        default=None,
        help="pixel loss: weight of the discriminator-feature term (needs D in file; default "
        "0.1, and 0 when refining --encoder codes, where it measured no better at twice the "
        "cost)",
    )
    p.add_argument("--outdir", required=True)
    _add_projection_flags(p)
    p.set_defaults(func=cmd_project)

    t = sub.add_parser("toonify", help="teacher path for one photo: align, project, render, paste")
    t.add_argument("--base", required=True, help="realistic base generator (projection)")
    t.add_argument("--blended", required=True, help="blended generator (rendering)")
    t.add_argument("--photo", required=True)
    t.add_argument("--out", required=True, help="output folder")
    _add_projection_flags(t)
    t.set_defaults(func=cmd_toonify)
