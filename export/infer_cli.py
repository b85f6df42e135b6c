"""``toon-infer``: toonify photos with an exported ONNX model (no PyTorch).

    toon-infer photo.jpg                      -> photo_toon.jpg next to it
    toon-infer a.jpg b.png dir/ 'x/*.jpg' -o out/
    cat photo.jpg | toon-infer - > toon.png
    toon-infer photo.jpg --crop -o crops/     -> the aligned, toonified face crops

The model comes from ``--model``, else ``$TOON_MODEL``, ``./toon.onnx`` or
``~/.local/share/toon-distill/toon.onnx``.

Exit status: 0 when every input was processed, 1 when any file failed (unreadable, no model),
3 when some photo had no face (unless ``--skip-empty``), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import sys
import time
import traceback
from pathlib import Path

from common.cli import error_line, run_command
from common.files import atomic_write
from common.images import IMAGE_EXTENSIONS

PROG = "toon-infer"


def expand_inputs(items: list[str]) -> list[str]:
    """Files, folders (recursive, image files) and globs, in order, without duplicates."""
    out: list[str] = []
    for item in items:
        if item == "-":
            out.append("-")
            continue
        p = Path(item)
        if p.is_dir():
            out.extend(
                str(f)
                for f in sorted(p.rglob("*"))
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif any(ch in item for ch in "*?["):
            out.extend(sorted(glob.glob(item, recursive=True)))
        else:
            out.append(item)
    seen: set[str] = set()
    return [x for x in out if not (x in seen or seen.add(x))]


def output_path(
    src: str, out: str | None, multi: bool, crop: bool, face: int | None, has_alpha: bool
) -> Path:
    """Where the result of ``src`` goes (see the module docstring)."""
    srcp = Path(src) if src != "-" else Path("stdin.png")
    suffix = (
        ".png"
        if has_alpha or crop or srcp.suffix.lower() not in IMAGE_EXTENSIONS
        else (srcp.suffix)
    )
    stem = srcp.stem + "_toon" + (f"_face{face}" if face is not None else "")
    if out is None:
        return srcp.with_name(stem + suffix)
    outp = Path(out)
    if not multi and not crop and outp.suffix.lower() in IMAGE_EXTENSIONS:
        return outp
    return outp / (stem + suffix)


def _save(array, path: Path, quality: int) -> None:
    """Write an image atomically, in the format its suffix names (PNG when unknown)."""
    from PIL import Image

    img = Image.fromarray(array)
    fmt = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".webp": "WEBP",
        ".bmp": "BMP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
    }.get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **options))


def process(src: str, toon, args: argparse.Namespace, multi: bool) -> dict:
    """Toonify one input; returns its report (raises for unreadable files)."""
    from faces.align import align, load_image, paste_back

    t0 = time.perf_counter()
    source = io.BytesIO(sys.stdin.buffer.read()) if src == "-" else src
    image = load_image(source)
    t1 = time.perf_counter()
    faces = align(image, max_faces=args.max_faces, **toon.align_options())
    t2 = time.perf_counter()
    report = {
        "input": src,
        "faces": len(faces),
        "boxes": [f.box.round(1).tolist() for f in faces],
        "outputs": [],
    }
    if not faces:
        report["timings_ms"] = {"load": (t1 - t0) * 1e3, "align": (t2 - t1) * 1e3}
        return report
    import numpy as np

    outputs = toon.run(np.stack([f.crop[:, :, :3] for f in faces]))
    t3 = time.perf_counter()
    has_alpha = image.ndim == 3 and image.shape[2] == 4
    if args.crop:
        results = [(outputs[i], i) for i in range(len(faces))]
    else:
        results = [(paste_back(image, faces, list(outputs)), None)]
    t4 = time.perf_counter()
    for array, face_idx in results:
        if src == "-" and args.output in (None, "-"):
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            sys.stdout.buffer.write(buf.getvalue())
            report["outputs"].append("-")
            continue
        dst = output_path(src, args.output, multi, args.crop, face_idx, has_alpha and not args.crop)
        if src != "-" and dst.resolve() == Path(src).resolve() and not args.overwrite:
            raise ValueError(f"{dst}: output would overwrite the input (use --overwrite)")
        _save(array, dst, args.quality)
        report["outputs"].append(str(dst))
    t5 = time.perf_counter()
    report["timings_ms"] = {
        "load": (t1 - t0) * 1e3,
        "align": (t2 - t1) * 1e3,
        "model": (t3 - t2) * 1e3,
        "paste": (t4 - t3) * 1e3,
        "save": (t5 - t4) * 1e3,
        "total": (t5 - t0) * 1e3,
    }
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Toonify photos with an exported ONNX model (faces found, aligned, "
        "toonified and pasted back).",
        epilog="Model lookup without --model: $TOON_MODEL, ./toon.onnx, "
        "~/.local/share/toon-distill/toon.onnx.",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders, globs, or - for stdin")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output file (one input) or folder; default: next to each input",
    )
    p.add_argument("--model", default=None, help="the .onnx model (see lookup below)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--paste",
        dest="crop",
        action="store_false",
        default=False,
        help="paste toonified faces back into the photo (default)",
    )
    mode.add_argument(
        "--crop",
        dest="crop",
        action="store_true",
        help="write the aligned toonified face crops instead",
    )
    p.add_argument("--max-faces", type=int, default=None, help="faces per photo, largest first")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="expected model input size (checked against the model)",
    )
    p.add_argument(
        "--skip-empty", action="store_true", help="photos without a face are not an error"
    )
    p.add_argument("--overwrite", action="store_true", help="allow replacing an input file")
    p.add_argument("--json", action="store_true", help="print a JSON report per file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=infer)
    return p


def infer(args: argparse.Namespace) -> int:
    """Toonify every input; the exit status of the module docstring."""
    from export.runtime import ModelError, Toonifier, default_model_path

    model = args.model or default_model_path()
    if model is None:
        raise ModelError(
            "no model: pass --model FILE or set TOON_MODEL (make one with "
            "'toon-export onnx --student student.safetensors --out toon.onnx')"
        )
    toon = Toonifier(model, threads=args.threads, device=args.device)
    if args.size is not None and args.size != toon.size:
        print(
            f"{PROG}: error: --size {args.size} but the model expects {toon.size}", file=sys.stderr
        )
        return 2
    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise ValueError("no input images found")
    multi = len(inputs) > 1
    bar = None
    if multi and not args.json:
        from tqdm import tqdm

        bar = tqdm(total=len(inputs), unit="photo", file=sys.stderr)
    failed = empty = 0
    for src in inputs:
        try:
            report = process(src, toon, args, multi)
        except Exception as e:  # one bad file must not stop the batch
            if args.debug:
                traceback.print_exc()
            msg = error_line(e)
            print(
                f"{PROG}: error: {src}: {msg}" if src not in msg else f"{PROG}: error: {msg}",
                file=sys.stderr,
            )
            failed += 1
            report = {"input": src, "error": msg}
        else:
            if report["faces"] == 0:
                empty += 1
                print(
                    f"{PROG}: {src}: no face found" + (", skipped" if args.skip_empty else ""),
                    file=sys.stderr,
                )
        if args.json:
            print(json.dumps(report))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if failed:
        return 1
    if empty and not args.skip_empty:
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-infer``."""
    return run_command(PROG, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
