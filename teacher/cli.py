"""``toon-teacher``: import, inspect, sample, fine-tune and blend teacher networks.

Subcommands:
  import SRC OUT.safetensors   convert an NVIDIA/TF/rosinality checkpoint to our format
  inspect FILE                 print what a checkpoint holds (JSON)
  sample --network FILE ...    render seeds to PNGs plus a grid
  blend --low F --high F ...   layer swapping: coarse blocks of one model, fine of the other
  blend-grid --low F ...       one image: seeds x (high, a blend per swap level, low)
  blend-search --base F --toon F --data D   score every level in both directions, recommend one
  finetune --base F --data D   StyleGAN2-ADA transfer learning with ADA and FreezeD
  project --network F ...      invert photos into the generator (W or W+)
  toonify --base F --blended F the full teacher path for one photo
  encoder train --network F    an inversion encoder trained on the generator's own samples
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.cli import run_command
from common.images import make_grid, save_png
from common.runs import pick_device
from teacher.blend import MAPPING_CHOICES, blend_files, blend_grid, parse_levels
from teacher.cli_encoder import add_encoder_parser
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
    nets = info["networks"]
    parts = [f"{k} ({v['kind']}, {v['parameters']:,} parameters)" for k, v in nets.items()]
    res = next(iter(nets.values()))["arch"].get("img_resolution")
    print(f"wrote {out}: {', '.join(parts)}, {res} px")
    if args.which == "all" and "D" not in nets:
        print(
            f"{PROG}: note: {args.src} holds no discriminator we can read; fine-tuning from "
            f"{out} needs --fresh-d (and no --freezed), projection uses no discriminator term",
            file=sys.stderr,
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from teacher.encoder import is_encoder_file, load_encoder

    if is_encoder_file(args.file):
        E = load_encoder(args.file)
        params = sum(p.numel() for p in E.parameters())
        info = {"file": str(args.file), "format": "safetensors", **E.info, "parameters": params}
        print(json.dumps(info, indent=2, default=str))
        return 0
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


def cmd_blend_search(args: argparse.Namespace) -> int:
    from teacher.blend_search import SearchConfig, run_search

    if args.identity_net is not None and args.identity_threshold is None:
        raise ValueError(
            "--identity-net needs --identity-threshold T: the embedding distance above which two "
            "faces are different people (dlib's 0.6 applies only to dlib descriptors)"
        )
    if not 0 <= args.max_changed <= 1:
        raise ValueError(f"--max-changed must be a share from 0 to 1, got {args.max_changed}")
    try:
        widths = tuple(dict.fromkeys(float(w) for w in args.width.split(",")))
    except ValueError:
        raise ValueError(f"--width must be a comma list of numbers, got {args.width!r}") from None
    for width in widths:
        if not (width >= 0 and width < float("inf")):
            raise ValueError(f"--width must be >= 0 (0 = hard switch), got {width}")
    cfg = SearchConfig(
        seeds=tuple(parse_seeds(args.seeds)),
        truncation_psi=args.truncation_psi,
        mapping_from=args.mapping_from,
        widths=widths,
        identity_threshold=0.6 if args.identity_threshold is None else args.identity_threshold,
        max_changed=args.max_changed,
        alternatives=args.alternatives,
        batch=args.batch,
    )
    report, text = run_search(
        args.base,
        args.toon,
        args.data,
        cfg,
        args.out,
        style_net=args.style_net,
        inception=args.inception,
        identity_net=args.identity_net,
        photos=args.photos,
        encoder=args.encoder,
        device=pick_device(args.device),
        log=lambda msg: print(msg, file=sys.stderr),
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(text)
        print(f"wrote report.json, table.md, plot.png and the grids to {args.out}")
    return 0


BLEND_DESCRIPTION = (
    "Layer swapping: every synthesis block bK with K <= R comes from --low, every block above R "
    "from --high. Coarse blocks set the structure (head shape, proportions, pose), fine blocks "
    "the rendering (texture, colour, lighting, line work). Both directions are useful: "
    "--low BASE --high TOON keeps the base's structure with the fine-tuned model's rendering "
    "(what the README recipe and the demo use, with --mapping-from low); --low TOON --high BASE "
    "gives the fine-tuned model's structure with the base's rendering (the published toonify "
    "way). toon-teacher blend-search measures both at every level and prints the command."
)

BLEND_SEARCH_DESCRIPTION = (
    "Score every swap level R in {0, 4, ..., resolution} in both directions: "
    "structure-from-base (--low base --high toon) and structure-from-toon (--low toon --high "
    "base), at every --smooth width given (default 0: the hard switch). R=0 of one direction "
    "and R=resolution of the other are the same parent (hard switch); such rows are flagged and "
    "counted once. With --photos and --encoder every generator is scored on the photos' delta "
    "images, photo + G(w) - base(w) (w: the photo's code), instead of seed renders: the "
    "targets of toon-pairs generate --target delta. Style: KID between the blend's renders "
    "(seeds through --mapping-from's mapping at --trunc) and the game set, in the space of "
    "--style-net or --inception (never the model's own discriminator), normalised so 0 = the "
    "fine-tuned model's own renders and 1 = the base's. Identity: per seed, distance between "
    "the base's render and the blend's render of the same w: dlib's face descriptor (renders "
    "under 150 px are upsampled to 150 px first, as dlib needs faces of a reasonable size) or "
    "L2 between --identity-net embeddings; a face counts as changed when the distance exceeds "
    "--identity-threshold (dlib: 0.6, its same-person threshold). Rule: a row keeps identity "
    "when its share of changed faces is at most --max-changed; among rows that keep identity "
    "(rows equal to the base excluded, each parent counted once) the lowest style KID is "
    "recommended (ties: lower mean identity distance, then structure-from-base, then the lower "
    "level); the next --alternatives rows follow. Writes report.json, table.md, plot.png and "
    "grid_<direction>.png to --out. Nothing is downloaded."
)


def _add_trunc(parser: argparse.ArgumentParser, default: float, help: str) -> None:
    """``--trunc``: the truncation psi (the public flag name; stored as ``truncation_psi``)."""
    parser.add_argument("--trunc", dest="truncation_psi", type=float, default=default, help=help)


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
        default="all",
        choices=["all", "G_ema", "G", "D"],
        help="networks to keep (default all the source holds: G, D and G_ema, so one file "
        "serves fine-tuning, projection and rendering)",
    )
    pi.set_defaults(func=cmd_import)

    pn = sub.add_parser("inspect", help="print what a checkpoint file holds")
    pn.add_argument("file")
    pn.set_defaults(func=cmd_inspect)

    ps = sub.add_parser("sample", help="render images for seeds")
    ps.add_argument("--network", required=True, help="generator checkpoint")
    ps.add_argument("--seeds", default="0-15", help="seeds, e.g. 0-15,42 (default 0-15)")
    _add_trunc(ps, 1.0, "truncation psi (default 1)")
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
            "--low",
            required=True,
            help="model for blocks <= R: the coarse structure (recipe and demo: the base; "
            "published toonify: the fine-tuned model)",
        )
        pb.add_argument(
            "--high",
            required=True,
            help="model for blocks above R: the fine rendering (recipe and demo: the fine-tuned "
            "model; published toonify: the base)",
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

    pb = sub.add_parser(
        "blend",
        help="blend two generators by resolution (layer swapping)",
        description=BLEND_DESCRIPTION,
    )
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
    _add_trunc(pg, 1.0, "truncation psi (default 1)")
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

    pq = sub.add_parser(
        "blend-search",
        help="choose the blend level and direction by measurement (style vs identity)",
        description=BLEND_SEARCH_DESCRIPTION,
    )
    pq.add_argument("--base", required=True, help="the realistic base generator")
    pq.add_argument("--toon", required=True, help="the generator fine-tuned from it")
    pq.add_argument(
        "--data", required=True, help="aligned game images (folder or zip, as finetune reads)"
    )
    pq.add_argument("--seeds", default="0-63", help="seeds rendered at every level (default 0-63)")
    _add_trunc(pq, 0.7, "truncation psi (default 0.7, as toon-pairs generate)")
    pq.add_argument(
        "--mapping-from",
        default="base",
        choices=["base", "toon"],
        help="whose mapping network and w_avg map the seeds (default base, as toon-pairs "
        "generate); the printed blend command sets the matching --mapping-from low/high",
    )
    pq.add_argument(
        "--width",
        "--smooth",
        dest="width",
        default="0",
        metavar="W[,W...]",
        help="smooth switch widths in octaves, each searched at every level (default 0: hard "
        "switch; e.g. 0,0.5,1)",
    )
    pq.add_argument(
        "--photos",
        default=None,
        metavar="DIR",
        help="score on real aligned photos (folder or zip at the generator's resolution) instead "
        "of seed renders: each blend's delta image photo + blend(w) - base(w), w from --encoder "
        "(what toon-pairs generate --target delta trains the student on)",
    )
    pq.add_argument(
        "--encoder",
        default=None,
        metavar="FILE",
        help="inversion encoder of the base that codes --photos (toon-teacher encoder train)",
    )
    pq.add_argument(
        "--style-net",
        default=None,
        metavar="FILE",
        help="TorchScript style feature net: net(x), x float32 [N, 3, H, W] in [-1, 1] at the "
        "generator's resolution -> [N, F]",
    )
    pq.add_argument(
        "--inception",
        default=None,
        metavar="FILE",
        help="NVIDIA's inception-2015-12-05.pt (stylegan2-ada-pytorch pretrained/metrics/) as "
        "the style feature net instead",
    )
    pq.add_argument(
        "--identity-net",
        default=None,
        metavar="FILE",
        help="TorchScript face embedding net (same call as --style-net) instead of dlib; "
        "distance = L2 between embeddings",
    )
    pq.add_argument(
        "--identity-threshold",
        type=float,
        default=None,
        metavar="T",
        help="distance above which a face counts as changed (default 0.6 for dlib; required "
        "with --identity-net)",
    )
    pq.add_argument(
        "--max-changed",
        type=float,
        default=0.2,
        help="a level keeps identity when at most this share of faces changed (default 0.2)",
    )
    pq.add_argument("--alternatives", type=int, default=3, help="runner-ups to show (default 3)")
    pq.add_argument("--batch", type=int, default=8, help="images per forward pass")
    pq.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    pq.add_argument("--json", action="store_true", help="print the report as JSON")
    pq.add_argument("--out", required=True, help="output folder")
    pq.set_defaults(func=cmd_blend_search)
    add_finetune_parser(sub)
    add_projection_parsers(sub)
    add_encoder_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``toon-teacher`` with ``argv`` (default: the process arguments); returns the exit
    status (1 with a one-line message for user errors, the traceback behind ``--debug``)."""
    return run_command(PROG, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
