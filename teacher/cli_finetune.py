"""``toon-teacher finetune``: flags that map one to one onto :class:`teacher.config.TrainConfig`."""

from __future__ import annotations

import argparse
import json

from common.cli import add_deprecated_alias
from common.runs import init_distributed
from teacher.config import TrainConfig, make_config
from teacher.dataset import ImageDataset
from teacher.train import training_loop


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``finetune`` subcommand."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a StyleGAN2-ADA generator with ADA and FreezeD",
        description="Transfer learning from --base to the images in --data. Run the same "
        "command in the same --outdir to resume. Multi-GPU: torchrun --nproc_per_node N "
        "$(which toon-teacher) finetune ...",
    )
    p.add_argument("--data", required=True, help="folder or zip of aligned square images")
    p.add_argument("--base", default="", help="checkpoint to start from (G, D, G_ema)")
    p.add_argument("--outdir", required=True, help="run directory (resumes when it exists)")
    p.add_argument(
        "--preset", default="paper256", help="paper256 (default), paper512, stylegan2, auto or tiny"
    )
    p.add_argument("--kimg", type=float, default=None, help="length in thousands of images")
    p.add_argument(
        "--tick-kimg",
        dest="tick_kimg",
        type=float,
        default=None,
        help="kimg per tick (stats and resume state every tick; default 4)",
    )
    add_deprecated_alias(p, "--tick", "--tick-kimg", "tick_kimg", type=float)
    p.add_argument("--snap", type=int, default=None, help="ticks between network snapshots")
    p.add_argument("--batch", type=int, default=None, help="global batch size")
    p.add_argument(
        "--batch-gpu",
        type=int,
        default=None,
        help="images per forward/backward pass per process (gradient accumulation; default: "
        "the largest that fits the device's memory)",
    )
    p.add_argument("--gamma", dest="r1_gamma", type=float, default=None, help="R1 weight")
    p.add_argument("--lr", type=float, default=None, help="learning rate of G and D")
    add_deprecated_alias(p, "--lrate", "--lr", "lr", type=float)
    p.add_argument("--glr", type=float, default=None, help="learning rate of G (over --lr)")
    p.add_argument("--dlr", type=float, default=None, help="learning rate of D (over --lr)")
    p.add_argument("--mirror", action="store_true", help="add x-flipped copies of the data")
    p.add_argument("--cond", action="store_true", help="use labels from dataset.json")
    p.add_argument(
        "--aug",
        choices=["ada", "fixed", "none"],
        default="ada",
        help="ada: adapt p toward --target (default); fixed: keep --p; none",
    )
    p.add_argument(
        "--augpipe",
        default=None,
        help="augmentation set (bgc default) or ops list, e.g. scale,xflip,noise",
    )
    p.add_argument("--target", type=float, default=None, help="ADA target r_t (default 0.6)")
    p.add_argument("--p", type=float, default=None, help="initial or fixed augmentation p")
    p.add_argument(
        "--ada-kimg",
        type=float,
        default=None,
        help="kimg for p to move by 1 (default 100 with --base, else 500)",
    )
    p.add_argument(
        "--freezed",
        type=int,
        default=None,
        help="freeze the first N layers, from the image side, of the discriminator of --base",
    )
    p.add_argument(
        "--fresh-d",
        action="store_true",
        default=None,
        help="start the discriminator from random weights (needed when --base holds no D)",
    )
    p.add_argument(
        "--freezeg",
        type=int,
        default=None,
        metavar="RES",
        help="keep the generator's blocks up to resolution RES at the base's weights, so a w "
        "draws the same face in both models (0: train every block, the default)",
    )
    p.add_argument(
        "--structure-weight",
        type=float,
        default=None,
        metavar="W",
        help="structure loss: W x the squared difference between the model's and the base's "
        "renders of the same w, downsampled to 4 .. --structure-res px, so the coarse layout "
        "and colours of a face stay the base's while the detail learns the new style "
        "(0: off, the default)",
    )
    p.add_argument(
        "--structure-res",
        type=int,
        default=None,
        metavar="RES",
        help="largest resolution the structure loss compares (default 16)",
    )
    p.add_argument(
        "--noise-mode",
        choices=["random", "const", "none"],
        default=None,
        help="the generator's noise inputs while training (default random, as NVIDIA's; none "
        "makes every detail a function of w)",
    )
    p.add_argument(
        "--freeze-mapping",
        action="store_true",
        default=None,
        help="keep the mapping network at the base's weights",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-reading threads (default: one per spare core, at most 2)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="comma list: fid50k_full, kid50k_full, pr50k3_full (needs feature nets)",
    )
    p.add_argument("--inception", default=None, help="path of inception-2015-12-05.pt")
    p.add_argument("--vgg16", default=None, help="path of vgg16.pt")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)


def config_from_args(args: argparse.Namespace, resolution: int, gpus: int) -> TrainConfig:
    """Preset values overridden by every flag the user gave."""
    over = {
        "data": args.data,
        "base": args.base,
        "outdir": args.outdir,
        "mirror": args.mirror,
        "cond": args.cond,
        "kimg": args.kimg,
        "tick_kimg": args.tick_kimg,
        "snap": args.snap,
        "batch": args.batch,
        "batch_gpu": args.batch_gpu,
        "r1_gamma": args.r1_gamma,
        "glr": args.glr if args.glr is not None else args.lr,
        "dlr": args.dlr if args.dlr is not None else args.lr,
        "fresh_d": args.fresh_d,
        "resolution": resolution,
        "augpipe": args.augpipe,
        "p": args.p,
        "ada_kimg": args.ada_kimg,
        "freezed": args.freezed,
        "freezeg": args.freezeg,
        "freeze_mapping": args.freeze_mapping,
        "structure_weight": args.structure_weight,
        "structure_res": args.structure_res,
        "noise_mode": args.noise_mode,
        "seed": args.seed,
        "workers": args.workers,
        "inception": args.inception,
        "vgg16": args.vgg16,
    }
    if args.metrics:
        over["metrics"] = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if args.aug == "none":
        over["augpipe"] = "none"
        over["target"] = None
    elif args.aug == "fixed":
        over["target"] = None
    elif args.target is not None:
        over["target"] = args.target
    cfg = make_config(args.preset, over, resolution, gpus)
    if args.aug == "fixed":
        cfg = cfg.replace(target=None)
    return cfg


def cmd_finetune(args: argparse.Namespace) -> int:
    data = ImageDataset(args.data)
    di = init_distributed()
    cfg = config_from_args(args, data.resolution, di.world)
    if args.dry_run:
        if di.main:
            print(json.dumps(json.loads(cfg.to_json()), indent=2))
        return 0
    result = training_loop(cfg, di, progress=not args.quiet)
    if result.get("interrupted"):
        return result["exit_status"]  # the loop said where the run stands
    if di.main:
        print(f"done: {result['cur_nimg'] / 1000:.3f} kimg in {cfg.outdir}")
    return 0
