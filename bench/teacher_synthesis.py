"""Throughput of the teacher's synthesis network at the ``paper256`` architecture.

Builds ``Generator`` with random weights (the architecture of NVIDIA's CelebA-HQ 256
transfer-learning source net), maps random z once per batch size, then times
``G.synthesis(ws, noise_mode='const')`` under ``torch.no_grad()``:

- CPU: float32 (``force_fp32=True``);
- CUDA, when available: float32 (``force_fp32=True``) and the float16 path of the
  ``num_fp16_res`` highest resolutions (``force_fp32=False``).

Each case runs warm-up iterations, then at least ``--min-iters`` iterations and at least
``--min-seconds`` seconds. Prints one JSON object to stdout; never asserts a time.

    python bench/teacher_synthesis.py --min-seconds 2 --batches 1,8 --device auto
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# The repository first; bench/ itself is dropped (its pairs.py and student.py would shadow
# the packages of the same names).
sys.path[:] = [str(_REPO)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (_REPO, _REPO / "bench")
]

import torch  # noqa: E402

from teacher.networks import Generator  # noqa: E402

PAPER256 = dict(
    z_dim=512,
    c_dim=0,
    w_dim=512,
    img_resolution=256,
    img_channels=3,
    mapping_layers=8,
    channel_base=16384,
    channel_max=512,
    num_fp16_res=4,
    conv_clamp=256,
)


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_synthesis(
    G: Generator,
    ws: torch.Tensor,
    force_fp32: bool,
    warmup: int,
    min_iters: int,
    min_seconds: float,
) -> dict[str, float | int]:
    """Time ``G.synthesis`` on ``ws``; returns images/s, ms per batch and the iteration count."""
    device = ws.device
    with torch.no_grad():
        for _ in range(warmup):
            G.synthesis(ws, noise_mode="const", force_fp32=force_fp32)
        _sync(device)
        iters = 0
        start = time.perf_counter()
        while True:
            G.synthesis(ws, noise_mode="const", force_fp32=force_fp32)
            iters += 1
            if iters >= min_iters:
                _sync(device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
    batch = ws.shape[0]
    return {
        "images_per_s": round(batch * iters / elapsed, 3),
        "ms_per_batch": round(1000.0 * elapsed / iters, 3),
        "iterations": iters,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CPU, plus CUDA when available (default auto)",
    )
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=3.0,
        help="minimum timed duration per case in seconds (default 3)",
    )
    p.add_argument(
        "--min-iters", type=int, default=3, help="minimum timed iterations per case (default 3)"
    )
    p.add_argument("--warmup", type=int, default=2, help="warm-up iterations per case (default 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the CPU (default: torch's choice)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights and latents (default 0)")
    args = p.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1:
        p.error("--batches needs at least one batch size >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    devices: list[torch.device] = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))

    torch.manual_seed(args.seed)
    G_cpu = Generator(**PAPER256).eval().requires_grad_(False)

    device_names: dict[str, str] = {}
    results: list[dict[str, object]] = []
    for device in devices:
        if device.type == "cuda":
            device_names["cuda"] = torch.cuda.get_device_name(device)
            G = copy.deepcopy(G_cpu).to(device)
            precisions = [("fp32", True), ("fp16", False)]
        else:
            device_names["cpu"] = cpu_name()
            G = G_cpu
            precisions = [("fp32", True)]
        for batch in args.batches:
            gen = torch.Generator().manual_seed(args.seed + batch)
            z = torch.randn(batch, G.z_dim, generator=gen).to(device)
            with torch.no_grad():
                ws = G.mapping(z, None, truncation_psi=1)
            for precision, force_fp32 in precisions:
                timing = time_synthesis(
                    G, ws, force_fp32, args.warmup, args.min_iters, args.min_seconds
                )
                results.append(
                    {"device": device.type, "precision": precision, "batch": batch, **timing}
                )

    report = {
        "benchmark": "teacher_synthesis",
        "arch": "paper256",
        "generator": PAPER256,
        "num_ws": G_cpu.num_ws,
        "synthesis_parameters": sum(p.numel() for p in G_cpu.synthesis.parameters()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "devices": device_names,
        "noise_mode": "const",
        "warmup": args.warmup,
        "min_iters": args.min_iters,
        "min_seconds": args.min_seconds,
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
