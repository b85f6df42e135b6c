"""``toon-infer``: toonify photos with an exported ONNX model (no PyTorch).

    toon-infer photo.jpg                      -> photo_toon.jpg next to it
    toon-infer a.jpg b.png dir/ 'x/*.jpg' -o out/
    cat photo.jpg | toon-infer - > toon.png
    toon-infer photo.jpg --crop -o crops/     -> the aligned, toonified face crops
    toon-infer photo.jpg --paste-mask square  -> paste the whole crop square (the old look)
    toon-infer clip.mp4 [-o out/] [--mode paste|crop]  -> clip_toon.mp4 (see export.video)

Paste mode blends each toonified crop into the photo through a soft mask of the person (head,
hair, neck) drawn from the face's landmarks (:mod:`faces.mask`), so the photo around the person
stays as it was; ``--paste-mask square`` blends the whole aligned square instead. The photo
gets the model's *change* of its crop rather than the crop itself, so what the model leaves as
it was keeps the photo's own pixels and sharpness; ``--paste-blend replace`` pastes the output
itself (:func:`faces.align.paste_back`).

The model comes from ``--model``, else ``$TOON_MODEL``, ``./toon.onnx`` or
``~/.local/share/toon-distill/toon.onnx``.

Where outputs go (names depend only on the paths, so a rerun finds them):

- ``NAME_toon.EXT`` (``--crop``: ``NAME_toon_faceK.png``) next to each input, or under the
  folder ``-o OUT``, keeping each input's folders relative to the deepest folder that holds
  every argument (one folder argument: relative to it). Two inputs never share an output.
- EXT is the input's own (``.jpg``, ``.png``, ``.webp``, ``.bmp``, ``.tif``), else ``.png``.
- ``-o FILE.png`` with one input names the file; stdin (``-``) goes to stdout as PNG unless
  ``-o`` names a file or folder (then ``stdin_toon.png``); ``-o -`` writes one result to stdout.
- An existing output is an error for that input (nothing written; the batch goes on) unless
  ``--overwrite`` (replace it) or ``--skip-existing`` (keep it, skip the input) is given.

Videos (``.mp4``, ``.mov``, ``.mkv``, ``.webm``, ``.avi``...; :mod:`export.video`) are written
as ``NAME_toon.mp4`` (MP4, M4V, MOV and MKV inputs keep their container): every frame, same
size and frame rate, H.264, audio copied; faces are tracked between detections and their
landmarks smoothed over time. A damaged or truncated video is an error for that input and leaves
no output file.

Exit status: 0 when every input was processed (or skipped), 1 when any input failed
(unreadable, too large, output exists, no model), 3 when some photo had no face (unless
``--skip-empty``), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

from common.cli import error_line, run_command
from common.files import temp_path
from common.images import IMAGE_EXTENSIONS
from export.video_io import VIDEO_SUFFIXES, add_video_arguments, is_video

PROG = "toon-infer"
STDOUT = "-"
# Input suffixes whose format an output keeps (any other input gives a PNG).
KEPT_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
MAGIC = "*?["


class OutputExistsError(FileExistsError):
    """The output file is already there and neither --overwrite nor --skip-existing was given."""


def expand_inputs(items: list[str], empty: list[str] | None = None) -> list[str]:
    """Files, folders (recursive, image and video files) and globs, in order, without
    duplicates (the same file reached by two paths counts once). Items that expand to nothing
    are appended to ``empty``. Inside folders, links with an image or video suffix are kept
    even when broken, so that they are reported rather than silently left out."""
    out: list[str] = []
    for item in items:
        if item == "-":
            out.append("-")
            continue
        p = Path(item)
        if p.is_dir():
            found = [
                str(f)
                for f in sorted(p.rglob("*"))
                if (f.suffix.lower() in IMAGE_EXTENSIONS or f.suffix.lower() in VIDEO_SUFFIXES)
                and (f.is_file() or f.is_symlink())
            ]
        elif any(ch in item for ch in MAGIC):
            found = sorted(glob.glob(item, recursive=True))
        else:
            found = [item]
        if not found and empty is not None:
            empty.append(item)
        out.extend(found)
    seen: set[object] = set()
    result = []
    for x in out:
        try:
            st = os.stat(x)
            key: object = (st.st_dev, st.st_ino)
        except (OSError, ValueError):
            key = x
        if key not in seen:
            seen.add(key)
            result.append(x)
    return result


def _anchor(item: str) -> str:
    """The folder an argument's files lie under: a folder itself, a file's folder, a glob's
    leading folders without wildcards."""
    p = Path(item)
    if p.is_dir():
        return os.path.abspath(p)
    if any(ch in item for ch in MAGIC):
        fixed = []
        for part in p.parts[:-1]:
            if any(ch in part for ch in MAGIC):
                break
            fixed.append(part)
        return os.path.abspath(Path(*fixed)) if fixed else os.path.abspath(".")
    return os.path.abspath(p.parent)


def output_base(items: list[str]) -> Path | None:
    """The deepest folder that holds every argument (None for stdin alone): outputs under
    ``-o OUT`` keep their path relative to it."""
    anchors = [_anchor(item) for item in items if item != "-"]
    return Path(os.path.commonpath(anchors)) if anchors else None


def output_path(
    src: str,
    out: str | None,
    multi: bool,
    crop: bool,
    face: int | None,
    base: Path | None = None,
) -> Path:
    """Where the result of ``src`` goes (see the module docstring); from the paths alone."""
    srcp = Path(src) if src != "-" else Path("stdin.png")
    suffix = srcp.suffix if srcp.suffix.lower() in KEPT_SUFFIXES and not crop else ".png"
    name = srcp.stem + "_toon" + (f"_face{face}" if face is not None else "") + suffix
    if out is None:
        return srcp.with_name(name)
    outp = Path(out)
    if not multi and not crop and outp.suffix.lower() in IMAGE_EXTENSIONS:
        return outp
    if src == "-" or base is None:
        return outp / name
    try:
        rel = Path(os.path.abspath(src)).relative_to(base).parent
    except ValueError:
        rel = Path()
    return outp / rel / name


def _encode(array, fmt: str, quality: int, dest) -> None:
    from PIL import Image

    img = Image.fromarray(array)
    if fmt in ("JPEG", "BMP") and img.mode == "RGBA":
        img = img.convert("RGB")
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    img.save(dest, format=fmt, **options)


def _save(array, path: Path, quality: int, overwrite: bool = False) -> None:
    """Write an image atomically, in the format its suffix names (PNG when unknown). Without
    ``overwrite`` an existing ``path`` is never replaced, even one created meanwhile:
    :class:`OutputExistsError`."""
    fmt = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".webp": "WEBP",
        ".bmp": "BMP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
    }.get(path.suffix.lower(), "PNG")
    tmp = temp_path(path)
    try:
        _encode(array, fmt, quality, tmp)
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic, and fails when path exists
        except FileExistsError:
            raise _exists(path) from None
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise _exists(path) from None
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _exists(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path} exists (pass --overwrite to replace it, or --skip-existing to keep it)"
    )


class Outputs:
    """The files written in this run: a second input whose output is one of them (same name
    on a case-insensitive disk, an input with a kept and one with a PNG suffix...) is an
    error, never a silent replacement."""

    def __init__(self) -> None:
        self.by_path: dict[str, str] = {}
        self.by_inode: dict[tuple[int, int], str] = {}

    def owner(self, dst: Path) -> str | None:
        """The input that already wrote ``dst`` in this run, or None."""
        who = self.by_path.get(os.path.abspath(dst))
        if who is None:
            try:
                st = os.stat(dst)
            except OSError:
                return None
            who = self.by_inode.get((st.st_dev, st.st_ino))
        return who

    def add(self, dst: Path, src: str) -> None:
        self.by_path[os.path.abspath(dst)] = src
        try:
            st = os.stat(dst)
        except OSError:
            return
        self.by_inode[(st.st_dev, st.st_ino)] = src


def _check_target(dst: Path, src: str, args: argparse.Namespace, written: Outputs) -> bool:
    """Whether ``dst`` may be written (False: skip it, it exists and --skip-existing); raises
    when it may not."""
    who = written.owner(dst)
    if who is not None:
        raise OutputExistsError(
            f"{dst} was already written for {who} in this run (two inputs map to one output "
            "name; rename one or process them separately)"
        )
    if not os.path.lexists(dst):
        return True
    if args.skip_existing:
        return False
    if src != "-" and dst.resolve() == Path(src).resolve() and not args.overwrite:
        raise OutputExistsError(f"{dst}: output would overwrite the input (use --overwrite)")
    if not args.overwrite:
        raise _exists(dst)
    return True


def _to_stdout(args: argparse.Namespace, src: str) -> bool:
    return args.output == STDOUT or (src == "-" and args.output is None)


def process(
    src: str,
    toon,
    args: argparse.Namespace,
    multi: bool,
    base: Path | None = None,
    written: Outputs | None = None,
) -> dict:
    """Toonify one input; returns its report (raises for unreadable files and outputs that
    may not be written)."""
    from faces.align import align, paste_back
    from faces.image import ImageTooLargeError, load_image

    written = written if written is not None else Outputs()
    report: dict = {"input": src, "outputs": []}
    stdout = _to_stdout(args, src)
    if stdout and sys.stdout.isatty():
        raise ValueError("refusing to write a PNG to a terminal: redirect stdout or pass -o FILE")
    if not stdout and not args.crop:  # the output is known before decoding: check it first
        dst = output_path(src, args.output, multi, False, None, base)
        if not _check_target(dst, src, args, written):
            report.update(skipped="output exists", outputs=[str(dst)])
            return report
    t0 = time.perf_counter()
    if src == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError("stdin is a terminal: pipe a photo in (cat photo.jpg | toon-infer -)")
        source = sys.stdin.buffer
    else:
        source = src
    try:
        image = load_image(source, max_pixels=args.max_pixels, name="stdin" if src == "-" else src)
    except ImageTooLargeError as e:
        raise ImageTooLargeError(f"{error_line(e)}; raise --max-pixels to read it") from None
    t1 = time.perf_counter()
    faces = align(image, max_faces=args.max_faces, **toon.align_options())
    t2 = time.perf_counter()
    report.update(faces=len(faces), boxes=[f.box.round(1).tolist() for f in faces])
    if not faces:
        report["timings_ms"] = {"load": (t1 - t0) * 1e3, "align": (t2 - t1) * 1e3}
        return report
    import numpy as np

    outputs = toon.run(np.stack([f.crop[:, :, :3] for f in faces]))
    t3 = time.perf_counter()
    if args.crop:
        results = [(outputs[i], i) for i in range(len(faces))]
    else:
        pasted = paste_back(
            image, faces, list(outputs), mode=args.paste_mask, blend=args.paste_blend
        )
        results = [(pasted, None)]
    t4 = time.perf_counter()
    if stdout:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(results[0][0]).save(buf, format="PNG")
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.buffer.flush()
        report["outputs"].append("-")
    else:
        targets = [
            (array, output_path(src, args.output, multi, args.crop, face_idx, base))
            for array, face_idx in results
        ]
        # Every target is checked before the first is written: an item is all or nothing.
        todo = [(a, d) for a, d in targets if _check_target(d, src, args, written)]
        if not todo:
            report["skipped"] = "output exists"
        for array, dst in todo:
            _save(array, dst, args.quality, overwrite=args.overwrite)
            written.add(dst, src)
        report["outputs"] = [str(d) for _, d in targets]
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


def _int_range(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (hi None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from export.runtime import MAX_SIZE, MAX_THREADS, MIN_SIZE
    from faces.align import PASTE_BLENDS, PASTE_MODES
    from faces.image import MAX_PIXELS

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Toonify photos with an exported ONNX model (faces found, aligned, "
        "toonified and pasted back).",
        epilog="Model lookup without --model: $TOON_MODEL, ./toon.onnx, "
        "~/.local/share/toon-distill/toon.onnx. Outputs: NAME_toon.EXT next to each input, or "
        "under -o OUT keeping the inputs' folders relative to the deepest folder holding every "
        "argument, so two inputs never share an output. An existing output is an error for that "
        "input unless --overwrite or --skip-existing. Exit status: 0 done, 1 some input failed, "
        "3 some photo had no face, 2 usage.",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders, globs, or - for stdin")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output file (one input), folder (keeps the inputs' folder structure), or - for "
        "stdout (one input, PNG); default: next to each input, stdin to stdout",
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
    mode.add_argument(
        "--mode",
        choices=["paste", "crop"],
        default=None,
        help="the same as --paste or --crop (for videos, crop writes the main face's crop)",
    )
    p.add_argument(
        "--paste-mask",
        choices=PASTE_MODES,
        default=PASTE_MODES[0],
        help="where the toonified crop replaces the photo: person (default: the head, hair and "
        "neck, from the face's landmarks; the photo around them is kept) or square (the whole "
        "aligned crop, with a feathered edge)",
    )
    p.add_argument(
        "--paste-blend",
        choices=PASTE_BLENDS,
        default=PASTE_BLENDS[0],
        help="how the toonified crop enters the photo: change (default: the model's change of "
        "its crop is added to the photo, so what it left as it was keeps the photo's own "
        "pixels and sharpness) or replace (the model's output itself: only its look, as soft "
        "as its resolution where the face is larger)",
    )
    p.add_argument(
        "--max-faces", type=_int_range(1), default=None, help="faces per photo, largest first"
    )
    p.add_argument(
        "--size",
        type=_int_range(MIN_SIZE, MAX_SIZE),
        default=None,
        help="expected model input size (checked against the model)",
    )
    p.add_argument(
        "--skip-empty", action="store_true", help="photos without a face are not an error"
    )
    existing = p.add_mutually_exclusive_group()
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (an input too, when -o names it)",
    )
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose output exists (a rerun does the rest)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report per file")
    p.add_argument(
        "--threads",
        type=_int_range(1, MAX_THREADS),
        default=None,
        help="CPU threads for the model (default: ONNX Runtime's choice; 1 with videos, whose "
        "decoding and encoding run beside it)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--quality", type=_int_range(1, 100), default=95, help="JPEG/WebP quality 1-100 (95)"
    )
    p.add_argument(
        "--max-pixels",
        type=_int_range(1),
        default=MAX_PIXELS,
        help=f"refuse larger images (width x height, from the header, before decoding; "
        f"default {MAX_PIXELS})",
    )
    add_video_arguments(p, _int_range)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=infer)
    return p


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def infer(args: argparse.Namespace) -> int:
    """Toonify every input; the exit status of the module docstring."""
    from export.runtime import ModelError, Toonifier, default_model_path

    if args.mode is not None:
        args.crop = args.mode == "crop"
    empty_items: list[str] = []
    inputs = expand_inputs(args.inputs, empty_items)
    multi = len(inputs) > 1
    if args.output == STDOUT and (multi or args.crop):
        return _usage_error("-o - (stdout) takes one input and no --crop")
    if "-" in inputs and args.output is None and args.crop:
        return _usage_error("--crop with stdin writes one file per face: pass -o FOLDER")
    if args.json and any(_to_stdout(args, src) for src in inputs if not is_video(src)):
        return _usage_error("--json prints to stdout, where the image would go: pass -o FILE")
    model = args.model or default_model_path()
    if model is None:
        raise ModelError(
            "no model: pass --model FILE or set TOON_MODEL (make one with "
            "'toon-export onnx --student student.safetensors --out toon.onnx')"
        )
    threads = args.threads
    if threads is None and any(is_video(src) for src in inputs):
        threads = 1  # the model on one core; decoding and encoding take the other
    toon = Toonifier(model, threads=threads, device=args.device)
    if args.size is not None and args.size != toon.size:
        return _usage_error(f"--size {args.size} but the model expects {toon.size}")
    for item in empty_items:
        print(f"{PROG}: warning: {item}: no image files found", file=sys.stderr)
    if not inputs:
        raise ValueError("no input images found")
    base = output_base(args.inputs) if args.output not in (None, STDOUT) else None
    written = Outputs()
    bar = None
    if multi and not args.json:
        from tqdm import tqdm

        unit = "file" if any(is_video(src) for src in inputs) else "photo"
        bar = tqdm(total=len(inputs), unit=unit, file=sys.stderr)
    failed = empty = skipped = 0
    for src in inputs:
        try:
            if is_video(src):
                from export.video import process_video

                report = process_video(src, toon, args, multi, base, written)
            else:
                report = process(src, toon, args, multi, base, written)
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
            if "skipped" in report:
                skipped += 1
            elif report.get("frames_with_faces", report.get("faces")) == 0:
                empty += 1
                print(
                    f"{PROG}: {src}: no face found" + (", skipped" if args.skip_empty else ""),
                    file=sys.stderr,
                )
        if args.json:
            print(json.dumps(report), flush=True)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if skipped:
        print(f"{PROG}: {skipped} input(s) skipped: output exists", file=sys.stderr)
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
