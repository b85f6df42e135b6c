"""Benchmark: synthetic faces (demo.synthetic) - render speed and how dlib sees them.

Times ``render`` for both styles at ``--size`` and ``render_photo_scene`` at 640x480 (wall and
process CPU time per image; the CPU time is the better figure on a shared machine), then runs
dlib's HOG frontal face detector (upsample 1, as ``dlib.get_frontal_face_detector()(img, 1)``)
on ``--n`` random faces per style and on ``--scenes`` scenes, and compares dlib's 68-point
predictor with the known landmarks (mean point error / eye distance). Prints one JSON object;
asserts nothing.

    python bench/synthetic.py [--n 200] [--scenes 50] [--size 256] [--seed 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repository first; bench/ itself is dropped (its pairs.py and student.py would shadow
# the packages of the same names).
sys.path[:] = [str(REPO)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "bench")
]

import numpy as np  # noqa: E402

from demo.synthetic import item_params, landmarks, render, render_photo_scene  # noqa: E402


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _landmark_error(pred, img: np.ndarray, rect, truth: np.ndarray) -> float:
    pts = np.array([(q.x, q.y) for q in pred(img, rect).parts()], float)
    iod = np.linalg.norm(truth[36:42].mean(0) - truth[42:48].mean(0))
    return float(np.linalg.norm(pts - truth, axis=1).mean() / iod)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="faces per style for detection")
    ap.add_argument("--scenes", type=int, default=50, help="scenes for detection")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()

    import dlib

    from faces.detect import PREDICTOR_FILE, model_file

    detector = dlib.get_frontal_face_detector()
    try:
        pred = dlib.shape_predictor(str(model_file(PREDICTOR_FILE)))
    except Exception:  # noqa: BLE001 - the landmark comparison is optional
        pred = None

    result: dict = {
        "bench": "demo.synthetic",
        "size": args.size,
        "n": args.n,
        "seed": args.seed,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for style in ("photo", "game"):
        wall, cpu, found, errs, missed = [], [], 0, [], []
        for i in range(args.n):
            p, rng = item_params(args.seed, i)
            img, w, c = _timed(lambda p=p, rng=rng, s=style: render(p, s, args.size, rng))
            wall.append(w)
            cpu.append(c)
            rects = detector(img, 1)
            if len(rects):
                found += 1
                if pred is not None:
                    r = max(rects, key=lambda r: r.area())
                    errs.append(_landmark_error(pred, img, r, landmarks(p, args.size)))
            else:
                missed.append(p.hair_name)
        result[style] = {
            "ms_per_face_wall": round(1000 * float(np.median(wall)), 1),
            "ms_per_face_cpu": round(1000 * float(np.median(cpu)), 1),
            "hog_detection_rate": found / max(args.n, 1),
            "hog_missed_by_hair": {h: missed.count(h) for h in sorted(set(missed))},
            "dlib_landmark_error_per_iod": round(float(np.mean(errs)), 4) if errs else None,
        }

    wall, cpu, found, errs = [], [], 0, []
    for i in range(args.scenes):
        p, rng = item_params(args.seed + 1, i)
        (img, lm), w, c = _timed(lambda p=p, rng=rng: render_photo_scene(p, (640, 480), rng=rng))
        wall.append(w)
        cpu.append(c)
        rects = detector(img, 1)
        if len(rects):
            found += 1
            if pred is not None:
                r = max(rects, key=lambda r: r.area())
                errs.append(_landmark_error(pred, img, r, lm))
    result["scene_640x480"] = {
        "count": args.scenes,
        "ms_per_scene_wall": round(1000 * float(np.median(wall)), 1) if wall else None,
        "ms_per_scene_cpu": round(1000 * float(np.median(cpu)), 1) if cpu else None,
        "hog_detection_rate": found / max(args.scenes, 1),
        "dlib_landmark_error_per_iod": round(float(np.mean(errs)), 4) if errs else None,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
