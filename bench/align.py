"""Speed of face alignment (faces.align): detection + landmarks + FFHQ warp, torch-free.

Photos (decoded once, outside the timing):

- ``512``: skimage's astronaut, 512 x 512, one face;
- ``1080p``: the astronaut scaled to 1080 x 1080 on a 1920 x 1080 gray canvas, one face;
- the shared test photos (``$TOON_SHARED/faces`` or ``../shared/faces``) when present.

Single-core figures pin this process to one CPU (``sched_setaffinity``) and time, per photo,
``detect`` (HOG on the downscaled copy), ``landmarks`` (68 points at full resolution), ``warp``
(FFHQ crop at ``--size``) and ``align`` (all three, the public call), as medians over
``--iters`` runs after a warm-up, and ``paste_change`` / ``paste_replace`` (paste_back of one
face through the person mask with each blend). ``1080p_full_res_detect_ms`` is the detection
on the full 1920 x 1080 frame for comparison (``detect_size=0``).

The folder figure writes ``--folder-images`` JPEGs (1080p and 512 alternating) to a temporary
folder and runs ``toon-pairs align``'s job (:func:`pairs.prepare.prepare_dataset`, HOG only) with
one worker per core, from start to finished zip (process start-up, decoding, PNG and zip
writing included). Prints one JSON object; never asserts a time.

    python bench/align.py --iters 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# The repository first; bench/ itself is dropped (its pairs.py and student.py would shadow
# the packages of the same names).
sys.path[:] = [str(_REPO)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (_REPO, _REPO / "bench")
]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from faces.align import PASTE_BLENDS, AlignConfig, Aligner, load_image, paste_back  # noqa: E402
from faces.image import to_gray  # noqa: E402
from pairs.prepare import PrepareConfig, prepare_dataset  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def test_photos() -> dict[str, np.ndarray]:
    from skimage import data  # dev dependency

    astro = data.astronaut()
    canvas = np.full((1080, 1920, 3), 128, np.uint8)
    big = Image.fromarray(astro).resize((1080, 1080), Image.Resampling.LANCZOS)
    canvas[:, 420:1500] = np.asarray(big)
    photos = {"512": astro, "1080p": canvas}
    shared = Path(os.environ.get("TOON_SHARED", _REPO.parent / "shared")) / "faces"
    for name in ["obama_small.jpg", "two_people.jpg", "32bit.png", "biden.jpg"]:
        if (shared / name).is_file():
            photos[name] = load_image(shared / name)
    return photos


def median_ms(fn, iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


def single_core(photos: dict[str, np.ndarray], size: int, iters: int) -> dict:
    al = Aligner(AlignConfig(size=size))
    full = Aligner(AlignConfig(size=size, detect_size=0))
    out = {}
    for name, img in photos.items():
        gray = to_gray(img)
        dets = al.detector(img)
        r = {"shape": list(img.shape), "faces": len(dets)}
        r["detect_ms"] = median_ms(lambda img=img: al.detector.boxes(img), iters)
        if dets:
            box = dets[0].box
            lm = dets[0].landmarks
            r["landmarks_ms"] = median_ms(lambda g=gray, b=box: al.detector.landmarks(g, b), iters)
            r["warp_ms"] = median_ms(lambda i=img, lm=lm: al.warp(i, lm), iters)
            face = al.warp(img, lm)
            inverted = [np.ascontiguousarray(255 - face.crop[:, :, :3])]
            for blend in PASTE_BLENDS:
                r[f"paste_{blend}_ms"] = median_ms(
                    lambda i=img, f=face, o=inverted, b=blend: paste_back(i, [f], o, blend=b), iters
                )
        r["align_ms"] = median_ms(lambda img=img: al.align(img), iters)
        out[name] = r
    out["1080p_full_res_detect_ms"] = median_ms(lambda: full.detector.boxes(photos["1080p"]), 3)
    return out


def folder_throughput(photos: dict[str, np.ndarray], size: int, n: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(n):
            img = photos["1080p"] if i % 2 == 0 else photos["512"]
            Image.fromarray(img).save(src / f"photo{i:04d}.jpg", quality=92)
        cfg = PrepareConfig(align=AlignConfig(size=size, detector="hog"), workers=workers)
        t = time.perf_counter()
        rep = prepare_dataset(src, Path(tmp) / "out.zip", cfg, progress=False)
        dt = time.perf_counter() - t
    return {
        "images": n,
        "workers": workers,
        "faces": rep["summary"]["faces_kept"],
        "seconds": round(dt, 2),
        "photos_per_s": round(n / dt, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=15, help="timed runs per figure (median)")
    p.add_argument("--size", type=int, default=256, help="crop size")
    p.add_argument("--folder-images", type=int, default=48, help="images in the folder run")
    args = p.parse_args()

    photos = test_photos()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores:
        os.sched_setaffinity(0, {cores[0]})
    try:
        one = single_core(photos, args.size, args.iters)
    finally:
        if cores:
            os.sched_setaffinity(0, set(cores))
    n_cores = len(cores) or os.cpu_count() or 1
    result = {
        "bench": "align",
        "cpu": cpu_name(),
        "cores": n_cores,
        "size": args.size,
        "single_core": one,
        "ms_per_photo_512": one["512"]["align_ms"],
        "ms_per_photo_1080p": one["1080p"]["align_ms"],
        "target_1080p_ms": 60,
        "folder_all_cores": folder_throughput(photos, args.size, args.folder_images, n_cores),
        "folder_one_worker": folder_throughput(photos, args.size, args.folder_images // 4, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
