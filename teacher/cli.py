"""``toon-teacher``: import, inspect, sample, fine-tune and blend teacher networks.

Subcommands:
  import SRC OUT.safetensors   convert an NVIDIA/TF/rosinality checkpoint to our format
  inspect FILE                 print what a checkpoint holds (JSON)
  sample --network FILE ...    render seeds to PNGs plus a grid
  blend --low F --high F ...   layer swapping: coarse blocks of one model, fine of the other
  blend-grid --low F ...       one image: seeds x (high, a blend per swap level, low)
  finetune --base F --data D   StyleGAN2-ADA transfer learning with ADA and FreezeD
  project --network F ...      invert photos into the generator (W or W+)
  toonify --base F --blended F the full teacher path for one photo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.cli import run_command
from common.images import make_grid, save_png
from common.runs import pick_device
from teacher.blend import MAPPING_CHOICES, blend_files, blend_grid, parse_levels
from teacher.cli_finetune import add_finetune_parser
from teacher.cli_project import add_projection_parsers
from teacher.io import convert_checkpoint, load_generator, read_model_info
from teacher.sample import parse_seeds, sample_images

PROG = "toon-teacher"


def cmd_import(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {out} must end in .safetensors")
    convert_checkpoint(args.src, out, which=args.which)
    info = read_model_info(out)
    net = next(iter(info["networks"].values()))
    print(
        f"wrote {out}: {net['kind']}, {net['parameters']:,} parameters, "
        f"{net['arch'].get('img_resolution')} px"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    info = read_model_info(args.file)
    print(json.dumps(info, indent=2, sort_keys=False, default=str))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    device = pick_device(args.device)
    G = load_generator(args.network).to(device)
    outdir = Path(args.outdir)
    images = []
    for seed, img in sample_images(
        G,
        seeds,
        truncation_psi=args.truncation_psi,
        truncation_cutoff=args.truncation_cutoff,
        noise_mode=args.noise_mode,
        class_idx=args.class_idx,
        batch_size=args.batch,
        device=device,
    ):
        save_png(img, outdir / f"seed{seed:04d}.png")
        images.append(img)
    if not args.no_grid:
        save_png(make_grid(images), outdir / "grid.png")
    print(f"wrote {len(images)} images{'' if args.no_grid else ' and grid.png'} to {outdir}")
    return 0


def _smooth_width(value: float | None) -> float:
    if value is None:
        return 0.0
    if not value > 0:
        raise ValueError(f"--smooth must be > 0 (leave it out for the hard switch), got {value}")
    return float(value)


def cmd_blend(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {out} must end in .safetensors")
    width = _smooth_width(args.smooth)
    blend_files(args.low, args.high, out, args.swap_res, width, args.mapping_from)
    how = f"smooth width {width:g}" if width else "hard switch"
    print(
        f"wrote {out}: blocks <= {args.swap_res} px from {Path(args.low).name}, above from "
        f"{Path(args.high).name} ({how}), mapping from {args.mapping_from}"
    )
    return 0


def cmd_blend_grid(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    levels = parse_levels(args.levels) if args.levels is not None else None
    width = _smooth_width(args.smooth)
    device = pick_device(args.device)
    low = load_generator(args.low).to(device)
    high = load_generator(args.high).to(device)
    grid = blend_grid(
        low,
        high,
        seeds,
        levels,
        truncation_psi=args.truncation_psi,
        width=width,
        mapping_from=args.mapping_from,
        class_idx=args.class_idx,
    )
    save_png(grid, args.out)
    cols = grid.shape[1] // high.img_resolution
    print(f"wrote {args.out}: {len(seeds)} seeds x (high, {cols - 2} swap levels, low)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Teacher networks: import, inspect, sample, blend, fine-tune."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("import", help="convert a checkpoint to toon-distill safetensors")
    pi.add_argument("src", help="NVIDIA .pkl (PyTorch or TF era), rosinality .pt or .safetensors")
    pi.add_argument("out", help="output .safetensors path")
    pi.add_argument(
        "--which",
        default="G_ema",
        choices=["G_ema", "G", "D"],
        help="which network of a snapshot to convert (default G_ema)",
    )
    pi.set_defaults(func=cmd_import)

    pn = sub.add_parser("inspect", help="print what a checkpoint file holds")
    pn.add_argument("file")
    pn.set_defaults(func=cmd_inspect)

    ps = sub.add_parser("sample", help="render images for seeds")
    ps.add_argument("--network", required=True, help="generator checkpoint")
    ps.add_argument("--seeds", default="0-15", help="seeds, e.g. 0-15,42 (default 0-15)")
    ps.add_argument(
        "--trunc",
        dest="truncation_psi",
        type=float,
        default=1.0,
        help="truncation psi (default 1)",
    )
    ps.add_argument(
        "--trunc-cutoff",
        dest="truncation_cutoff",
        type=int,
        default=None,
        help="truncate only the first N ws (default: all)",
    )
    ps.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    ps.add_argument(
        "--class",
        dest="class_idx",
        type=int,
        default=None,
        help="class index for conditional generators",
    )
    ps.add_argument("--batch", type=int, default=8, help="images per forward pass")
    ps.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    ps.add_argument("--outdir", required=True)
    ps.add_argument("--no-grid", action="store_true", help="skip grid.png")
    ps.set_defaults(func=cmd_sample)

    def add_blend_args(pb: argparse.ArgumentParser) -> None:
        pb.add_argument(
            "--low", required=True, help="model for blocks <= R (toonify: the fine-tuned model)"
        )
        pb.add_argument(
            "--high", required=True, help="model for blocks above R (toonify: the realistic base)"
        )
        pb.add_argument(
            "--smooth",
            type=float,
            default=None,
            metavar="WIDTH",
            help="sigmoid transition width in octaves (> 0; default: hard switch)",
        )
        pb.add_argument(
            "--mapping-from",
            default="high",
            choices=list(MAPPING_CHOICES),
            help="model whose mapping network and w_avg are used (default high)",
        )

    pb = sub.add_parser("blend", help="blend two generators by resolution (layer swapping)")
    add_blend_args(pb)
    pb.add_argument(
        "--swap-res",
        type=int,
        required=True,
        metavar="R",
        help="blocks bK with K <= R from --low, above from --high (0 or a power of two)",
    )
    pb.add_argument("--out", required=True, help="output .safetensors path")
    pb.set_defaults(func=cmd_blend)

    pg = sub.add_parser("blend-grid", help="grid of seeds x swap levels, between both parents")
    add_blend_args(pg)
    pg.add_argument("--seeds", default="0-5", help="seeds, one row each (default 0-5)")
    pg.add_argument(
        "--levels",
        default=None,
        help="swap resolutions, one column each, e.g. 4,8,16,32 (default: 4 up to half the "
        "output resolution)",
    )
    pg.add_argument(
        "--trunc",
        dest="truncation_psi",
        type=float,
        default=1.0,
        help="truncation psi (default 1)",
    )
    pg.add_argument(
        "--class",
        dest="class_idx",
        type=int,
        default=None,
        help="class index for conditional generators",
    )
    pg.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    pg.add_argument("--out", required=True, help="output PNG path")
    pg.set_defaults(func=cmd_blend_grid)
    add_finetune_parser(sub)
    add_projection_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``toon-teacher`` with ``argv`` (default: the process arguments); returns the exit
    status (1 with a one-line message for user errors, the traceback behind ``--debug``)."""
    return run_command(PROG, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
