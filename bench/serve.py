"""Benchmark: toon-serve on loopback, with the default student, at concurrency 1, 8 and 32.

Measures, on this machine, with a ``toon-serve`` process (defaults: ``--max-batch 8
--batch-timeout-ms 5``) serving the default ``mobile`` student at 256x256 (random weights:
speed does not depend on them), exported to ONNX fp32:

- per concurrency level (1, 8, 32 clients, each a thread with a keep-alive connection posting
  the same photo in a loop for ``--seconds``): requests per second, p50 / p99 latency, errors,
  and the mean faces per model call (from the server's ``/metrics``);
- ``batching_gain``: requests/s at concurrency 8 over concurrency 1 (what concurrency buys with
  micro-batching on);
- the same concurrency-8 run against a server started with ``--max-batch 1`` (no batching), and
  the gain of batching over it at equal concurrency.

The photo is ``obama_small.jpg`` (320x240, one face) from the shared faces when present, else a
640x480 synthetic face; answers are PNG, face pasted back. Prints one JSON object; asserts no
time. The client runs on the same machine and takes some of its CPU.

    python bench/serve.py [--seconds 8] [--threads N] [--photo FILE] [--model toon.onnx]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repository first; bench/ itself is dropped (its pairs.py and student.py would shadow
# the packages of the same names).
sys.path[:] = [str(REPO)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "bench")
]

import numpy as np  # noqa: E402

LEVELS = (1, 8, 32)


def make_model(tmp: Path) -> Path:
    """The default (``mobile``) student with random weights, exported at 256x256."""
    import torch

    from export.onnx_export import export_onnx
    from student.io import save_student
    from student.networks import build_generator, generator_arch

    torch.manual_seed(0)
    arch = generator_arch("mobile")
    G = build_generator(arch).eval()
    student = tmp / "student.safetensors"
    save_student(G, arch, student, training={"resolution": 256})
    out = tmp / "toon.onnx"
    export_onnx(student, out)
    return out


def photo_bytes(path: str | None) -> tuple[bytes, str]:
    if path:
        return Path(path).read_bytes(), Path(path).name
    shared = Path(os.environ.get("TOON_SHARED", REPO.parent / "shared")) / "faces"
    if (shared / "obama_small.jpg").exists():
        return (shared / "obama_small.jpg").read_bytes(), "obama_small.jpg"
    from PIL import Image

    from demo.synthetic import render_photo_scene, sample_params

    rng = np.random.default_rng(7)
    scene, _ = render_photo_scene(sample_params(rng), canvas=(640, 480), rng=rng)
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format="JPEG", quality=92)
    return buf.getvalue(), "synthetic 640x480"


class ServerProcess:
    """``toon-serve`` on a free loopback port (read from its JSON log)."""

    def __init__(self, model: Path, workdir: Path, *args: str) -> None:
        self.err_path = workdir / f"serve{len(list(workdir.glob('serve*.err')))}.err"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "export.serve_cli", "--model", str(model), "--port", "0"]
        cmd += ["--no-access-log", "--device", "cpu", *args]
        self._err = open(self.err_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self._err
        )
        deadline = time.monotonic() + 120
        pattern = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        while True:
            m = pattern.search(self.err_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(self.err_path.read_text()[-2000:])
            time.sleep(0.05)

    def get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
        conn.close()
        return body

    def batch_stats(self) -> tuple[float, float]:
        """(faces, model calls) so far, from /metrics."""
        text = self.get("/metrics")
        found = {}
        for name in ("toon_batch_faces_sum", "toon_batch_faces_count"):
            m = re.search(rf"^{name} (\S+)$", text, re.M)
            found[name] = float(m.group(1)) if m else 0.0
        return found["toon_batch_faces_sum"], found["toon_batch_faces_count"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._err.close()


def load(server: ServerProcess, photo: bytes, concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients post ``photo`` in a loop for ``seconds`` (after a warm-up)."""
    path = "/v1/toonify?format=png"
    headers = {"Content-Type": "image/jpeg"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stages: dict[str, list[float]] = {}  # Server-Timing of each answer, ms
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    state = {"stop_at": 0.0, "measure_from": 0.0}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        start.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= state["stop_at"]:
                break
            try:
                conn.request("POST", path, body=photo, headers=headers)
                r = conn.getresponse()
                r.read()
                status = str(r.status)
                timing = r.getheader("Server-Timing", "")
            except (OSError, http.client.HTTPException) as e:
                status, timing = type(e).__name__, ""
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            t1 = time.perf_counter()
            if t0 < state["measure_from"]:
                continue  # warm-up
            with lock:
                if status == "200":
                    latencies.append(t1 - t0)
                    for part in timing.split(","):
                        name, _, dur = part.strip().partition(";dur=")
                        stages.setdefault(name, []).append(float(dur))
                else:
                    errors[status] = errors.get(status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    warm_up = min(2.0, seconds / 4)
    now = time.perf_counter()
    state["measure_from"] = now + warm_up
    state["stop_at"] = now + warm_up + seconds
    faces0, calls0 = server.batch_stats()
    start.wait()
    for t in threads:
        t.join()
    faces1, calls1 = server.batch_stats()
    lat = np.array(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / seconds, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "faces_per_model_call": round((faces1 - faces0) / max(calls1 - calls0, 1), 2),
        "server_stage_ms_p50": {
            k: round(float(np.median(v)), 1) for k, v in stages.items() if k != "receive"
        },
    }


def model_only(model: Path, threads: int | None) -> dict:
    """ONNX Runtime alone, as the server runs it: ms per image at batch 1 and 8."""
    from export.runtime import Toonifier

    toon = Toonifier(model, device="cpu", threads=threads, max_batch=8)
    out = {}
    for batch in (1, 8):
        x = (np.random.RandomState(0).rand(batch, toon.size, toon.size, 3) * 255).astype(np.uint8)
        toon.run(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.5 or n < 3:
            toon.run(x)
            n += 1
        out[f"batch_{batch}_ms_per_image"] = round((time.perf_counter() - t0) / n / batch * 1e3, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    ap.add_argument("--threads", type=int, default=None, help="toon-serve --threads (ORT)")
    ap.add_argument("--cpu-threads", type=int, default=4, help="toon-serve --cpu-threads")
    ap.add_argument("--photo", default=None, help="photo to post (default: obama_small.jpg)")
    ap.add_argument("--model", default=None, help="an exported model (default: random mobile)")
    args = ap.parse_args()

    photo, photo_name = photo_bytes(args.photo)
    out: dict = {
        "benchmark": "serve",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "device": "cpu",
        "photo": {"name": photo_name, "bytes": len(photo)},
        "seconds_per_level": args.seconds,
    }
    flags = ["--cpu-threads", str(args.cpu_threads)]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else make_model(tmp)
        name = str(model) if args.model else "random mobile student, 256 px, fp32"
        out["model"] = {"file": name}
        out["server"] = {"max_batch": 8, "batch_timeout_ms": 5.0, "flags": flags}
        out["model_only"] = model_only(model, args.threads)
        server = ServerProcess(model, tmp, *flags)
        try:
            out["levels"] = [load(server, photo, c, args.seconds) for c in LEVELS]
        finally:
            server.stop()
        unbatched = ServerProcess(model, tmp, *flags, "--max-batch", "1")
        try:
            out["concurrency_8_max_batch_1"] = load(unbatched, photo, 8, args.seconds)
        finally:
            unbatched.stop()
    by_c = {level["concurrency"]: level for level in out["levels"]}
    out["batching_gain"] = round(by_c[8]["requests_per_s"] / by_c[1]["requests_per_s"], 2)
    out["batching_gain_over_max_batch_1_at_8"] = round(
        by_c[8]["requests_per_s"] / out["concurrency_8_max_batch_1"]["requests_per_s"], 2
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
