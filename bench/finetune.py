"""Benchmark: seconds per kimg of teacher fine-tuning.

Runs the real training loop (``teacher.train.training_loop``) on synthetic images in a temporary
run directory and reports the ``Timing/sec_per_kimg`` of the ticks after the first (the first
includes start-up). Cases:

- ``tiny`` preset on CPU (32 px, random weights, batch 8), always;
- ``paper256`` (256 px, batch 64, ``--batch-gpu`` 32) on CUDA when a GPU is present.

Prints one JSON object; never asserts a time.

    python bench/finetune.py [--ticks 3] [--augpipe bgc] [--threads N]
"""

from __future__ import annotations

import argparse
import json
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
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from common.runs import DistInfo  # noqa: E402
from teacher.config import make_config  # noqa: E402
from teacher.train import training_loop  # noqa: E402


def _images(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    for i in range(n):
        img = (rs.rand(size // 8, size // 8, 3) * 255).astype(np.uint8)
        Image.fromarray(img).resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}.png")
    return folder


def run_case(
    name: str,
    preset: str,
    size: int,
    device: torch.device,
    ticks: int,
    augpipe: str,
    overrides: dict,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _images(tmp / "data", 64, size)
        cfg = make_config(
            preset,
            dict(data=str(data), outdir=str(tmp / "run"), augpipe=augpipe, **overrides),
            size,
        )
        cfg = cfg.replace(kimg=cfg.tick_kimg * ticks, snap=10**6)
        t0 = time.time()
        training_loop(cfg, DistInfo(device=device), progress=False)
        wall = time.time() - t0
        lines = [json.loads(x) for x in (tmp / "run" / "stats.jsonl").read_text().splitlines()]
    steady = [x["Timing/sec_per_kimg"] for x in lines[1:]] or [lines[0]["Timing/sec_per_kimg"]]
    out = {
        "case": name,
        "device": str(device),
        "preset": preset,
        "resolution": size,
        "batch": cfg.batch,
        "batch_gpu": cfg.batch_gpu or cfg.batch,
        "augpipe": augpipe,
        "kimg": cfg.kimg,
        "ticks": len(lines),
        "sec_per_kimg": float(np.median(steady)),
        "wall_s": round(wall, 2),
    }
    mem = [x.get("Resources/peak_gpu_mem_gb") for x in lines if "Resources/peak_gpu_mem_gb" in x]
    if mem:
        out["peak_gpu_mem_gb"] = round(max(mem), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--augpipe", default="bgc")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-gpu", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [
        run_case("tiny-cpu", "tiny", 32, torch.device("cpu"), args.ticks, args.augpipe, {}),
    ]
    if torch.cuda.is_available() and not args.skip_gpu:
        results.append(
            run_case(
                "paper256-cuda",
                "paper256",
                256,
                torch.device("cuda"),
                args.ticks,
                args.augpipe,
                dict(tick_kimg=0.64, batch_gpu=32),
            )
        )
    print(
        json.dumps(
            {
                "benchmark": "finetune",
                "torch": torch.__version__,
                "python": platform.python_version(),
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
