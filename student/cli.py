"""``toon-student``: train the lightweight pix2pix student, evaluate it, run it on crops.

Subcommands:
  train --pairs DIR --outdir DIR       train (or resume) a student; flags mirror StudentConfig
  eval --student FILE --pairs DIR      held-out L1 / PSNR / SSIM (+ FID, LPIPS) as JSON, a grid
  apply --student FILE --input DIR --out DIR
                                       run the torch model on aligned crops (ONNX reference)
  inspect FILE                         what a student file holds (JSON)

Multi-GPU: ``torchrun --nproc_per_node N $(which toon-student) train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from common.cli import run_command

PROG = "toon-student"
_NONE = "__none__"


def _none_or_float(text: str) -> Any:
    return _NONE if text.strip().lower() == "none" else float(text)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`StudentConfig` field (``--field-name``), default None = preset's."""
    from student.config import StudentConfig

    for f in dataclasses.fields(StudentConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if f.name in ("pairs", "outdir"):
            kw["required"] = True
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name == "ema_rampup":
            kw["type"] = _none_or_float
            kw["metavar"] = "FLOAT|none"
        elif isinstance(default, tuple):
            kw["type"] = _floats
            kw["metavar"] = "A,B"
        elif isinstance(default, int):
            kw["type"] = int
        elif isinstance(default, float):
            kw["type"] = float
        p.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace):
    """Preset values overridden by every flag the user gave."""
    from student.config import StudentConfig, make_config

    over = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(StudentConfig)
        if f.name != "preset"
    }
    if getattr(args, "lr", None) is not None:  # --lr sets both rates unless one is given
        over["glr"] = over["glr"] if over["glr"] is not None else args.lr
        over["dlr"] = over["dlr"] if over["dlr"] is not None else args.lr
    none_fields = [k for k, v in over.items() if v == _NONE]
    for k in none_fields:
        over[k] = None
    cfg = make_config(args.preset, over)
    if none_fields:
        cfg = cfg.replace(**{k: None for k in none_fields})
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from common.runs import init_distributed
    from student.train import training_loop

    cfg = config_from_args(args)
    if args.dry_run:
        print(json.dumps(json.loads(cfg.to_json()), indent=2))
        return 0
    di = init_distributed()
    result = training_loop(cfg, di, progress=not args.quiet)
    if result.get("interrupted"):
        return result["exit_status"]  # the loop said where the run stands
    if di.main:
        print(
            f"done: {result['cur_nimg'] / 1000:.3f} kimg; student in "
            f"{Path(cfg.outdir) / 'student.safetensors'}"
        )
    return 0


def _write_json(report: dict[str, Any], path: str | None) -> None:
    text = json.dumps(report, indent=2, default=str)
    if path:
        from common.files import atomic_write_text

        atomic_write_text(path, text + "\n")
    print(text)


def cmd_eval(args: argparse.Namespace) -> int:
    from common.runs import pick_device
    from student.evaluate import evaluate_student

    report = evaluate_student(
        args.student,
        args.pairs,
        holdout_percent=args.holdout_percent,
        max_pairs=args.max_pairs,
        batch=args.batch,
        device=pick_device(args.device),
        inception=args.inception,
        vgg16=args.vgg16,
        grid_path=args.grid,
        grid_rows=args.grid_rows,
        progress=not args.quiet,
    )
    _write_json(report, args.out)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from common.runs import pick_device
    from student.apply import apply_student

    result = apply_student(
        args.student,
        args.input,
        args.out,
        size=args.size,
        batch=args.batch,
        device=pick_device(args.device),
        progress=not args.quiet,
    )
    for reason in result["failed"]:
        print(f"{PROG}: skipped {reason}", file=sys.stderr)
    print(
        f"wrote {result['written']} images to {result['out']}"
        + (f" ({len(result['failed'])} skipped)" if result["failed"] else "")
    )
    return 1 if result["failed"] and not result["written"] else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from student.io import student_summary

    print(json.dumps(student_summary(args.file), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``toon-student`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Student: train, evaluate and run the lightweight pix2pix model."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser(
        "train",
        help="train (or resume) a student on a pairs dataset",
        description="Train the student on --pairs. Run the same command in the same --outdir "
        "to resume. Multi-GPU: torchrun --nproc_per_node N $(which toon-student) train ...",
    )
    pt.add_argument("--preset", default="paper256", help="paper256 (default) or tiny")
    add_config_flags(pt)
    pt.add_argument("--lr", type=float, default=None, help="learning rate of G and D (Adam)")
    pt.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.set_defaults(func=cmd_train)

    pe = sub.add_parser("eval", help="score a student against the teacher on held-out pairs")
    pe.add_argument("--student", required=True, help="student .safetensors")
    pe.add_argument("--pairs", required=True, help="pairs dataset folder")
    pe.add_argument("--out", default=None, help="write the JSON report here too")
    pe.add_argument("--grid", default=None, help="write a src | student | teacher PNG here")
    pe.add_argument("--grid-rows", type=int, default=8, help="pairs in the grid (default 8)")
    pe.add_argument(
        "--holdout-percent",
        type=float,
        default=None,
        help="held-out split (default: the one the student was trained with)",
    )
    pe.add_argument("--max-pairs", type=int, default=None, help="score at most N held-out pairs")
    pe.add_argument(
        "--inception", default=None, help="NVIDIA inception-2015-12-05.pt for FID (optional)"
    )
    pe.add_argument("--vgg16", default=None, help="NVIDIA vgg16.pt for LPIPS (optional)")
    pe.add_argument("--batch", type=int, default=16, help="pairs per forward pass")
    pe.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    pe.add_argument("--quiet", action="store_true", help="no progress bar")
    pe.set_defaults(func=cmd_eval)

    pa = sub.add_parser("apply", help="run a student on aligned crops (torch reference)")
    pa.add_argument("--student", required=True, help="student .safetensors")
    pa.add_argument("--input", required=True, help="image file or folder (searched recursively)")
    pa.add_argument("--out", required=True, help="output folder (PNG, same relative paths)")
    pa.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize crops to N x N (default: the training resolution; 0: keep)",
    )
    pa.add_argument("--batch", type=int, default=8, help="images per forward pass")
    pa.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    pa.add_argument("--quiet", action="store_true", help="no progress bar")
    pa.set_defaults(func=cmd_apply)

    pi = sub.add_parser("inspect", help="print what a student file holds (JSON)")
    pi.add_argument("file")
    pi.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-student``; returns the exit status (1 with a one-line error)."""
    return run_command(PROG, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
