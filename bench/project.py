"""Benchmark: projection speed at the ``paper256`` generator architecture (random weights).

Times optimizer steps of ``teacher.project.project`` (pixel fallback loss, no noise
optimization, W+) for batch 1 and 8 on CPU, and on CUDA when present; reports seconds per step
and the implied seconds per 1000-step projection (per batch and per image). Identity distances
need a real face model and are not measured here. Prints one JSON object; asserts no time.

    python bench/project.py [--steps 4] [--batches 1,8] [--threads N]
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

import torch  # noqa: E402

from bench.teacher_synthesis import PAPER256  # noqa: E402
from teacher.networks import Generator  # noqa: E402
from teacher.project import ProjectConfig, project  # noqa: E402


def paper256() -> Generator:
    torch.manual_seed(0)
    return Generator(**PAPER256).eval()


def time_case(G: Generator, device: torch.device, batch: int, steps: int) -> dict:
    G = G.to(device)
    target = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    cfg = ProjectConfig(space="w+", steps=steps + 1, optimize_noise=False, w_avg_samples=1000)
    stamps: list[float] = []

    def tick(_step: int, _dist: float) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    project(G, target, cfg, progress=tick)
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # excludes the first (warm-up) step
    return {
        "device": str(device),
        "batch": batch,
        "steps_timed": len(stamps) - 1,
        "sec_per_step": round(per_step, 4),
        "sec_per_1000_steps": round(per_step * 1000, 1),
        "sec_per_image_1000_steps": round(per_step * 1000 / batch, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    G = paper256()
    batches = [int(b) for b in args.batches.split(",")]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = [time_case(G, d, b, args.steps) for d in devices for b in batches]
    print(
        json.dumps(
            {
                "benchmark": "project",
                "arch": "paper256",
                "space": "w+",
                "loss": "pixel",
                "torch": torch.__version__,
                "python": platform.python_version(),
                "threads": torch.get_num_threads(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
