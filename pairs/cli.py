"""``toon-pairs``: align faces, prepare datasets, generate (photo, game-style) training pairs.

Subcommands:
  align IN_DIR OUT   align every image of a folder (recursive) into a folder or .zip in the
                     layout of NVIDIA's dataset_tool.py, with a JSON report; resumable
  generate ...       render pairs with the base and blended teachers into shards; resumable
  annotate REPORT|DIR  click hand landmarks for images the detector missed, in a local page
  verify DIR         check a pairs folder's shards against its manifest
  preview DIR        src/dst grid of some pairs
  stats DIR          counts and settings of a pairs folder

Imports no torch, except ``generate`` (which renders with the teachers).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from common.cli import run_command

PROG = "toon-pairs"
MAX_ERROR_LINES = 10  # files whose error align prints (all are in the report)


def cmd_align(args: argparse.Namespace) -> int:
    from faces.align import AlignConfig
    from pairs.prepare import PrepareConfig, prepare_dataset, report_path, work_path

    cfg = PrepareConfig(
        align=AlignConfig(
            size=args.size,
            detector=args.detector,
            upsample=args.upsample,
            detect_size=args.detect_size,
            retry_upsample=not args.no_retry,
            max_faces=args.max_faces,
            min_face_size=args.min_face_size,
            predictor=args.predictor,
            cnn_model=args.cnn_model,
            transform_size=args.transform_size,
            refine=not args.no_refine,
        ),
        all_faces=args.all_faces or args.max_faces is not None,
        background=args.background,
        landmarks=args.landmarks,
        workers=args.workers,
    )
    if args.dry_run:
        print(json.dumps(asdict(cfg), indent=2))
        return 0
    try:
        rep = prepare_dataset(
            args.in_dir, args.out, cfg, progress=not args.quiet, report=args.report
        )
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; finished files are kept in {work_path(Path(args.out))}, "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    s = rep["summary"]
    rpath = args.report or report_path(Path(args.out))
    print(
        f"wrote {args.out}: {s['faces_kept']} faces from {s['files_with_faces']} of "
        f"{s['files']} images; no face: {s['no_face']}, skipped: {s['skipped']}, "
        f"errors: {s['errors']}; report {rpath}"
    )
    errors = [f for f in rep["files"] if f["status"] == "error"]
    for f in errors[:MAX_ERROR_LINES]:
        reason = f["reason"]
        named = f["file"].rsplit("/", 1)[-1] in reason  # most errors name their file already
        line = reason if named else f"{f['file']}: {reason}"
        print(f"{PROG}: {line}", file=sys.stderr)
    if len(errors) > MAX_ERROR_LINES:
        print(
            f"{PROG}: ... {len(errors) - MAX_ERROR_LINES} more errors in {rpath}", file=sys.stderr
        )
    if s["need_landmarks"]:
        print(
            f"{len(s['need_landmarks'])} images need hand landmarks (--landmarks FILE.json): "
            "see need_landmarks in the report"
        )
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from pairs.annotate import Annotator, make_server, open_target

    target = open_target(args.target, args.out, args.size, args.background)
    server = make_server(Annotator(target), args.port)
    port = server.server_address[1]
    print(
        f"annotate: {len(target.files)} image(s); landmarks go to {target.landmarks}\n"
        f"open http://127.0.0.1:{port}/ in a browser (Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"annotate: stopped; run align with --landmarks {target.landmarks}", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _help(parser: argparse.ArgumentParser) -> int:
    """Without a subcommand: the help (which lists the commands) on stderr, exit status 2."""
    parser.print_help(sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Face alignment and dataset preparation (torch-free)."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=lambda _args: _help(p))  # no subcommand; each subcommand sets its own
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pa = sub.add_parser(
        "align",
        help="align every image of a folder into a dataset (folder or .zip)",
        description=(
            "Align every image under IN_DIR (recursive) the FFHQ way into OUT, a folder or a "
            ".zip in the layout of NVIDIA's dataset_tool.py (NNNNN/imgNNNNNNNN.png + "
            "dataset.json). Writes NAME.report.json beside OUT; keeps finished work in "
            "OUT.work/ so that an interrupted or repeated run redoes only what changed."
        ),
    )
    pa.add_argument("in_dir", metavar="IN_DIR", help="folder of images (searched recursively)")
    pa.add_argument("out", metavar="OUT", help="output folder, or a file ending in .zip")
    pa.add_argument("--size", type=_positive_int, default=256, help="output side (default 256)")
    pa.add_argument(
        "--workers", type=int, default=0, help="worker processes (default 0: all cores)"
    )
    pa.add_argument(
        "--min-face-size",
        type=float,
        default=64.0,
        help="skip faces whose detector box is smaller, in source pixels (default 64)",
    )
    pa.add_argument(
        "--all-faces",
        action="store_true",
        help="keep every face of an image (default: only the largest)",
    )
    pa.add_argument(
        "--max-faces",
        type=_positive_int,
        default=None,
        help="keep at most N faces per image, largest first (implies --all-faces)",
    )
    pa.add_argument(
        "--detector",
        default="hog+cnn",
        choices=["hog", "cnn", "hog+cnn"],
        help="dlib HOG, dlib CNN (MMOD), or HOG then CNN where HOG finds none (default)",
    )
    pa.add_argument("--upsample", type=int, default=0, help="detector upsampling steps (default 0)")
    pa.add_argument(
        "--detect-size",
        type=int,
        default=640,
        help="search for faces on a copy with this longest side (default 640; 0: full size)",
    )
    pa.add_argument(
        "--no-retry",
        action="store_true",
        help="do not retry HOG at twice the resolution on images where it finds nothing",
    )
    pa.add_argument(
        "--no-refine",
        action="store_true",
        help="do not re-predict landmarks inside the crop for faces found by the CNN",
    )
    pa.add_argument(
        "--landmarks",
        metavar="FILE.json",
        help="hand landmarks for images the detector misses: {image path: points}",
    )
    pa.add_argument("--predictor", metavar="FILE", help="dlib 68-point shape predictor .dat")
    pa.add_argument("--cnn-model", metavar="FILE", help="dlib MMOD face detector .dat")
    pa.add_argument(
        "--transform-size",
        type=_positive_int,
        default=None,
        help="quad transform size before the final resize (default auto; NVIDIA FFHQ: 4096)",
    )
    pa.add_argument(
        "--background",
        default="white",
        help="colour under transparent pixels (name or #rrggbb, default white)",
    )
    pa.add_argument("--report", metavar="FILE", help="report path (default NAME.report.json)")
    pa.add_argument("--quiet", action="store_true", help="no progress bar")
    pa.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    pa.set_defaults(func=cmd_align)

    pn = sub.add_parser(
        "annotate",
        help="click hand landmarks for images the detector missed, in a local web page",
        description=(
            "Serve a page on 127.0.0.1 that shows each image under need_landmarks of an align "
            "report (or every image of a folder); four clicks (left eye, right eye, left and "
            "right mouth corner, as seen in the image) with undo and a preview of the aligned "
            "crop; saving merges the entry into the --landmarks JSON that align reads."
        ),
    )
    pn.add_argument(
        "target", metavar="REPORT_OR_FOLDER", help="NAME.report.json from align, or a folder"
    )
    pn.add_argument(
        "--out",
        metavar="FILE.json",
        help="landmarks file to merge into (default: the report's --landmarks, else "
        "NAME.landmarks.json beside the report or folder)",
    )
    pn.add_argument(
        "--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any)"
    )
    pn.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="preview crop side (default: the report's, or 256)",
    )
    pn.add_argument(
        "--background",
        default=None,
        help="colour under transparent pixels (default: the report's, or white)",
    )
    pn.set_defaults(func=cmd_annotate)
    from pairs.cli_generate import add_generate_commands

    add_generate_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-pairs``; without a subcommand prints the help and returns 2."""
    return run_command(PROG, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
