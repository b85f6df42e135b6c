"""``toon-teacher encoder train``: flags that map one to one onto
:class:`teacher.encoder_train.EncoderConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import json

from common.runs import init_distributed
from teacher.encoder_train import EncoderConfig, make_config, training_loop

_HELP = {
    "data": "optional aligned photos (folder or zip) learned without codes, by image loss",
    "real_fraction": "share of each batch taken from --data",
    "mirror": "mirror half of the photos of --data",
    "channel_base": "encoder channels at resolution r: min(channel_base / r, channel_max)",
    "channel_max": "most channels of an encoder level",
    "head_channels": "channels of each level's 4x4 summary",
    "hidden": "width of the hidden layer before the code",
    "passes": "passes per step: more than 1 trains a feedback encoder that corrects its code "
    "from the render of it (ReStyle)",
    "init": "encoder file whose weights start a fresh run (same architecture; a one-pass "
    "encoder can start a feedback one)",
    "trunc_min": "smallest truncation psi of the training samples",
    "trunc_max": "largest truncation psi of the training samples",
    "mix_prob": "probability of style mixing per sample (W+ codes to learn)",
    "noise_mode": "noise of the target renders: random, const or none",
    "degrade_prob": "probability of each degradation (colour, blur, noise) per sample",
    "colour": "largest relative exposure, contrast, saturation and colour-cast change",
    "blur": "largest Gaussian blur sigma in pixels",
    "noise": "largest sensor-noise std in [-1, 1] units",
    "jpeg_prob": "probability of a JPEG round trip per sample",
    "jpeg_min": "lowest JPEG quality",
    "latent_weight": "weight of the code's squared error (units of W's spread)",
    "pixel_weight": "weight of the image-pyramid MSE of the reconstruction",
    "dfeat_weight": "weight of the discriminator features (when --network holds D)",
    "vgg16": "NVIDIA's vgg16.pt for a perceptual term (a path; never fetched)",
    "vgg_weight": "weight of the VGG16 term (with --vgg16)",
    "delta_weight": "weight of the per-layer deltas' square (keeps codes near W)",
    "batch": "global batch (samples per step)",
    "lr": "Adam learning rate",
    "lr_decay": "fraction of the run at the end over which the rate falls to 0",
    "kimg": "length of the run in thousands of samples",
    "tick_kimg": "kimg per tick (stats and resume state every tick)",
    "snap": "ticks between snapshots (encoder file, held-out figures, grid)",
    "eval_n": "fixed held-out samples scored at every snapshot",
    "grid_n": "rows of the input | reconstruction | target grid",
    "seed": "seed of the weights and of every step's samples",
}


def add_encoder_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``encoder`` (with its ``train`` subcommand)."""
    p = sub.add_parser("encoder", help="an inversion encoder: photos to W+ in one pass")
    esub = p.add_subparsers(dest="encoder_command", required=True)
    t = esub.add_parser(
        "train",
        help="train an encoder on the generator's own samples",
        description="Train an encoder from aligned images to the W+ codes of --network on the "
        "generator's own renders (random z, truncation, style mixing, photo-like "
        "degradations). Run the same command in the same --outdir to resume. Multi-GPU: "
        "torchrun --nproc_per_node N $(which toon-teacher) encoder train ...",
    )
    t.add_argument("--network", required=True, help="the generator (base) whose W to code")
    t.add_argument("--outdir", required=True, help="run directory (resumes when it exists)")
    t.add_argument("--preset", default="paper256", help="paper256 (default) or tiny")
    for f in dataclasses.fields(EncoderConfig):
        if f.name in ("network", "outdir", "preset", "betas"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            t.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, help=_HELP[f.name]
            )
            continue
        kind = {"str": str, "int": int}.get(f.type, float)
        t.add_argument(flag, dest=f.name, type=kind, default=None, help=_HELP[f.name])
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_encoder_train)


def cmd_encoder_train(args: argparse.Namespace) -> int:
    names = [f.name for f in dataclasses.fields(EncoderConfig)]
    over = {k: getattr(args, k) for k in names if k != "preset" and hasattr(args, k)}
    cfg = make_config(args.preset, over)
    di = init_distributed()
    if args.dry_run:
        if di.main:
            print(json.dumps(json.loads(cfg.to_json()), indent=2))
        return 0
    result = training_loop(cfg, di, progress=not args.quiet)
    if result.get("interrupted"):
        return result["exit_status"]
    if di.main:
        print(
            f"done: {result['cur_nimg'] / 1000:.3f} kimg; encoder: {cfg.outdir}/encoder.safetensors"
        )
    return 0
