"""Benchmark: the inversion encoder against projection at the ``paper256`` architecture.

Random weights (speed does not depend on them): the encoder of the ``paper256`` preset
(``toon-teacher encoder train``) and NVIDIA's CelebA-HQ 256 generator architecture. Times, per
photo, one encoder pass (batch 1 and 8), a feedback encoder's three passes (batch 1: each
later pass renders the code and reads it back), one encoder training step (batch 8: render the
target, encode, render the code, backward) and a projection step (pixel loss, W+, batch 1),
and reports the ratios the goals are stated in: the encoder alone against 1000-step (and
400-step) projection, the encoder plus 50 refinement steps against 400-step projection, and
how many refinement steps fit in a tenth of 400-step projection's time after each encoder.
Prints one JSON object; asserts no time.

    python bench/encoder.py [--device auto] [--threads N] [--repeats 3]
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
from teacher.encoder import encoder_for  # noqa: E402
from teacher.encoder_train import EncoderConfig, EncoderLoss  # noqa: E402
from teacher.networks import Discriminator, Generator  # noqa: E402
from teacher.project import REFINE, ProjectConfig, project  # noqa: E402

# NVIDIA's CelebA-HQ 256 discriminator architecture (the paper256 config).
PAPER256_D = dict(
    c_dim=0, img_resolution=256, img_channels=3, channel_base=16384, channel_max=512,
    num_fp16_res=4, conv_clamp=256,
)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def run(device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    G = Generator(**PAPER256).eval().requires_grad_(False).to(device)
    cfg = EncoderConfig()  # the paper256 preset
    E = encoder_for(G, cfg.arch(), samples=2000).to(device).eval()
    params = sum(p.numel() for p in E.parameters())
    x1 = torch.rand(1, 3, 256, 256, device=device) * 2 - 1
    x8 = torch.rand(8, 3, 256, 256, device=device) * 2 - 1

    with torch.no_grad():
        enc1 = _best(lambda: E(x1), repeats, device)
        enc8 = _best(lambda: E(x8), repeats, device) / 8
    Ef = encoder_for(G, {**cfg.arch(), "feedback": 1, "passes": 3}, samples=2000).to(device).eval()
    with torch.no_grad():
        fb3 = _best(lambda: Ef.invert(x1, G), repeats, device)

    loss = EncoderLoss(G, None, cfg.replace(dfeat_weight=0.0), E.w_std, device)
    E.train()
    ws = G.mapping(torch.randn(8, G.z_dim, device=device), None)
    with torch.no_grad():
        target = G.synthesis(ws, noise_mode="const", force_fp32=True)

    def train_step() -> None:
        total, _ = loss(E, ws, target, x8)
        total.backward()

    train8 = _best(train_step, max(1, repeats - 1), device)
    E.eval()

    def step_seconds(cfg: ProjectConfig, **kw) -> float:
        """Seconds per step of ``project`` (the first step, which builds caches, not counted)."""
        stamps: list[float] = []

        def tick(_step: int, _dist: float) -> None:
            _sync(device)
            stamps.append(time.perf_counter())

        project(G, x1, cfg, progress=tick, **kw)
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    steps = 1 + max(2, repeats)
    base = dict(space="w+", steps=steps, optimize_noise=False, w_avg_samples=1000)
    # Projection from w_avg as the projector runs it by default without --vgg16: pixel pyramid
    # plus the discriminator's block features; refinement of encoder codes: REFINE's terms.
    D = Discriminator(**PAPER256_D).eval().requires_grad_(False).to(device)
    step = step_seconds(ProjectConfig(**base), D=D)
    with torch.no_grad():
        start = E(x1)
    refine = step_seconds(ProjectConfig(**{**base, **REFINE}), D=D, init_ws=start)
    return {
        "device": str(device),
        "encoder_parameters": params,
        "encoder_s_per_photo_batch1": round(enc1, 4),
        "encoder_s_per_photo_batch8": round(enc8, 4),
        "encoder_train_s_per_step_batch8": round(train8, 3),
        "encoder_train_s_per_kimg": round(train8 * 1000 / 8, 1),
        "projection_s_per_step_batch1": round(step, 4),
        "refinement_s_per_step_batch1": round(refine, 4),
        "projection_1000_steps_s": round(step * 1000, 1),
        "projection_400_steps_s": round(step * 400, 1),
        "encoder_alone_x_faster_than_1000_steps": round(step * 1000 / enc1, 1),
        "encoder_alone_x_faster_than_400_steps": round(step * 400 / enc1, 1),
        "encoder_plus_50_steps_x_faster_than_400_steps": round(
            400 * step / (enc1 + 50 * refine), 2
        ),
        "feedback_encoder_3_passes_s_per_photo_batch1": round(fb3, 4),
        "feedback_3_passes_plus_50_steps_x_faster_than_400_steps": round(
            400 * step / (fb3 + 50 * refine), 2
        ),
        "refine_steps_within_a_tenth_of_400_steps": int((40 * step - enc1) // refine),
        "refine_steps_within_a_tenth_of_400_steps_after_3_passes": int((40 * step - fb3) // refine),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    result = run(device, args.repeats)
    print(
        json.dumps(
            {
                "benchmark": "encoder",
                "arch": "paper256",
                "torch": torch.__version__,
                "python": platform.python_version(),
                "threads": torch.get_num_threads(),
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
