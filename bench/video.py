"""Benchmark: ``toon-infer`` on video, speed and steadiness.

Measures, on this machine (the model on 1 thread, toon-infer's default for videos; decoding,
tracking and alignment, the model and paste, and encoding in their own threads):
- frames/s of the whole pipeline (decode, track, align, model, paste, encode, mux) on a 720p
  and a 1080p clip with one face, at the default settings (paste mode, person mask, detection
  every 5 frames on frames downscaled to 640 px, x264 ``veryfast`` CRF 20), with the time each
  stage spent per frame (stages overlap in their threads: they add up to more than the wall
  time), the CPU time of all threads per frame and the machine's load average (the machine is
  shared);
- steadiness on the 720p clip, made from a still photo seen by a camera with a known, small
  motion (tests/export/video_clips.py): the largest frame-to-frame move of the aligned square
  after undoing the motion, with and without the landmark smoothing;
- flicker on a static 720p clip with fresh sensor noise in every frame (through the codec): the
  mean change between consecutive frames of the input and of the output, over the frame and
  over the face's square; and the student's own response to that noise, from crops cut with
  one fixed square (no landmark jitter at all) against crops cut with the tracked squares.

The default student is the ``mobile`` preset at 256 px with random weights (speed does not
depend on them; its response to noise does: pass ``--model`` for a trained one). Prints one
JSON object; asserts no time.

    python bench/video.py [--model toon.onnx] [--threads 2] [--frames 90]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repository first; bench/ itself is dropped (its pairs.py and student.py would shadow
# the packages of the same names).
sys.path[:] = [str(REPO)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "bench")
]

import numpy as np  # noqa: E402

from tests.export import video_clips as vc  # noqa: E402

MARGIN = 24


def default_model(tmp: Path) -> Path:
    """The mobile student at 256 px, random weights, exported to ONNX."""
    import importlib.util

    from export.onnx_export import export_onnx

    spec = importlib.util.spec_from_file_location("bench_infer", REPO / "bench" / "infer.py")
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    student = infer.make_student(tmp / "student.safetensors")
    export_onnx(student, tmp / "toon.onnx")
    return tmp / "toon.onnx"


def make_clip(
    path: Path, width: int, height: int, face: float, frames: int, noise: float = 1.5, **motion
) -> tuple[list, np.ndarray]:
    """Encode a clip of the still scene under ``camera_path(**motion)``; returns the camera
    matrices and the still's landmarks."""
    still, landmarks = vc.still_scene(width, height, MARGIN, face)
    mats = vc.camera_path(frames, width, height, MARGIN, **motion)
    images = vc.render_frames(still, mats, width, height, noise=noise, seed=1)
    vc.write_clip(path, images, 30, crf=18)
    return mats, landmarks


def run(src: Path, dst: Path, toon, **track) -> tuple[dict, list]:
    from export.tracking import TrackConfig
    from export.video import VideoOptions, toonify_video

    results: list = []
    keep = track.pop("keep", True)

    def on_frame(r) -> None:
        if keep:
            results.append(r)
        else:
            results.append(r.faces[0].quad if r.faces else None)

    options = VideoOptions(track=TrackConfig(**track))
    cpu = time.process_time()
    report = toonify_video(src, dst, toon, options, overwrite=True, on_frame=on_frame)
    report["cpu_s"] = time.process_time() - cpu  # all of this process's threads
    return report, results


def speed(report: dict, dst: Path) -> dict:
    n = report["frames"]
    stages = {k: round(v / n, 2) for k, v in report["timings_ms"].items() if k != "total"}
    return {
        "frames": n,
        "frames_per_s": report["frames_per_s"],
        "realtime_factor_at_30fps": round(report["frames_per_s"] / 30, 2),
        "stage_ms_per_frame": stages,
        # CPU time of all threads (the decoder's and encoder's included) per frame: on two
        # cores the frames/s cannot pass 2000 / this.
        "cpu_ms_per_frame": round(report["cpu_s"] * 1e3 / n, 1),
        "detector_runs": report["detector_runs"],
        "output_kbit_per_s": round(dst.stat().st_size * 8 / 1000 / (n / 30), 1),
    }


def face_mask(quad: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(im).polygon([(float(x) + 0.5, float(y) + 0.5) for x, y in quad], fill=255)
    return np.asarray(im) > 127


def flicker(src: Path, tmp: Path, toon, landmarks: np.ndarray) -> dict:
    """Static noisy clip: frame changes of input and output, and the student's response to
    the noise with a fixed square against the tracked squares."""
    from faces.align import Aligner

    _, results = run(src, tmp / "static_out.mp4", toon)
    given = [r.rgb for r in results]
    made = [r.out for r in results]
    quad = results[0].faces[0].quad
    mask = face_mask(quad, given[0].shape[:2])
    aligner = Aligner(**toon.align_options())
    # The still's landmarks shifted by the margin: the true face, the same in every frame.
    fixed = [aligner.warp(f, landmarks - MARGIN) for f in given]
    fixed_in = [f.crop[:, :, :3] for f in fixed]
    fixed_out = [toon.run(c)[0] for c in fixed_in]
    tracked_in = [r.faces[0].crop[:, :, :3] for r in results]
    tracked_out = [toon.run(c)[0] for c in tracked_in]
    r2 = lambda x: round(x, 3)  # noqa: E731
    return {
        "frames": len(results),
        "frame_change_levels": {
            "input": r2(vc.frame_change(given)),
            "output": r2(vc.frame_change(made)),
        },
        "face_square_change_levels": {
            "input": r2(vc.frame_change(given, mask)),
            "output": r2(vc.frame_change(made, mask)),
        },
        "crop_change_levels": {
            "input_fixed_square": r2(vc.frame_change(fixed_in)),
            "toon_fixed_square": r2(vc.frame_change(fixed_out)),
            "input_tracked_square": r2(vc.frame_change(tracked_in)),
            "toon_tracked_square": r2(vc.frame_change(tracked_out)),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="toon .onnx (default: random mobile 256)")
    ap.add_argument(
        "--threads", type=int, default=1, help="model threads (toon-infer's video default)"
    )
    ap.add_argument("--frames", type=int, default=90, help="frames of the 720p clip")
    args = ap.parse_args()

    from export.runtime import Toonifier
    from export.video_io import DEFAULT_CRF, DEFAULT_PRESET

    out: dict = {
        "benchmark": "video",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "model_threads": args.threads,
        "preset": DEFAULT_PRESET,
        "crf": DEFAULT_CRF,
    }
    import av

    out["pyav"] = av.__version__
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else default_model(tmp)
        toon = Toonifier(model, threads=args.threads, device="cpu")
        out["model_size"] = toon.size
        t = time.perf_counter()
        clip720 = tmp / "clip720.mp4"
        mats, _ = make_clip(clip720, 1280, 720, 300, args.frames)
        clip1080 = tmp / "clip1080.mp4"
        make_clip(clip1080, 1920, 1080, 450, max(args.frames * 2 // 3, 10))
        static = tmp / "static720.mp4"
        _, still_lm = make_clip(
            static, 1280, 720, 300, 30, noise=2.0, sway_px=0, roll_deg=0, zoom=0
        )
        out["clip_making_s"] = round(time.perf_counter() - t, 1)

        out["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
        report, quads = run(clip720, tmp / "o720.mp4", toon, keep=False)
        out["speed_720p"] = speed(report, tmp / "o720.mp4")
        report, _ = run(clip1080, tmp / "o1080.mp4", toon, keep=False)
        out["speed_1080p"] = speed(report, tmp / "o1080.mp4")
        out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

        _, raw = run(clip720, tmp / "raw.mp4", toon, keep=False, smooth=False)
        ok = all(q is not None for q in quads + raw)
        out["steadiness_720p"] = {
            "camera": "sway up to 4 px, roll up to 0.6 deg, zoom up to 1 %, 48-frame period",
            "max_quad_move_px_after_motion_compensation": round(
                vc.compensated_jitter(quads, mats), 3
            )
            if ok
            else None,
            "same_without_smoothing_px": round(vc.compensated_jitter(raw, mats), 3) if ok else None,
        }
        out["flicker_static_720p"] = flicker(static, tmp, toon, still_lm)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
