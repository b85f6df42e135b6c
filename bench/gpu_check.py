"""``make gpu-check``: the CUDA tests and the GPU benchmarks in one command, one JSON file.

On a machine with a CUDA GPU this runs, within about five minutes and with no network:

- the tests marked ``cuda`` (``pytest -m cuda`` on the test files that use the marker), with
  their pass/fail counts and the names of failures;
- teacher fine-tuning at ``paper256`` (batch 64, ADA ``bgc``, random weights, synthetic
  images): seconds per kimg, peak GPU memory, time until it runs at full speed;
- synthesis images/s at batch 1 and 32 (fp16 path and fp32);
- projection ms/step at batch 1 and 8 (pixel distance, W+), and at batch 1 with a
  distance shaped like NVIDIA's (VGG16 features, random weights; W and noise optimised);
- pair generation pairs/s (shards written, PNG encoding included);
- student training images/s (``paper256`` preset, ``mobile`` generator, on those pairs);
- ONNX Runtime CUDA latency of the exported student (batch 1) and throughput (batch 8).

Every network is built here with random weights at the real architecture (speed does not
depend on the weights); nothing is downloaded. Each benchmark warms up, then times a few
iterations with ``torch.cuda.synchronize()``; one that fails is recorded with its error and
the others still run; one that would start after ``--budget-s`` is recorded as skipped. The
JSON (default ``out/gpu-check.json``) is rewritten after every stage, so a run cut short
still leaves what it measured. Exit status 0 when the tests pass and no benchmark failed.

Without a CUDA GPU it says so in one line and exits with status 1. ``--device cpu --tiny``
runs every benchmark at toy sizes on the CPU (how CI exercises the code). Never asserts a
time.

    python bench/gpu_check.py [--out out/gpu-check.json] [--only synthesis,onnx]
                              [--variants channels_last,compile] [--no-tests]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The repository first; bench/ itself is dropped (its pairs.py and student.py would shadow
# the packages of the same names).
sys.path[:] = [str(REPO)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "bench")
]

from bench.teacher_synthesis import PAPER256 as PAPER256_G  # noqa: E402
from common.cli import error_line  # noqa: E402
from common.files import atomic_write_text  # noqa: E402

PROG = "gpu-check"
BENCHMARKS = ("finetune", "synthesis", "projection", "pairs", "student", "onnx")
VARIANTS = ("channels_last", "compile")
DEFAULT_OUT = REPO / "out" / "gpu-check.json"
DEFAULT_BUDGET_S = 285.0  # the whole run, tests included: under five minutes

# The real generator is NVIDIA's CelebA-HQ 256 base (PAPER256_G, shared with the other benchmarks);
# a toy one for CPU runs of the code.
TINY_G = dict(
    z_dim=32,
    c_dim=0,
    w_dim=32,
    img_resolution=16,
    img_channels=3,
    mapping_layers=2,
    channel_base=512,
    channel_max=32,
    num_fp16_res=0,
    conv_clamp=256,
)


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is: the real sizes (``FULL``) or toy ones (``TINY``)."""

    generator: dict = field(default_factory=lambda: dict(PAPER256_G))
    finetune_preset: str = "paper256"
    finetune_resolution: int = 256
    finetune_batch: int = 64
    finetune_tick_steps: int = 4  # one path-length step per tick (g_reg_interval 4)
    finetune_timed_ticks: int = 2  # after one warm-up tick
    synthesis_batches: tuple[int, ...] = (1, 32)
    synthesis_seconds: float = 1.5  # least timed duration per case
    synthesis_iters: int = 5  # least timed iterations per case
    projection_batches: tuple[int, ...] = (1, 8)
    projection_steps: int = 10  # timed, after one warm-up step
    projection_w_samples: int = 1000
    pairs_count: int = 2048
    pairs_batch: int = 32
    student_preset: str = "paper256"
    student_arch: str = "mobile"
    student_batch: int = 16
    student_tick_steps: int = 10
    student_timed_ticks: int = 2  # after one warm-up tick
    onnx_arch: str = "mobile"
    onnx_size: int = 256
    onnx_batches: tuple[int, ...] = (1, 8)
    onnx_seconds: float = 1.5
    onnx_runs: int = 10  # least timed runs per case


FULL = Sizes()
TINY = Sizes(
    generator=dict(TINY_G),
    finetune_preset="tiny",
    finetune_resolution=32,
    finetune_batch=8,
    finetune_tick_steps=1,
    finetune_timed_ticks=1,
    synthesis_batches=(1, 4),
    synthesis_seconds=0.0,
    synthesis_iters=2,
    projection_batches=(1, 2),
    projection_steps=2,
    projection_w_samples=64,
    pairs_count=8,
    pairs_batch=4,
    student_preset="tiny",
    student_arch="tiny",
    student_batch=4,
    student_tick_steps=1,
    student_timed_ticks=1,
    onnx_arch="tiny",
    onnx_size=32,
    onnx_batches=(1, 2),
    onnx_seconds=0.0,
    onnx_runs=2,
)


class NoGPU(Exception):
    """No CUDA device where one is needed."""


# -- helpers ---------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    """Give cached GPU memory back between stages (each stage's peak is its own)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _timed_loop(fn: Callable[[], object], device, warmup: int, iters: int, seconds: float) -> dict:
    """Run ``fn`` ``warmup`` times, then at least ``iters`` times and ``seconds`` seconds;
    returns the mean seconds per call and the count (synchronised at both ends)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n >= iters:
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return {"sec_per_call": elapsed / n, "calls": n}


def random_generator(arch: dict, seed: int = 0):
    """A generator of the given architecture with random weights, in eval mode."""
    import torch

    from teacher.networks import Generator

    torch.manual_seed(seed)
    return Generator(**arch).eval().requires_grad_(False)


def _images(folder: Path, n: int, size: int) -> Path:
    """``n`` smooth random RGB PNGs of ``size`` px (training data whose content does not
    matter for speed)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    for i in range(n):
        small = (rs.rand(max(size // 8, 2), max(size // 8, 2), 3) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}.png")
    return folder


def _stats(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# -- benchmarks --------------------------------------------------------------------------------


def bench_finetune(device, sizes: Sizes, work: Path, variants: tuple[str, ...] = ()) -> dict:
    """Seconds per kimg and peak memory of the real fine-tuning loop (G, path length, D, R1,
    EMA, ADA), one warm-up tick then timed ticks of ``finetune_tick_steps`` steps."""
    from unittest import mock

    import teacher.train as train
    from common.runs import DistInfo
    from teacher.config import make_config

    batch = sizes.finetune_batch
    data = _images(work / "finetune-data", batch, sizes.finetune_resolution)
    tick_kimg = batch * sizes.finetune_tick_steps / 1000
    ticks = 1 + sizes.finetune_timed_ticks
    cfg = make_config(
        sizes.finetune_preset,
        dict(data=str(data), outdir=str(work / "finetune-run"), augpipe="bgc", batch=batch),
        sizes.finetune_resolution,
    )
    cfg = cfg.replace(tick_kimg=tick_kimg, kimg=tick_kimg * ticks, snap=10**6)
    saves: list[tuple[float, float]] = []
    original = train._save_resume

    def timed_save(*args, **kwargs):  # when each tick ended, and how long its files took
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            saves.append((t, time.perf_counter()))

    _free(device)
    t0 = time.perf_counter()
    with mock.patch.object(train, "_save_resume", timed_save):
        train.training_loop(cfg, DistInfo(device=device), progress=False)
    wall = time.perf_counter() - t0
    lines = _stats(Path(cfg.outdir) / "stats.jsonl")
    timed = [x["Timing/sec_per_kimg"] for x in lines[1:]] or [lines[0]["Timing/sec_per_kimg"]]
    sec_per_kimg = statistics.median(timed)
    out: dict[str, Any] = {
        "preset": cfg.preset,
        "resolution": sizes.finetune_resolution,
        "batch": cfg.batch,
        "augpipe": cfg.augpipe,
        "ada_target": cfg.target,
        "steps": round(cfg.kimg * 1000 / cfg.batch),
        "steps_per_tick": sizes.finetune_tick_steps,
        "timed_ticks": len(timed),
        "sec_per_kimg": round(sec_per_kimg, 3),
        "sec_per_kimg_ticks": [round(x, 3) for x in timed],
        "images_per_s": round(1000 / sec_per_kimg, 1),
        "wall_s": round(wall, 1),
        "note": "each timed tick holds one path-length step (every 4th, as in a long run); "
        "R1 (every 16th step) runs in the warm-up tick only",
    }
    if saves:
        # Time until it trains at full speed: the end of the first tick, less a steady tick.
        steady_tick_s = sec_per_kimg * tick_kimg
        out["start_s"] = round(saves[0][0] - t0 - steady_tick_s, 1)
        out["tick_files_s"] = round(sum(b - a for a, b in saves), 1)
    mem = [x[k] for x in lines for k in x if k == "Resources/peak_gpu_mem_gb"]
    if mem:
        out["peak_gpu_mem_gb"] = round(max(mem), 2)
    return out


def bench_synthesis(device, sizes: Sizes, work: Path, variants: tuple[str, ...] = ()) -> dict:
    """Images/s of ``G.synthesis`` (noise const, no grad) per batch size and precision; with
    ``variants``, channels-last weights and ``torch.compile`` at the largest batch (fp16)."""
    import torch

    G = random_generator(sizes.generator).to(device)
    precisions = [("fp16", False), ("fp32", True)] if device.type == "cuda" else [("fp32", True)]
    cases = []

    def case(net_synthesis, ws, fp32: bool) -> dict:
        def call():
            return net_synthesis(ws, noise_mode="const", force_fp32=fp32)

        with torch.no_grad():
            r = _timed_loop(call, device, 2, sizes.synthesis_iters, sizes.synthesis_seconds)
        return {
            "images_per_s": round(ws.shape[0] / r["sec_per_call"], 2),
            "ms_per_batch": round(r["sec_per_call"] * 1000, 3),
            "iterations": r["calls"],
        }

    _free(device)
    for batch in sizes.synthesis_batches:
        z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ws = G.mapping(z.to(device), None, truncation_psi=1)
        for name, fp32 in precisions:
            cases.append({"batch": batch, "precision": name, **case(G.synthesis, ws, fp32)})
    out: dict[str, Any] = {"noise_mode": "const", "cases": cases, "peak_gpu_mem_gb": None}
    batch = max(sizes.synthesis_batches)
    name, fp32 = precisions[0]
    z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ws = G.mapping(z.to(device), None, truncation_psi=1)
    if "channels_last" in variants:
        G_cl = copy.deepcopy(G).to(memory_format=torch.channels_last)
        out["channels_last"] = {"batch": batch, "precision": name, **case(G_cl.synthesis, ws, fp32)}
        del G_cl
    if "compile" in variants:
        t = time.perf_counter()
        compiled = torch.compile(G.synthesis)
        with torch.no_grad():
            compiled(ws, noise_mode="const", force_fp32=fp32)
        _sync(device)
        compile_s = time.perf_counter() - t
        out["compile"] = {
            "batch": batch,
            "precision": name,
            "compile_s": round(compile_s, 1),
            **case(compiled, ws, fp32),
        }
    out["peak_gpu_mem_gb"] = _peak_gb(device)
    return out


def vgg16_shaped(path: Path, device) -> Path:
    """A TorchScript file with the call signature and the convolutions of NVIDIA's LPIPS
    ``vgg16.pt`` (VGG16 up to conv5_3, unit-normalised features of five layers), with random
    weights: what a projection step costs with the real distance, without the download."""
    import torch
    import torchvision

    class VGGFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            f = torchvision.models.vgg16(weights=None).features
            self.s1, self.s2, self.s3 = f[0:4], f[4:9], f[9:16]
            self.s4, self.s5 = f[16:23], f[23:30]

        def forward(
            self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False
        ) -> torch.Tensor:
            x = x / 127.5 - 1
            x1 = self.s1(x)
            x2 = self.s2(x1)
            x3 = self.s3(x2)
            x4 = self.s4(x3)
            x5 = self.s5(x4)
            feats = []
            for f in [x1, x2, x3, x4, x5]:
                n = f / (f.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                feats.append(n.flatten(1) / math.sqrt(float(f.shape[2] * f.shape[3])))
            return torch.cat(feats, dim=1)

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch.jit is deprecated, but vgg16.pt is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(VGGFeatures().eval()).save(str(path))
    return path


def bench_projection(device, sizes: Sizes, work: Path, variants: tuple[str, ...] = ()) -> dict:
    """Milliseconds per optimizer step of ``teacher.project.project``."""
    import torch

    from teacher.project import ProjectConfig, project

    G = random_generator(sizes.generator)
    res = G.img_resolution
    vgg = vgg16_shaped(work / "vgg16-shaped.pt", device)
    setups = [("pixel", "w+", False, None, b) for b in sizes.projection_batches]
    setups.append(("vgg16_shaped", "w", True, vgg, 1))  # NVIDIA projector's settings
    cases = []
    _free(device)
    for loss, space, noise, vgg_path, batch in setups:
        gen = torch.Generator().manual_seed(batch)
        target = (torch.rand(batch, 3, res, res, generator=gen) * 2 - 1).to(device)
        cfg = ProjectConfig(
            space=space,
            steps=sizes.projection_steps + 1,
            optimize_noise=noise,
            w_avg_samples=sizes.projection_w_samples,
            loss="vgg" if vgg_path else "pixel",
        )
        stamps: list[float] = []

        def tick(_step: int, _dist: float, stamps: list[float] = stamps) -> None:
            _sync(device)
            stamps.append(time.perf_counter())

        project(G, target, cfg, vgg16=vgg_path, progress=tick)
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # the first step is warm-up
        cases.append(
            {
                "loss": loss,
                "space": space,
                "optimize_noise": noise,
                "batch": batch,
                "steps_timed": len(stamps) - 1,
                "ms_per_step": round(per_step * 1000, 2),
                "ms_per_step_per_image": round(per_step * 1000 / batch, 2),
                "sec_per_1000_steps": round(per_step * 1000, 1),
            }
        )
    return {
        "note": "vgg16_shaped: VGG16 convolutions with random weights in place of NVIDIA's "
        "vgg16.pt (same cost); pixel: the distance used when no vgg16.pt is given",
        "cases": cases,
        "peak_gpu_mem_gb": _peak_gb(device),
    }


def make_teachers(folder: Path, arch: dict, seed: int = 0) -> tuple[Path, Path]:
    """A random base generator and a layer-swap blend of it with a perturbed copy, saved as
    safetensors (what ``toon-pairs generate`` reads)."""
    import torch

    from teacher.blend import blend_generators
    from teacher.io import save_network

    base = random_generator(arch, seed)
    other = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in other.synthesis.named_parameters():
            if name.endswith("weight"):
                p.add_(torch.randn_like(p) * 0.3 * p.std())
    toon = blend_generators(other, base, swap_res=max(arch["img_resolution"] // 8, 4))
    folder.mkdir(parents=True, exist_ok=True)
    base_path, toon_path = folder / "base.safetensors", folder / "toon.safetensors"
    save_network(base, base_path)
    save_network(toon, toon_path)
    return base_path, toon_path


def bench_pairs(device, sizes: Sizes, work: Path, variants: tuple[str, ...] = ()) -> dict:
    """Pairs/s of a ``toon-pairs generate`` job (render, PNG encoding, shards), after a
    warm-up job. The pairs stay in ``work/pairs`` for the student benchmark."""
    from pairs.generate import generate
    from pairs.job import GenerateConfig
    from pairs.writer import default_workers

    base, toon = make_teachers(work / "teachers", sizes.generator)
    workers = default_workers() if device.type == "cuda" else 0
    common = dict(
        base=str(base),
        toon=str(toon),
        batch=sizes.pairs_batch,
        device=str(device),
        workers=workers,
        use_slurm=False,
    )
    _free(device)
    generate(
        GenerateConfig(out=str(work / "pairs-warm"), count=sizes.pairs_batch, seed=10**6, **common),
        progress=False,
        log=None,
    )
    res = generate(
        GenerateConfig(out=str(work / "pairs"), count=sizes.pairs_count, **common),
        progress=False,
        log=None,
    )
    return {
        "count": res.pairs_written,
        "batch": sizes.pairs_batch,
        "png_workers": workers,
        "pairs_per_s": round(res.pairs_per_s, 2),
        "seconds": round(res.seconds, 2),
        "setup_s": round(res.setup_seconds, 2),
        "peak_gpu_mem_gb": _peak_gb(device),
    }


def _pairs_for_student(device, sizes: Sizes, work: Path) -> Path:
    """The pairs of the pairs benchmark, or a small set made now when it did not run."""
    folder = work / "pairs"
    if (folder / "manifest.json").is_file():
        return folder
    from pairs.generate import generate
    from pairs.job import GenerateConfig

    base, toon = make_teachers(work / "teachers", sizes.generator)
    count = sizes.student_batch * sizes.student_tick_steps * (1 + sizes.student_timed_ticks)
    cfg = GenerateConfig(
        out=str(folder),
        base=str(base),
        toon=str(toon),
        count=max(count, 2 * sizes.pairs_batch),
        batch=sizes.pairs_batch,
        device=str(device),
        workers=0,
        use_slurm=False,
    )
    generate(cfg, progress=False, log=None)
    return folder


def bench_student(device, sizes: Sizes, work: Path, variants: tuple[str, ...] = ()) -> dict:
    """Images/s of the student training loop (G and multi-scale D steps, AMP on CUDA) on
    the generated pairs, one warm-up tick then timed ticks."""
    from common.runs import DistInfo
    from student.config import make_config
    from student.train import training_loop

    pairs = _pairs_for_student(device, sizes, work)
    batch = sizes.student_batch
    tick_kimg = batch * sizes.student_tick_steps / 1000
    ticks = 1 + sizes.student_timed_ticks
    cfg = make_config(
        sizes.student_preset,
        dict(
            pairs=str(pairs),
            outdir=str(work / "student-run"),
            arch=sizes.student_arch,
            batch=batch,
            tick_kimg=tick_kimg,
            kimg=tick_kimg * ticks,
            snap=10**6,
            eval_pairs=0,
            grid_pairs=0,
            holdout_percent=0.0,
        ),
    )
    _free(device)
    t0 = time.perf_counter()
    training_loop(cfg, DistInfo(device=device), progress=False)
    wall = time.perf_counter() - t0
    lines = _stats(Path(cfg.outdir) / "stats.jsonl")
    timed = [x["Timing/images_per_sec"] for x in lines[1:]] or [lines[0]["Timing/images_per_sec"]]
    out = {
        "preset": cfg.preset,
        "arch": cfg.arch,
        "batch": cfg.batch,
        "amp": cfg.amp if device.type == "cuda" else "none",
        "loader_workers": cfg.workers,
        "images_per_s": round(statistics.median(timed), 2),
        "images_per_s_ticks": [round(x, 2) for x in timed],
        "wall_s": round(wall, 1),
    }
    mem = [x[k] for x in lines for k in x if k == "Resources/peak_gpu_mem_gb"]
    if mem:
        out["peak_gpu_mem_gb"] = round(max(mem), 2)
    return out


def bench_onnx(device, sizes: Sizes, work: Path, variants: tuple[str, ...] = ()) -> dict:
    """ONNX Runtime latency of the exported student (uint8 in and out, as ``toon-infer`` and
    ``toon-serve`` call it; host arrays, so copies to and from the GPU are included)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from export.onnx_export import export_onnx
    from student.io import save_student
    from student.networks import build_generator, generator_arch

    torch.manual_seed(0)
    arch = generator_arch(sizes.onnx_arch)
    student = work / "student.safetensors"
    save_student(
        build_generator(arch).eval(), arch, student, training={"resolution": sizes.onnx_size}
    )
    if device.type == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    models = []
    for precision in ("fp32", "fp16"):
        path = work / f"toon-{precision}.onnx"
        export_onnx(student, path, size=sizes.onnx_size, precision=precision)
        models.append((precision, path))
    cases = []
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for precision, path in models:
        sess = ort.InferenceSession(str(path), opts, providers=providers)
        used = sess.get_providers()[0]
        if device.type == "cuda" and used != "CUDAExecutionProvider":
            raise RuntimeError(
                f"ONNX Runtime's CUDA provider did not load (running on {used}); check that "
                "onnxruntime-gpu matches this CUDA and cuDNN"
            )
        name = sess.get_inputs()[0].name
        for batch in sizes.onnx_batches:
            x = np.random.RandomState(batch).randint(
                0, 256, (batch, sizes.onnx_size, sizes.onnx_size, 3), dtype=np.uint8
            )
            for _ in range(3):
                sess.run(None, {name: x})
            times: list[float] = []
            end = time.perf_counter() + sizes.onnx_seconds
            while len(times) < sizes.onnx_runs or time.perf_counter() < end:
                t = time.perf_counter()
                sess.run(None, {name: x})  # returns host arrays: synchronised
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            cases.append(
                {
                    "precision": precision,
                    "provider": used,
                    "batch": batch,
                    "ms_median": round(med * 1000, 3),
                    "ms_p90": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1000, 3),
                    "images_per_s": round(batch / med, 1),
                    "runs": len(times),
                }
            )
        del sess
    return {
        "arch": sizes.onnx_arch,
        "size": sizes.onnx_size,
        "io": "uint8",
        "onnxruntime": ort.__version__,
        "cases": cases,
    }


BENCH_FUNCS: dict[str, Callable[..., dict]] = {
    "finetune": bench_finetune,
    "synthesis": bench_synthesis,
    "projection": bench_projection,
    "pairs": bench_pairs,
    "student": bench_student,
    "onnx": bench_onnx,
}


# -- the cuda tests ----------------------------------------------------------------------------


CUDA_MARK = re.compile(r"^\s*(@pytest\.mark\.cuda\b|pytestmark\b.*\bpytest\.mark\.cuda\b)", re.M)


def cuda_test_files(root: Path = REPO / "tests") -> list[Path]:
    """Test files that mark tests ``cuda`` (a decorator or ``pytestmark`` line), so pytest
    collects only those."""
    return sorted(
        p for p in root.rglob("test_*.py") if CUDA_MARK.search(p.read_text(errors="replace"))
    )


def parse_junit(path: Path) -> dict:
    """Counts and failure names from a pytest ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failures.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failures.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def run_tests(
    files: list[Path], marker: str | None, timeout_s: float, work: Path, require_pass: bool = True
) -> dict:
    """Run pytest on ``files`` (only tests with ``marker`` when given) in a fresh interpreter;
    returns pass/fail counts, failure names and the exit status. ``passed_all`` is true when
    pytest exited 0 and (with ``require_pass``) at least one test passed: on a GPU machine,
    tests that all skip mean the GPU was not seen."""
    if not files:
        return {"passed_all": False, "error": "no test file uses the marker", "returncode": None}
    junit = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    cmd += ["-m", marker] if marker else []
    cmd += [str(f) for f in files]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {
            "passed_all": False,
            "error": f"the tests ran past {timeout_s:.0f} s and were stopped",
            "returncode": None,
            "seconds": round(time.perf_counter() - t, 1),
        }
    out: dict[str, Any] = {
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t, 1),
    }
    if junit.is_file():
        out.update(parse_junit(junit))
    else:
        out["error"] = error_line(Exception(proc.stderr.strip() or proc.stdout.strip()))
    out["passed_all"] = proc.returncode == 0 and (out.get("passed", 0) > 0 or not require_pass)
    out["files"] = [str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f) for f in files]
    if proc.returncode not in (0, 5):
        out["output_tail"] = proc.stdout[-2000:]
    return out


# -- the report --------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Replace non-finite floats (not JSON) with None and tuples with lists, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_report(path: Path, report: dict) -> Path:
    """Write the report as JSON, atomically (a reader never sees half a file)."""
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def environment(device) -> dict:
    """Device name, versions and the commit measured."""
    import torch

    env: dict[str, Any] = {
        "device": str(device),
        "device_name": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["device_count"] = torch.cuda.device_count()
    else:
        from bench.teacher_synthesis import cpu_name

        env["device_name"] = cpu_name()
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    with contextlib.suppress(Exception):
        env["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    return env


def _name_list(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown {flag} name(s) {', '.join(bad)}; choose from {', '.join(allowed)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Prints where the JSON went; the figures are in the file.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file (default %(default)s)")
    p.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda (default; refused without a GPU) or cpu (only with --tiny)",
    )
    p.add_argument("--tiny", action="store_true", help="toy sizes (to exercise the code on a CPU)")
    p.add_argument(
        "--only",
        type=lambda s: _name_list(s, BENCHMARKS, "--only"),
        default=BENCHMARKS,
        help=f"comma list of benchmarks (default all: {','.join(BENCHMARKS)})",
    )
    p.add_argument(
        "--variants",
        type=lambda s: _name_list(s, VARIANTS, "--variants"),
        default=(),
        help="optional synthesis comparisons at the largest batch: channels_last, compile "
        "(compile adds its compile time and may not fit the five minutes)",
    )
    p.add_argument("--no-tests", action="store_true", help="skip the cuda tests")
    p.add_argument(
        "--tests-timeout",
        type=float,
        default=120.0,
        help="seconds the cuda tests may take (default 120)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="no benchmark starts after this many seconds (default %(default)s)",
    )
    args = p.parse_args(argv)
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu runs the real sizes for hours; add --tiny")
    return args


def check_device(name: str):
    """The torch device to measure; :class:`NoGPU` when CUDA is asked for and absent."""
    import torch

    if name == "cuda":
        if not torch.cuda.is_available():
            raise NoGPU(
                f"no CUDA GPU found (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda or 'none'}, sees none); run it on a machine with an "
                "NVIDIA GPU and driver, or pass --device cpu --tiny to exercise the code"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run(args: argparse.Namespace, device) -> dict:
    """Every stage in turn, the report rewritten after each; returns the report."""
    import torch

    sizes = TINY if args.tiny else FULL
    start = time.perf_counter()
    report: dict[str, Any] = {
        "check": "gpu",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": environment(device),
        "sizes": "tiny" if args.tiny else "full",
        "generator": sizes.generator,
        "budget_s": args.budget_s,
        "tests": None,
        "benchmarks": {},
        "passed": False,
    }
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        if args.no_tests:
            report["tests"] = {"not_run": "--no-tests"}
        else:
            print(f"{PROG}: cuda tests", file=sys.stderr, flush=True)
            report["tests"] = run_tests(
                cuda_test_files(), "cuda", args.tests_timeout, work, device.type == "cuda"
            )
        write_report(args.out, report)
        for name in args.only:
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_s:
                report["benchmarks"][name] = {
                    "skipped": f"time budget of {args.budget_s:g} s spent ({elapsed:.0f} s)"
                }
                continue
            print(f"{PROG}: {name}", file=sys.stderr, flush=True)
            t = time.perf_counter()
            try:
                result = BENCH_FUNCS[name](device, sizes, work, args.variants)
            except Exception as e:  # one failing benchmark must not stop the others
                result = {"error": f"{type(e).__name__}: {error_line(e)}"}
            result["stage_s"] = round(time.perf_counter() - t, 1)
            report["benchmarks"][name] = result
            write_report(args.out, report)
            _free(device)
    tests = report["tests"] or {}
    tests_ok = args.no_tests or bool(tests.get("passed_all"))
    errors = [n for n, r in report["benchmarks"].items() if "error" in r]
    report["failed_benchmarks"] = errors
    report["passed"] = tests_ok and not errors
    report["wall_s"] = round(time.perf_counter() - start, 1)
    write_report(args.out, report)
    return report


def summary(report: dict) -> str:
    """One line per stage for the terminal."""
    lines = []
    t = report.get("tests") or {}
    if "not_run" in t:
        lines.append(f"tests: not run ({t['not_run']})")
    else:
        lines.append(
            f"tests: {'pass' if t.get('passed_all') else 'FAIL'} "
            f"({t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
            f"{t.get('errors', 0)} errors, {t.get('skipped', 0)} skipped)"
            + (f": {t['error']}" if t.get("error") else "")
        )
    for name, r in report["benchmarks"].items():
        if "error" in r:
            lines.append(f"{name}: ERROR {r['error']}")
        elif "skipped" in r:
            lines.append(f"{name}: skipped ({r['skipped']})")
        else:
            lines.append(f"{name}: ok in {r.get('stage_s')} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = check_device(args.device)
    except NoGPU as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    report = run(args, device)
    print(summary(report), file=sys.stderr)
    print(f"{PROG}: wrote {args.out} ({'passed' if report['passed'] else 'FAILED'})")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
