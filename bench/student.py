"""Benchmark the student generator presets; prints one JSON object.

For each preset: parameters, MACs of one 256x256 forward pass, torch CPU latency at batch 1
(``--threads`` intra-op threads, batch norm folded as for export, median of ``--runs``
after warm-up), and GPU throughput (images/s at ``--gpu-batch``, float32 and float16
autocast) when CUDA is available. MACs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on a real forward (FLOPs of convolutions,
transposed convolutions and matrix products, divided by 2); normalisations, activations,
additions and resizes are not counted. The ``mobile`` default must stay within 2.5 M
parameters and 3 GMACs at 256x256; ``budget`` says whether it does. Timings are never asserted.

    python bench/student.py [--presets mobile,small,unet256] [--threads 2] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from student.networks import (  # noqa: E402
    build_generator,
    count_macs,
    count_parameters,
    fold_batch_norm,
    generator_arch,
)

BUDGET = {"preset": "mobile", "max_parameters": 2_500_000, "max_macs_256": 3_000_000_000}


@torch.no_grad()
def cpu_latency_ms(G: torch.nn.Module, size: int, runs: int, warmup: int = 3) -> dict[str, float]:
    """Median and minimum milliseconds of a batch-1 forward on the CPU."""
    x = torch.rand([1, 3, size, size]) * 2 - 1
    for _ in range(warmup):
        G(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        G(x)
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


@torch.no_grad()
def gpu_throughput(G: torch.nn.Module, size: int, batch: int, seconds: float = 3.0) -> dict:
    """Images per second on CUDA at ``batch``: float32, and float16 autocast."""
    dev = torch.device("cuda")
    G = G.to(dev)
    x = torch.rand([batch, 3, size, size], device=dev) * 2 - 1
    out = {}
    for name, dtype in (("fp32", None), ("fp16_autocast", torch.float16)):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            for _ in range(5):
                G(x)
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                G(x)
                n += 1
            torch.cuda.synchronize()
            out[f"{name}_images_per_s"] = n * batch / (time.perf_counter() - t0)
    out["batch"] = batch
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="mobile,small,unet256")
    p.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (default 2)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=20, help="timed CPU runs per preset")
    p.add_argument("--gpu-batch", type=int, default=32)
    p.add_argument("--gpu-seconds", type=float, default=3.0)
    p.add_argument("--no-gpu", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    use_gpu = torch.cuda.is_available() and not args.no_gpu
    result: dict = {
        "bench": "student",
        "size": args.size,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": args.threads,
        "gpu": torch.cuda.get_device_name(0) if use_gpu else None,
        "macs_counted_with": "torch.utils.flop_counter.FlopCounterMode: FLOPs of conv, "
        "transposed conv and matmul on a real forward, / 2; norms, activations, adds and "
        "resizes not counted",
        "presets": {},
    }
    for name in [s.strip() for s in args.presets.split(",") if s.strip()]:
        torch.manual_seed(0)
        G = fold_batch_norm(build_generator(generator_arch(name)))
        entry = {
            "parameters": count_parameters(build_generator(generator_arch(name))),
            "macs_256": count_macs(G, 256),
            "stride": int(G.stride),
        }
        if args.size != 256:
            entry[f"macs_{args.size}"] = count_macs(G, args.size)
        entry["cpu_batch1"] = cpu_latency_ms(G, args.size, args.runs)
        if use_gpu:
            entry["gpu"] = gpu_throughput(G, args.size, args.gpu_batch, args.gpu_seconds)
        result["presets"][name] = entry
    if BUDGET["preset"] in result["presets"]:
        e = result["presets"][BUDGET["preset"]]
        result["budget"] = dict(
            BUDGET,
            within=e["parameters"] <= BUDGET["max_parameters"]
            and e["macs_256"] <= BUDGET["max_macs_256"],
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
