"""Benchmark: the exported student with ONNX Runtime, and toon-infer end to end.

Measures, on this machine:
- ONNX Runtime CPU latency (``--threads``, default 2) at batch 1 and throughput at batch 8 of the
  default ``mobile`` student at 256x256 (random weights: speed does not depend on them), for
  the fp32, fp16 and int8 exports;
- ``toon-infer`` on two 1920x1080 photos with one face each, run as a separate process: the
  second photo's time (load + align + model + paste + save, from its ``--json`` report: the
  per-photo cost after start-up), the start-up (command wall time minus two per-photo times:
  interpreter, imports, ONNX Runtime session, dlib model loading) and the process's peak RSS;
  the same command on one photo without a face (the landmark model is loaded on the first face,
  so this is the start-up without it);
- the same start-up with dlib's own landmark predictor (``TOON_LANDMARKS=dlib``) instead of the
  default numpy copy of its model (faces.landmarks), whose cache is made before timing;
- whether dlib's landmark-model loading releases Python's lock (a thread loads it while the
  main thread counts; ``releases_gil`` false means no thread can overlap it), and how long the
  numpy copy takes to map;
- the teacher's path for the same face (``toon-teacher toonify``: 1000 projection steps at the
  ``paper256`` architecture plus one render), estimated from timed steps, and the ratio of the
  two.

Prints one JSON object; asserts no time.

    python bench/infer.py [--threads 2] [--student FILE] [--teacher-steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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


def make_student(path: Path, size: int = 256) -> Path:
    import torch

    from student.io import save_student
    from student.networks import build_generator, generator_arch

    torch.manual_seed(0)
    arch = generator_arch("mobile")
    G = build_generator(arch).eval()
    save_student(G, arch, path, training={"resolution": size})
    return path


def ort_timing(model: Path, threads: int, batch: int, size: int, min_s: float = 2.0) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    x = (np.random.RandomState(0).rand(batch, size, size, 3) * 255).astype(np.uint8)
    for _ in range(3):
        sess.run(None, {"image": x})
    times = []
    t_end = time.perf_counter() + min_s
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {
        "batch": batch,
        "ms_median": round(med * 1e3, 2),
        "images_per_s": round(batch / med, 1),
        "runs": len(times),
    }


RSS_WRAPPER = (
    "import sys\n"
    "from export.infer_cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].split()[1]\n"
    "print('PEAK_RSS_KIB', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def run_cli(args: list[str], env: dict) -> tuple[float, int, str]:
    """Run toon-infer in a fresh interpreter: wall seconds, its own peak RSS (KiB, VmHWM: unlike
    ru_maxrss it does not inherit the parent's size across fork and exec), stdout."""
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *args], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"toon-infer {args[:2]} failed: {r.stderr[-500:]}")
    peak = 0
    for line in r.stderr.splitlines():
        if line.startswith("PEAK_RSS_KIB"):
            peak = int(line.split()[1])
    return wall, peak, r.stdout


def predictor_load_gil() -> dict:
    """Whether dlib's 68-point model loading releases Python's lock: a thread loads it while
    the main thread counts loop turns; the turns per second against the rate alone. Near 1:
    released (the load could overlap other Python work); near 0: held."""
    import threading

    import dlib

    from faces.detect import PREDICTOR_FILE, model_file

    path = str(model_file(PREDICTOR_FILE))

    def spin(seconds: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += 1
        return n / seconds

    alone = spin(0.3)
    took: list[float] = []

    def load() -> None:
        t = time.perf_counter()
        dlib.shape_predictor(path)
        took.append(time.perf_counter() - t)

    th = threading.Thread(target=load)
    n, t0 = 0, time.perf_counter()
    th.start()
    while th.is_alive():
        n += 1
    during = n / (time.perf_counter() - t0)
    ratio = during / alone
    return {
        "load_s": round(took[0], 3),
        "main_thread_speed_during_load": round(ratio, 4),
        "releases_gil": bool(ratio > 0.5),
    }


def numpy_landmark_load() -> dict:
    """The numpy copy of the 68-point model: conversion (only when the cache is missing) and
    the time to map the cached copy (median of 5, checksum included)."""
    from faces import landmarks
    from faces.detect import PREDICTOR_FILE, model_file

    path = model_file(PREDICTOR_FILE)
    out = {"cache": str(landmarks.cache_path(path))}
    t = time.perf_counter()
    landmarks.load_shape_model(path)
    out["first_load_s"] = round(time.perf_counter() - t, 3)  # conversion if no cache yet
    times = []
    for _ in range(5):
        t = time.perf_counter()
        landmarks.load_shape_model(path)
        times.append(time.perf_counter() - t)
    out["cached_load_s"] = round(float(np.median(times)), 4)
    return out


def startup(cli_args: list[str], out_dir: Path, env: dict, runs: int = 3) -> dict:
    """toon-infer on two photos, ``runs`` times (each into a new folder under ``out_dir``):
    median wall time, the per-photo times (first photo, second photo) and start-up = wall -
    2 x second photo."""
    walls, firsts, steady, peak = [], [], [], 0
    for i in range(runs):
        wall, peak_i, stdout = run_cli([*cli_args, "-o", str(out_dir / str(i))], env)
        reports = [json.loads(x) for x in stdout.strip().splitlines()]
        walls.append(wall)
        peak = max(peak, peak_i)
        firsts.append(reports[0]["timings_ms"])
        steady.append(reports[1]["timings_ms"])
    wall = float(np.median(walls))
    steady_ms = float(np.median([t["total"] for t in steady]))
    return {
        "faces": reports[1]["faces"],
        "wall": wall,
        "steady_ms": steady_ms,
        "first_ms": float(np.median([t["total"] for t in firsts])),
        "stages": steady[-1],
        "peak": peak,
        "startup_s": round(wall - 2 * steady_ms / 1e3, 3),
    }


def teacher_path_seconds(steps: int, threads: int) -> dict:
    import torch

    from bench.teacher_synthesis import PAPER256
    from teacher.networks import Generator
    from teacher.project import ProjectConfig, project

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    G = Generator(**PAPER256).eval()
    stamps: list[float] = []
    target = torch.rand(1, 3, 256, 256) * 2 - 1
    project(
        G,
        target,
        ProjectConfig(steps=steps + 1, optimize_noise=False, w_avg_samples=1000),
        progress=lambda *_: stamps.append(time.perf_counter()),
    )
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    ws = torch.randn(1, G.num_ws, 512)
    t = time.perf_counter()
    with torch.no_grad():
        G.synthesis(ws, noise_mode="const", force_fp32=True)
    render = time.perf_counter() - t
    return {
        "sec_per_step": round(per_step, 4),
        "render_s": round(render, 3),
        "toonify_1000_steps_s": round(per_step * 1000 + render, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--student", default=None, help="student file (default: random mobile)")
    ap.add_argument("--teacher-steps", type=int, default=3)
    args = ap.parse_args()

    from export.onnx_export import _sample_inputs, export_onnx

    out: dict = {"benchmark": "infer", "python": platform.python_version(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student = Path(args.student) if args.student else make_student(tmp / "student.safetensors")
        models = {}
        for precision in ("fp32", "fp16", "int8"):
            path = tmp / f"toon_{precision}.onnx"
            calib = _sample_inputs(256, 16, seed=5) if precision == "int8" else None
            rep = export_onnx(student, path, precision=precision, calib_images=calib)
            models[precision] = path
            out.setdefault("exports", {})[precision] = {
                "bytes": path.stat().st_size,
                "psnr_vs_torch_db": rep.checks["batches"]["1"]["psnr_db"],
            }
        out["ort_cpu"] = {
            p: [ort_timing(m, args.threads, b, 256) for b in (1, 8)] for p, m in models.items()
        }

        from PIL import Image

        from demo.synthetic import render_photo_scene, sample_params

        params = sample_params(np.random.default_rng(7))
        scene, _ = render_photo_scene(
            params,
            canvas=(1920, 1080),
            face_box=(760, 240, 1160, 640),
            rng=np.random.default_rng(7),
        )
        photo = tmp / "photo1080.jpg"
        Image.fromarray(scene).save(photo, quality=95)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        second = tmp / "photo1080_b.jpg"
        second.write_bytes(photo.read_bytes())
        out["numpy_landmark_model"] = numpy_landmark_load()  # makes the cache before timing
        cli_args = [str(photo), str(second), "--model", str(models["fp32"]), "--json"]
        cli_args += ["--threads", str(args.threads), "--device", "cpu"]
        run = startup(cli_args, tmp / "o", env)
        dlib_run = startup(cli_args, tmp / "o_dlib", dict(env, TOON_LANDMARKS="dlib"))
        # One photo without a face: the landmark model is then never loaded.
        empty = tmp / "empty1080.jpg"
        Image.fromarray(np.full((1080, 1920, 3), 128, np.uint8)).save(empty, quality=95)
        empty_walls = []
        for i in range(3):
            args_empty = [str(empty), "-o", str(tmp / f"e{i}"), "--model", str(models["fp32"])]
            args_empty += ["--threads", str(args.threads), "--device", "cpu", "--skip-empty"]
            empty_walls.append(run_cli(args_empty, env)[0])
        out["toon_infer_1080p"] = {
            "faces": run["faces"],
            "per_photo_after_startup_ms": round(run["steady_ms"], 1),
            "stage_ms_after_startup": {k: round(v, 1) for k, v in run["stages"].items()},
            "first_photo_ms": round(run["first_ms"], 1),
            "startup_s": run["startup_s"],
            "startup_s_dlib_landmarks": dlib_run["startup_s"],
            "per_photo_after_startup_ms_dlib_landmarks": round(dlib_run["steady_ms"], 1),
            "command_wall_two_photos_s": round(run["wall"], 3),
            "peak_rss_mib": round(run["peak"] / 1024, 1),
            "command_wall_one_photo_no_face_s": round(float(np.median(empty_walls)), 3),
        }
    out["dlib_predictor_load"] = predictor_load_gil()
    teacher = teacher_path_seconds(args.teacher_steps, args.threads)
    out["teacher_toonify_paper256"] = teacher
    single = out["ort_cpu"]["fp32"][0]["ms_median"] / 1e3
    out["ratio_teacher_path_over_student_pass"] = round(teacher["toonify_1000_steps_s"] / single)
    run = out["toon_infer_1080p"]
    one_photo_s = run["startup_s"] + run["per_photo_after_startup_ms"] / 1e3
    out["ratio_teacher_path_over_toon_infer_one_photo"] = round(
        teacher["toonify_1000_steps_s"] / one_photo_s
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
