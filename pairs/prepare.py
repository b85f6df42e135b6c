"""Dataset preparation: every image of a folder -> aligned faces in NVIDIA's dataset layout.

The output (a folder, or a ``.zip`` written atomically) is what stylegan2-ada-pytorch's
``dataset_tool.py`` produces, so NVIDIA's training code reads it too::

    00000/img00000000.png
    00000/img00000001.png
    ...
    00001/img00001000.png
    dataset.json            {"labels": null}

Images are RGB PNGs of ``size`` x ``size``, numbered in the order of (source path, face index),
whatever the number of workers. A JSON report beside the output (``NAME.report.json``) lists per
source file the faces found and kept, the reason when one is skipped, and which dataset images
came from it; ``need_landmarks`` lists the files where no face was found (give those by hand with
``--landmarks``).

Resume: finished files are recorded in ``OUT.work/`` (one JSON record and the aligned PNGs per
source file, each written to a temporary name and renamed: :mod:`common.files`). Running the same
command again skips every file whose record matches its size, modification time, the settings and
its hand landmarks, then rebuilds the output. The work folder is kept so that later runs (new
images, hand landmarks for missed ones) redo only what changed; delete it once the dataset is
final.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import sys
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import ImageColor

from common.files import atomic_write, atomic_write_text
from common.images import save_png
from common.workers import exit_with_parent
from faces.align import AlignConfig, Aligner, parse_landmarks
from faces.image import AlignError, composite, load_image

IMAGE_EXTS = {
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
}  # fmt: skip
REPORT_VERSION = 1
DATASET_ALIGN = AlignConfig(detector="hog+cnn", min_face_size=64.0)


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of ``toon-pairs align``; CLI flags map one to one to these fields."""

    # Detection and crop settings; for datasets the CNN detector runs on images HOG misses, and
    # faces under 64 px (box side in the source image) are skipped.
    align: AlignConfig = field(default_factory=lambda: DATASET_ALIGN)
    all_faces: bool = False  # keep every face of an image (default: only the largest)
    background: str = "white"  # colour transparent pixels are composited onto (output is RGB)
    landmarks: str | None = None  # JSON file of hand landmarks for images the detector misses
    workers: int = 0  # processes (0: all cores)
    png_compress_level: int = 1  # zlib level of the PNGs (NVIDIA's tool uses 0)

    def fingerprint(self) -> str:
        """Hash of the settings that change the output images (not workers or paths)."""
        d = asdict(self)
        for k in ("workers", "landmarks"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def background_rgb(self) -> tuple[int, int, int]:
        try:
            return ImageColor.getrgb(self.background)[:3]
        except ValueError:
            raise AlignError(f"unknown --background colour {self.background!r}") from None


def archive_name(idx: int) -> str:
    """NVIDIA dataset_tool's name for image ``idx``: ``00012/img00012345.png``."""
    s = f"{idx:08d}"
    return f"{s[:5]}/img{s}.png"


def report_path(out: Path) -> Path:
    """``game.zip`` -> ``game.report.json``; folder ``game`` -> ``game.report.json``."""
    stem = out.name[: -len(".zip")] if out.suffix.lower() == ".zip" else out.name
    return out.with_name(stem + ".report.json")


def work_path(out: Path) -> Path:
    """``OUT.work``: the folder of finished per-file work that makes a rerun resume."""
    return out.with_name(out.name + ".work")


def _atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _temp_name(final: Path) -> Path:
    """A hidden temporary name beside ``final``, ``.{name}.XXXXXXXX.tmp`` (the pattern of
    :func:`common.files.temp_path`), for the dataset folder swap; nothing is created."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")


def _stale_temps(folder: Path, name: str) -> list[Path]:
    """Temporary files or folders of ``name`` in ``folder`` left by an interrupted run."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp$")
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if pattern.match(p.name)]


def find_images(in_dir: Path, exclude: Iterable[Path] = ()) -> tuple[list[Path], int]:
    """Image files under ``in_dir`` (recursive, hidden entries skipped, sorted) and the count of
    other files ignored."""
    skip = {p.resolve() for p in exclude}
    images, ignored = [], 0
    for root, dirs, files in os.walk(in_dir):
        rootp = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (rootp / d).resolve() not in skip
        )
        for f in sorted(files):
            p = rootp / f
            if f.startswith(".") or p.resolve() in skip:
                continue
            if p.suffix.lower() in IMAGE_EXTS:
                images.append(p)
            else:
                ignored += 1
    images.sort(key=lambda p: p.relative_to(in_dir).as_posix())
    return images, ignored


def load_landmarks_file(path: str | Path, rel_paths: list[str]) -> tuple[dict, list[str]]:
    """Hand landmarks keyed by relative path (or by file name when unique): returns
    ``{rel_path: [array, ...]}`` and the keys that matched no input image."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise AlignError(f"landmarks file {path} not found") from None
    except (OSError, ValueError) as e:
        raise AlignError(f"landmarks file {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise AlignError(f"landmarks file {path}: expected an object {{image path: landmarks}}")
    by_name: dict[str, list[str]] = {}
    for rel in rel_paths:
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    out, unmatched = {}, []
    for key, value in raw.items():
        k = key.replace("\\", "/").removeprefix("./")
        if k in by_name.get(k.rsplit("/", 1)[-1], []):
            rel = k
        elif "/" not in k and len(by_name.get(k, [])) == 1:
            rel = by_name[k][0]
        else:
            unmatched.append(key)
            continue
        try:
            out[rel] = parse_landmarks(value)
        except AlignError as e:
            raise AlignError(f"landmarks file {path}, entry {key!r}: {e}") from None
    return out, unmatched


# -- per-file work (runs in worker processes) ---------------------------------------------------

_ALIGNER: Aligner | None = None
_CONFIG: PrepareConfig | None = None


def _init_pool_worker(config: PrepareConfig, root: int, parent: int | None) -> None:
    """Initializer of the pool's workers: end with the job even when it is killed (a worker
    busy with a large image would otherwise finish it, orphaned), then load the models."""
    exit_with_parent(parent, root)
    _init_worker(config)


def _init_worker(config: PrepareConfig) -> None:
    global _ALIGNER, _CONFIG
    if _ALIGNER is None or _CONFIG != config:
        _ALIGNER = Aligner(config.align).load()
        _CONFIG = config


def _face_entry(d, kept: bool, reason: str | None) -> dict:
    e = {
        "box": [round(float(v), 1) for v in d.box],
        "size": round(d.size, 1),
        "score": None if not np.isfinite(d.score) else round(float(d.score), 3),
        "source": d.source,
        "kept": kept,
    }
    if reason:
        e["reason"] = reason
    return e


def process_file(task: dict) -> dict:
    """Align one source file into the work folder; returns (and stores) its record."""
    assert _ALIGNER is not None and _CONFIG is not None, "worker not initialised"
    cfg, al = _CONFIG, _ALIGNER
    work = Path(task["work"])
    rec = {k: task[k] for k in ("file", "key", "sig", "config", "override")}
    t0 = time.perf_counter()
    try:
        img = composite(load_image(task["path"]), cfg.background_rgb())
        rec["width"], rec["height"] = int(img.shape[1]), int(img.shape[0])
        limit = cfg.align.max_faces if cfg.all_faces else 1
        entries, crops = [], []
        if task["landmarks"] is not None:
            try:
                faces = al.align(img, landmarks=[np.asarray(a) for a in task["landmarks"]])
            except AlignError as e:
                raise AlignError(
                    f"{task['file']}: hand landmarks refused: {e} (fix its --landmarks entry)"
                ) from None
            for f in faces:
                keep = limit is None or len(crops) < limit
                entries.append(
                    {"source": "manual", "kept": keep, "size": round(f.face_size, 1)}
                    | ({} if keep else {"reason": "not the largest face (use --all-faces)"})
                )
                if keep:
                    crops.append(f)
        else:
            for d in al.detector(img):
                reason = None
                if d.size < cfg.align.min_face_size:
                    reason = f"face {d.size:.0f} px < --min-face-size {cfg.align.min_face_size:g}"
                elif limit is not None and len(crops) >= limit:
                    reason = "not the largest face (use --all-faces)"
                if reason is None:
                    crops.append(al.from_detection(img, d))
                entries.append(_face_entry(d, reason is None, reason))
        for k, f in enumerate(crops):
            save_png(f.crop, work / "faces" / f"{task['key']}-{k}.png", cfg.png_compress_level)
            kept = [e for e in entries if e["kept"]][k]
            kept["upscale"] = round(f.scale, 2)
        rec["faces_found"] = len(entries)
        rec["faces_kept"] = len(crops)
        rec["faces"] = entries
        if crops:
            rec["status"] = "ok"
        elif not entries:
            rec["status"] = "no_face"
            rec["reason"] = "no face detected (give its landmarks with --landmarks)"
        else:
            rec["status"] = "skipped"
            rec["reason"] = "; ".join(sorted({e["reason"] for e in entries if "reason" in e}))
    except AlignError as e:
        rec.update(status="error", reason=str(e), faces_found=0, faces_kept=0)
    except Exception as e:  # one bad file must not stop a dataset job
        rec.update(status="error", reason=f"{type(e).__name__}: {e}", faces_found=0, faces_kept=0)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    _atomic_write_json(work / "done" / f"{task['key']}.json", rec)
    return rec


# -- the job ------------------------------------------------------------------------------------


def _file_key(rel: str) -> str:
    return hashlib.sha1(rel.encode()).hexdigest()[:16]


def _override_hash(value: list[np.ndarray] | None) -> str | None:
    if value is None:
        return None
    blob = json.dumps([np.asarray(a).round(3).tolist() for a in value]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _is_our_folder(path: Path) -> bool:
    """A folder this tool wrote (dataset.json plus numbered subfolders), safe to replace."""
    if not (path / "dataset.json").is_file():
        return False
    return all(
        (e.name == "dataset.json") or (e.is_dir() and e.name.isdigit() and len(e.name) == 5)
        for e in path.iterdir()
    )


def _write_output(out: Path, items: list[tuple[str, Path]]) -> None:
    """Write the dataset (folder or zip) under a temporary name, then rename it into place."""
    labels = json.dumps({"labels": None}).encode()
    _check_output(out)  # again: OUT may have changed while the job ran
    if out.suffix.lower() == ".zip":

        def write_zip(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, src in items:
                    zf.write(src, name)
                zf.writestr("dataset.json", labels)

        atomic_write(out, write_zip)  # removes its temporary file on any failure
        return
    # A folder is swapped, not written: build it under a temporary name, move the old one to
    # another, rename the new one into place, then delete the old one. On any failure the
    # temporary folder goes and the old dataset stays.
    tmp, old = _temp_name(out), _temp_name(out)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    moved = False
    try:
        for name, src in items:
            dst = tmp / name
            dst.parent.mkdir(exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        (tmp / "dataset.json").write_bytes(labels)
        if out.exists():
            os.replace(out, old)
            moved = True
        os.replace(tmp, out)
    except BaseException:
        if moved and not out.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_output(out: Path, report: Path | None = None) -> None:
    """Refuse an ``OUT`` (or report path) the job could not write, before any work: a .zip name
    that is a folder, a folder that holds other files, a parent that is a file."""
    for p in [out, *([report] if report else [])]:
        parent = next((q for q in p.parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise AlignError(f"cannot write {p}: {parent} is a file, not a folder")
    if report is not None and report.is_dir():
        raise AlignError(f"report path {report} is a folder; give a file name with --report")
    if work_path(out).exists() and not work_path(out).is_dir():
        raise AlignError(f"{work_path(out)} (the work folder) exists and is not a folder")
    if out.suffix.lower() == ".zip":
        if out.exists() and not out.is_file():
            raise AlignError(f"{out} exists and is not a file; remove it or choose another OUT")
        return
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_our_folder(out))):
        raise AlignError(
            f"{out} exists and is not a dataset folder written by toon-pairs; choose another OUT"
        )


def prepare_dataset(
    in_dir: str | Path,
    out: str | Path,
    config: PrepareConfig | None = None,
    *,
    progress: bool = True,
    report: str | Path | None = None,
) -> dict:
    """Align every image under ``in_dir`` into ``out`` (folder or ``.zip``); returns the report
    (also written to ``report``, default ``NAME.report.json`` beside ``out``)."""
    cfg = config or PrepareConfig()
    in_dir, out = Path(in_dir), Path(out)
    if not in_dir.is_dir():
        raise AlignError(f"input folder {in_dir} not found (or not a folder)")
    work = work_path(out)
    rpath = Path(report) if report else report_path(out)
    _check_output(out, rpath)  # before any work: nothing is written for an OUT we cannot write
    images, ignored = find_images(in_dir, exclude=[out, work])
    if not images:
        exts = " ".join(sorted(IMAGE_EXTS))
        raise AlignError(f"no images found under {in_dir} (looked for {exts})")
    rels = [p.relative_to(in_dir).as_posix() for p in images]
    overrides, unmatched = ({}, [])
    if cfg.landmarks:
        overrides, unmatched = load_landmarks_file(cfg.landmarks, rels)
    cfg.background_rgb()  # validate before any work
    # Load the models here: a missing model file fails now, before any worker starts.
    _init_worker(cfg)

    (work / "done").mkdir(parents=True, exist_ok=True)
    (work / "faces").mkdir(parents=True, exist_ok=True)
    for stale in [*work.glob("*/.*.tmp"), *_stale_temps(out.parent, out.name)]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    fp = cfg.fingerprint()
    _atomic_write_json(work / "config.json", {"fingerprint": fp, "config": asdict(cfg)})

    records: dict[str, dict] = {}
    todo: list[dict] = []
    for path, rel in zip(images, rels, strict=True):
        st = path.stat()
        key = _file_key(rel)
        ov = overrides.get(rel)
        task = {
            "file": rel,
            "path": str(path),
            "key": key,
            "sig": [st.st_size, st.st_mtime_ns],
            "config": fp,
            "override": _override_hash(ov),
            "landmarks": None if ov is None else [a.tolist() for a in ov],
            "work": str(work),
        }
        done = work / "done" / f"{key}.json"
        if done.is_file():
            try:
                rec = json.loads(done.read_text())
            except (OSError, ValueError):
                rec = None
            if rec and all(rec.get(k) == task[k] for k in ("file", "sig", "config", "override")):
                faces_ok = all(
                    (work / "faces" / f"{key}-{k}.png").is_file()
                    for k in range(rec.get("faces_kept", 0))
                )
                if faces_ok:
                    records[rel] = rec
                    continue
        todo.append(task)

    workers = cfg.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))
    t0 = time.perf_counter()
    bar = _progress(len(images), len(images) - len(todo), progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                rec = process_file(task)
                records[rec["file"]] = rec
                bar.update(1)
        else:
            # Not fork: dlib's thread pool (started by the CNN detector) does not survive a fork,
            # and a forked worker would wait forever on a lock held by a thread that is gone.
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(["pairs.prepare"])
            # Under forkserver the server, not this process, is the workers' parent.
            parent = None if ctx.get_start_method() == "forkserver" else os.getpid()
            init = (cfg, os.getpid(), parent)
            with ctx.Pool(workers, initializer=_init_pool_worker, initargs=init) as pool:
                for rec in pool.imap_unordered(process_file, todo, chunksize=1):
                    records[rec["file"]] = rec
                    bar.update(1)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0

    items: list[tuple[str, Path]] = []
    for rel in rels:
        rec = records[rel]
        rec["outputs"] = []
        for k in range(rec.get("faces_kept", 0)):
            name = archive_name(len(items))
            items.append((name, work / "faces" / f"{rec['key']}-{k}.png"))
            rec["outputs"].append(name)
    rep = _report(in_dir, out, cfg, rels, records, ignored, unmatched, len(todo), elapsed)
    _atomic_write_json(rpath, rep)
    if not items:
        raise AlignError(f"no face was aligned from the {len(images)} images; see {rpath}")
    _write_output(out, items)
    return rep


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        desc="align",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _report(
    in_dir: Path,
    out: Path,
    cfg: PrepareConfig,
    rels: list[str],
    records: dict[str, dict],
    ignored: int,
    unmatched: list[str],
    processed: int,
    elapsed: float,
) -> dict:
    files = []
    for rel in rels:
        rec = dict(records[rel])
        for k in ("key", "sig", "config", "override"):
            rec.pop(k, None)
        files.append(rec)
    statuses = ("ok", "no_face", "skipped", "error")
    by = {s: [f["file"] for f in files if f["status"] == s] for s in statuses}
    low_res = [
        f["file"]
        for f in files
        if any(e.get("kept") and e.get("upscale", 0) > 2.0 for e in f.get("faces", []))
    ]
    report = {
        "version": REPORT_VERSION,
        "input": str(in_dir),
        "output": str(out),
        "layout": "NVIDIA dataset_tool (NNNNN/imgNNNNNNNN.png + dataset.json)",
        "config": asdict(cfg),
        "summary": {
            "files": len(rels),
            "files_with_faces": len(by["ok"]),
            "faces_kept": sum(f.get("faces_kept", 0) for f in files),
            "no_face": len(by["no_face"]),
            "skipped": len(by["skipped"]),
            "errors": len(by["error"]),
            "ignored_non_images": ignored,
            "processed_this_run": processed,
            "seconds_this_run": round(elapsed, 2),
            "need_landmarks": by["no_face"],
            "low_resolution": low_res,
            "landmarks_unmatched": unmatched,
        },
        "files": files,
    }
    return report
