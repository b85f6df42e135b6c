"""``toon-export``: turn a student into a self-contained ONNX model and check it.

Subcommands:
  onnx --student FILE --out toon.onnx   export (+ --fp16 / --int8 --calib PAIRS_DIR), verified
  verify toon.onnx --student FILE       ONNX checker + ONNX Runtime vs torch
  inspect toon.onnx                     print the model's toon.* metadata and io
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.cli import run_command

PROG = "toon-export"


def cmd_onnx(args: argparse.Namespace) -> int:
    from export.onnx_export import export_onnx

    if args.fp16 and args.int8:
        raise ValueError("choose one of --fp16 and --int8")
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ValueError(f"output {out} must end in .onnx")
    report = export_onnx(
        args.student,
        out,
        io=args.io,
        size=args.size,
        precision=precision,
        calib_dir=args.calib,
        opset=args.opset,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        figures = ", ".join(
            f"batch {b}: " + ", ".join(f"{k} {v}" for k, v in entry.items())
            for b, entry in report.checks["batches"].items()
        )
        print(f"wrote {out} ({report.io} io, {report.size} px, {precision}); verified: {figures}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from export.onnx_export import verify_model
    from student.io import load_student

    G = load_student(args.student)
    report = verify_model(args.model, G)
    print(json.dumps(report, indent=2))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import onnx

    try:
        model = onnx.load(str(args.model), load_external_data=False)
    except OSError:
        raise
    except Exception as e:  # onnx raises DecodeError and friends for non-ONNX files
        raise ValueError(f"{args.model}: not an ONNX model ({type(e).__name__})") from None
    graph = model.graph

    def shape(v):
        dims = v.type.tensor_type.shape.dim
        return [d.dim_param or d.dim_value for d in dims]

    info = {
        "file": str(args.model),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": {v.name: shape(v) for v in graph.input},
        "outputs": {v.name: shape(v) for v in graph.output},
        "metadata": {p.key: p.value for p in model.metadata_props},
    }
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per action, each with its ``func``."""
    p = argparse.ArgumentParser(prog=PROG, description="Export a student to ONNX and verify it.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("onnx", help="export a student to a verified ONNX model")
    e.add_argument("--student", required=True, help="student .safetensors (toon-student train)")
    e.add_argument("--out", required=True, help="output .onnx file")
    e.add_argument(
        "--io",
        choices=["uint8", "float"],
        default="uint8",
        help="uint8 NHWC RGB in/out (default) or float32 NCHW in [-1, 1]",
    )
    e.add_argument(
        "--size",
        type=int,
        default=None,
        help="input size (default: the student's training resolution)",
    )
    e.add_argument("--fp16", action="store_true", help="float16 weights and compute (GPUs)")
    e.add_argument("--int8", action="store_true", help="int8 convolutions (static quantization)")
    e.add_argument("--calib", default=None, help="pairs folder for --int8 calibration")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_onnx)

    v = sub.add_parser("verify", help="check an exported model against its student")
    v.add_argument("model")
    v.add_argument("--student", required=True)
    v.set_defaults(func=cmd_verify)

    i = sub.add_parser("inspect", help="print a model's io and toon.* metadata")
    i.add_argument("model")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-export`` (no arguments: the usage, exit status 2)."""
    return run_command(PROG, build_parser(), argv, usage_without_command=True)


if __name__ == "__main__":
    raise SystemExit(main())
