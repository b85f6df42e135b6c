"""Training the inversion encoder on the generator's own samples (``toon-teacher encoder train``).

No outside face data: every step draws random z, truncation psi (uniform in
``[trunc_min, trunc_max]``) and, with probability ``mix_prob``, a second z mixed in from a
random layer on, maps them to a W+ code ``ws``, renders the *target* ``G.synthesis(ws)``
(noise ``noise_mode``), degrades it into the *input* (:func:`teacher.encoder.degrade`), encodes
the input and renders the code with constant noise. The loss of a step:

- ``latent_weight`` x the mean squared error of the code against ``ws`` in units of W's
  per-dimension spread (the generator's own samples know their answer);
- the image distance of the reconstruction to the clean target: ``pixel_weight`` x an image
  pyramid MSE, ``dfeat_weight`` x the generator file's discriminator block features (when it
  holds D) and ``vgg_weight`` x NVIDIA's VGG16 features (``--vgg16``, a path the user passes);
  the same distances as :mod:`teacher.project`;
- ``delta_weight`` x the mean square of the per-layer deltas (the code's distance from W).

**Photos** (optional, ``--data``, after pSp): a folder or zip of aligned photos, unlabelled, at
the generator's resolution (the base's own training set, say). Then ``real_fraction`` of each
batch are photos (in an endless shuffled stream, :func:`teacher.dataset.index_stream`, mirrored
at random with ``mirror``), degraded the same way, with the image and delta terms only (a photo
has no known code). Renders teach the codes; photos teach the codes of faces the mapping network
does not reach, which real photos need (in the miniature, codes learned from renders alone
reconstruct held-out photos 8 dB worse than projection; see demo/README.md).

**Feedback passes** (``passes`` > 1, after ReStyle): the encoder also reads the render of its
current code and corrects it (:meth:`teacher.encoder.Encoder.invert`). Every step runs the
``passes`` passes on the same inputs, each from the previous pass's code and render (detached),
and the loss is the mean of the passes' losses. ``init`` (an encoder file of the same
architecture, one-pass or not) gives the starting weights of a fresh run, so a feedback encoder
can start from a trained one-pass encoder (its first pass then equals that encoder).

The generator is frozen; gradients reach the encoder through it. Adam; the learning rate falls
linearly to 0 over the last ``lr_decay`` of the run.

A step's random numbers come from ``seed`` and the step number alone, so a resumed run computes
what an uninterrupted one would. Under ``torchrun`` every process draws the whole global batch
and takes its slice; gradients are averaged.

Run directory (the trainers' conventions): ``config.json``, ``stats.jsonl`` and TensorBoard
events every tick (losses, speed, and at snapshots held-out reconstruction PSNR and latent
error on fixed samples), ``grid{kimg}.png`` (input | reconstruction | target),
``encoder-{kimg}.safetensors`` every ``snap`` ticks, ``encoder.safetensors`` at the end and
``resume-state.pt``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.config import RunConfig
from common.files import file_sha256
from common.images import make_grid, save_png
from common.runs import (
    RESUME_FILE,
    DistInfo,
    Interrupted,
    StopSignals,
    TickClock,
    TrainError,
    all_reduce_,
    kimg_bar,
    load_resume_state,
    log_stats,
    lr_factor,
    peak_label,
    peak_memory,
    prepare_run_dir,
    save_resume_state,
    snapshot_tag,
    stopped_result,
    trim_log,
)
from teacher.encoder import Encoder, degrade, encoder_for, save_encoder
from teacher.io import load_discriminator, load_generator, read_networks
from teacher.project import PixelDistance, VGGDistance, psnr
from teacher.sample import to_uint8


@dataclass(frozen=True)
class EncoderConfig(RunConfig):
    """Everything that determines an encoder training run (``config.json`` in the run dir)."""

    network: str = ""  # the generator whose W the encoder codes (and whose D gives features)
    data: str = ""  # optional aligned photos (folder or zip): image loss without a known code
    real_fraction: float = 0.5  # share of each batch taken from --data (when given)
    mirror: bool = True  # mirror half of the photos of --data
    outdir: str = ""
    preset: str = "paper256"
    seed: int = 0

    # Network (teacher.encoder.Encoder)
    channel_base: int = 16384
    channel_max: int = 512
    head_channels: int = 32
    hidden: int = 2048
    passes: int = 1  # passes per step; more than 1 builds a feedback encoder
    init: str = ""  # optional encoder file whose weights start a fresh run

    # Samples
    trunc_min: float = 0.5
    trunc_max: float = 1.0
    mix_prob: float = 0.5
    noise_mode: str = "random"  # noise of the target renders

    # Degradations (teacher.encoder.degrade)
    degrade_prob: float = 0.8
    colour: float = 0.2
    blur: float = 1.5  # largest Gaussian sigma in pixels
    noise: float = 0.04
    jpeg_prob: float = 0.4
    jpeg_min: int = 40

    # Losses
    latent_weight: float = 1.0
    pixel_weight: float = 1.0
    dfeat_weight: float = 0.1
    vgg16: str = ""
    vgg_weight: float = 1.0
    delta_weight: float = 0.01

    # Optimisation and schedule
    batch: int = 8
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_decay: float = 0.3
    kimg: float = 1000.0
    tick_kimg: float = 4.0
    snap: int = 10
    eval_n: int = 64
    grid_n: int = 8

    def check(self) -> None:
        """Raise ValueError on values that cannot work."""
        if self.batch < 1 or self.kimg <= 0 or self.tick_kimg <= 0 or self.lr <= 0:
            raise ValueError("batch, kimg, tick_kimg and lr must be positive")
        if not 1 <= self.passes <= 64:
            raise ValueError("--passes must be from 1 to 64")
        if not 0 < self.trunc_min <= self.trunc_max:
            raise ValueError("need 0 < --trunc-min <= --trunc-max")
        if self.noise_mode not in ("random", "const", "none"):
            raise ValueError("--noise-mode must be random, const or none")
        for name in ("mix_prob", "degrade_prob", "jpeg_prob", "lr_decay", "real_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 1 <= self.jpeg_min <= 95:
            raise ValueError("--jpeg-min must be from 1 to 95")
        weights = (self.latent_weight, self.pixel_weight, self.dfeat_weight, self.vgg_weight)
        if min(weights) < 0 or self.delta_weight < 0:
            raise ValueError("loss weights must be at least 0")

    def arch(self) -> dict[str, int]:
        return dict(
            channel_base=self.channel_base,
            channel_max=self.channel_max,
            head_channels=self.head_channels,
            hidden=self.hidden,
            feedback=int(self.passes > 1),
            passes=self.passes,
        )

    def degradations(self) -> dict[str, float]:
        return dict(
            prob=self.degrade_prob,
            colour=self.colour,
            blur=self.blur,
            noise=self.noise,
            jpeg_prob=self.jpeg_prob,
            jpeg_min=self.jpeg_min,
        )


PRESETS: dict[str, dict[str, Any]] = {
    "paper256": dict(),
    "tiny": dict(
        channel_base=1024,
        channel_max=64,
        head_channels=8,
        hidden=256,
        blur=0.6,
        batch=16,
        lr=1e-3,
        kimg=2.0,
        tick_kimg=0.4,
        snap=5,
        eval_n=32,
        grid_n=4,
    ),
}


def make_config(preset: str, overrides: dict[str, Any]) -> EncoderConfig:
    """Preset values, then explicit overrides (``None`` means not given), as one config."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["preset"] = preset
    return EncoderConfig.from_dict(values)


# ---------------------------------------------------------------------------------------------
# Samples


def draw_samples(G, cfg: EncoderConfig, seed: int, n: int, device: torch.device):
    """``(ws, target, input)`` of ``n`` samples drawn from ``seed`` alone (see the module
    docstring): codes ``[n, num_ws, w_dim]``, clean renders and degraded renders in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn([n, G.z_dim], generator=g)
    z2 = torch.randn([n, G.z_dim], generator=g)
    psi = cfg.trunc_min + (cfg.trunc_max - cfg.trunc_min) * torch.rand([n], generator=g)
    mix = torch.rand([n], generator=g) < cfg.mix_prob
    cross = torch.randint(1, max(G.num_ws, 2), [n], generator=g)
    noise_seed = int(torch.randint(0, 2**31 - 1, [1], generator=g))
    c = torch.zeros([n, G.c_dim], device=device)
    with torch.no_grad():
        w1 = G.mapping(z.to(device), c)
        w2 = G.mapping(z2.to(device), c)
        layer = torch.arange(G.num_ws)[None, :]
        take2 = (mix[:, None] & (layer >= cross[:, None])).to(device)
        ws = torch.where(take2[:, :, None], w2, w1)
        w_avg = G.mapping.w_avg
        ws = w_avg + psi.to(device)[:, None, None] * (ws - w_avg)
        if cfg.noise_mode == "random":
            # random noise maps from a seeded generator on the device, restored afterwards
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(noise_seed)
                target = G.synthesis(ws, noise_mode="random", force_fp32=True)
        else:
            target = G.synthesis(ws, noise_mode=cfg.noise_mode, force_fp32=True)
        inp = degrade(target, g, cfg.degradations())
    return ws, target, inp


def load_photos(photos, cfg: EncoderConfig, seed: int, start: int, n: int, device):
    """``(target, input)`` of ``n`` photos: items ``start ..`` of the dataset's endless
    shuffled stream, degraded with the step's generator (``seed``)."""
    from teacher.dataset import index_stream

    idx = index_stream(len(photos), cfg.seed, start, n)
    x = torch.from_numpy(np.stack([photos[int(i)][0] for i in idx])).to(device)
    target = x.float() / 127.5 - 1
    g = torch.Generator().manual_seed(seed + 1)
    return target, degrade(target, g, cfg.degradations())


def _rank_slice(n: int, world: int, rank: int) -> slice:
    """This process's share of ``n`` items (contiguous, as even as possible)."""
    return slice(rank * n // world, (rank + 1) * n // world)


def _step_seed(cfg: EncoderConfig, step: int) -> int:
    return (cfg.seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def _eval_seed(cfg: EncoderConfig) -> int:
    return (cfg.seed * 1_000_003 + 2**40 + 1) % (2**63 - 1)


class EncoderLoss:
    """The step loss of the module docstring; ``__call__`` returns (total, terms)."""

    def __init__(self, G, D, cfg: EncoderConfig, w_std: torch.Tensor, device) -> None:
        self.G, self.cfg, self.w_std = G, cfg, w_std
        self.image = PixelDistance(D, cfg.pixel_weight, cfg.dfeat_weight if D is not None else 0)
        self.vgg = VGGDistance(cfg.vgg16, device) if cfg.vgg16 and cfg.vgg_weight > 0 else None

    def __call__(self, E: Encoder, ws, target, inp) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of samples with known codes ``ws``, or of photos (``ws`` None: no latent
        term): the mean over the encoder's passes. The terms are the last pass's, plus
        ``first_psnr_db`` when there are several."""
        cfg = self.cfg
        with torch.no_grad():
            feats = self.image.features(target)
            vfeats = self.vgg.features(target) if self.vgg is not None else None
        total = torch.zeros((), device=inp.device)
        first = None
        for step in E.trace(inp, self.G, detach=True):
            recon = step.render
            terms: dict[str, torch.Tensor] = {}
            if ws is not None:
                terms["latent"] = ((step.code - ws) / self.w_std).square().mean()
            terms["image"] = self.image(feats, recon).mean()
            if self.vgg is not None:
                terms["vgg"] = self.vgg(vfeats, recon).mean()
            terms["delta"] = step.delta.square().mean()
            loss = (
                cfg.latent_weight * terms.get("latent", torch.zeros(()))
                + terms["image"]
                + cfg.vgg_weight * terms.get("vgg", torch.zeros(()))
                + cfg.delta_weight * terms["delta"]
            )
            total = total + loss / E.passes
            with torch.no_grad():
                terms["psnr_db"] = psnr(recon, target).mean()
            first = terms["psnr_db"] if first is None else first
        if E.passes > 1:
            terms["first_psnr_db"] = first
        return total, terms


# ---------------------------------------------------------------------------------------------
# The loop


def training_loop(
    cfg: EncoderConfig,
    dist_info: DistInfo | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) encoder training; returns the counters (``cur_nimg``, ``step``,
    ``tick``, ``stopped``). ``stop_after_steps`` ends the call after that many steps without
    writing more (a kill, for tests)."""
    di = dist_info or DistInfo()
    device = di.device
    if cfg.batch % di.world:
        raise TrainError(f"--batch {cfg.batch} is not divisible by {di.world} processes")
    G = load_generator(cfg.network).to(device).requires_grad_(False)
    if G.c_dim:
        raise TrainError(f"{cfg.network}: encoders for conditional generators are not supported")
    if G.img_resolution < 8:
        raise TrainError(f"{cfg.network}: the generator's resolution is below 8 px")
    has_d = "D" in read_networks(cfg.network)
    D = None
    if has_d and cfg.dfeat_weight > 0:
        D = load_discriminator(cfg.network).to(device).requires_grad_(False)
    out = Path(cfg.outdir)
    resuming = False
    if di.main:
        resuming = prepare_run_dir(out, cfg.to_json(), free={"kimg"})
    if di.world > 1:
        import torch.distributed as dist

        flag = torch.tensor([int(resuming)], device=device)
        dist.broadcast(flag, 0)
        resuming = bool(flag.item())

    torch.manual_seed(cfg.seed)
    E = encoder_for(G, cfg.arch()).to(device).train()
    if cfg.init and not resuming:
        _warm_start(E, cfg)
    opt = torch.optim.Adam(E.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    state: dict[str, Any] = dict(cur_nimg=0, step=0, tick=0)
    if resuming:
        blob = load_resume_state(out / RESUME_FILE, {"E": E, "opt": opt})
        state = dict(blob["counters"])
    loss_fn = EncoderLoss(G, D, cfg, E.w_std, device)
    generator_info = {"file": Path(cfg.network).name, "sha256": file_sha256(cfg.network)}

    photos = None
    n_real = 0
    if cfg.data:
        from teacher.dataset import ImageDataset

        photos = ImageDataset(cfg.data, resolution=G.img_resolution, mirror=cfg.mirror)
        n_real = int(round(cfg.batch * cfg.real_fraction))
    n_syn = cfg.batch - n_real
    syn_sl = _rank_slice(n_syn, di.world, di.rank)
    real_sl = _rank_slice(n_real, di.world, di.rank)
    total_nimg = int(round(cfg.kimg * 1000))
    writer = None
    eval_set = None
    if di.main:
        from torch.utils.tensorboard import SummaryWriter

        done_step, done_nimg = state["step"], state["cur_nimg"]
        trim_log(out, "stats.jsonl", lambda x: x.get("Progress/step", 0) <= done_step, done_nimg)
        writer = SummaryWriter(str(out))
        if max(cfg.eval_n, cfg.grid_n) > 0:
            eval_set = draw_samples(G, cfg, _eval_seed(cfg), max(cfg.eval_n, cfg.grid_n), device)
        feat = "pixel pyramid" + (f" + {cfg.dfeat_weight:g} x D features" if D is not None else "")
        if loss_fn.vgg is not None:
            feat += f" + {cfg.vgg_weight:g} x VGG16"
        why = "" if D is not None or cfg.dfeat_weight == 0 else f" ({cfg.network} holds no D)"
        latent = "latent, " if n_syn else ""  # photos alone have no known code
        if photos is not None:
            print(
                f"encoder: {n_real} of every {cfg.batch} samples from {len(photos)} photos in "
                f"{cfg.data} (image and delta terms)",
                file=sys.stderr,
            )
        print(
            f"encoder: {sum(p.numel() for p in E.parameters()):,} parameters for "
            f"{G.img_resolution}px, {G.num_ws} x {G.w_dim} codes; losses: {latent}{feat}{why}, "
            f"delta; {device.type}, {di.world} process(es), batch {cfg.batch}; "
            + (
                f"resumed at {state['cur_nimg'] / 1000:g} kimg of {total_nimg / 1000:g}"
                if resuming
                else f"{total_nimg / 1000:g} kimg"
            ),
            file=sys.stderr,
        )

    bar = None
    if di.main and progress:
        bar = kimg_bar(
            total_nimg, state["cur_nimg"], "encoder", peak=lambda: peak_memory(device),
            peak_label=peak_label(device),
        )  # fmt: skip
    sums: dict[str, float] = {}
    steps_in_tick = 0
    steps_this_call = 0
    clock = TickClock(cfg.tick_kimg, state["cur_nimg"])
    saved_nimg = state["cur_nimg"] if resuming else None
    stopped = False
    signals = StopSignals("encoder")
    try:
        signals.install()
        while state["cur_nimg"] < total_nimg:
            # -- data: the step's samples, this process's slice ------------------------------
            seed = _step_seed(cfg, state["step"])
            ws = target = inp = None
            if n_syn:
                ws, target, inp = draw_samples(G, cfg, seed, n_syn, device)
            real = None
            if photos is not None and n_real:
                real = load_photos(photos, cfg, seed, state["step"] * n_real, n_real, device)
            factor = lr_factor(state["cur_nimg"], total_nimg, cfg.lr_decay)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor

            # -- encoder step: renders with their codes, photos without ------------------------
            opt.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=device)
            terms: dict[str, torch.Tensor] = {}
            if n_syn:
                loss_syn, terms = loss_fn(E, ws[syn_sl], target[syn_sl], inp[syn_sl])
                loss = loss + loss_syn * (n_syn / cfg.batch)
            if real is not None:
                loss_real, real_terms = loss_fn(E, None, real[0][real_sl], real[1][real_sl])
                loss = loss + loss_real * (n_real / cfg.batch)
                terms.update({f"photos_{k}": v for k, v in real_terms.items()})
            loss.backward()
            all_reduce_([p.grad for p in E.parameters() if p.grad is not None], di.world, True)
            opt.step()
            for k, v in [("loss", loss), *terms.items()]:
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            state["cur_nimg"] += cfg.batch
            state["step"] += 1
            steps_in_tick += 1
            steps_this_call += 1
            if bar is not None:
                bar.update_to(state["cur_nimg"])
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                stopped = True
                break

            # -- tick: stats, resume state, snapshot -----------------------------------------
            done = state["cur_nimg"] >= total_nimg
            if not clock.due(state["cur_nimg"], done):
                continue
            state["tick"] += 1
            names = sorted(sums)
            means = torch.tensor([sums[k] / steps_in_tick for k in names], dtype=torch.float64)
            all_reduce_([means], di.world, mean=True)
            stats: dict[str, float] = {
                f"Loss/{k}": float(v) for k, v in zip(names, means, strict=True)
            }
            stats.update(clock.figures(state, device))
            stats.update({"Progress/step": state["step"], "Progress/lr_factor": factor})
            sums.clear()
            steps_in_tick = 0
            snapshot = done or state["tick"] % max(cfg.snap, 1) == 0
            if di.main:
                with signals.protect():  # a stop waits for this tick's files
                    tag = snapshot_tag(state["cur_nimg"])
                    if snapshot:
                        training = {
                            "kimg": state["cur_nimg"] / 1000,
                            "config": json.loads(cfg.to_json()),
                        }
                        E.eval()
                        save_encoder(
                            E, out / f"encoder-{tag}.safetensors", generator_info, training
                        )
                        if done:
                            save_encoder(E, out / "encoder.safetensors", generator_info, training)
                        if eval_set is not None:
                            figures, grid = evaluate(E, G, eval_set, cfg.eval_n, cfg.grid_n)
                            stats.update(figures)
                            if grid is not None:
                                save_png(grid, out / f"grid{tag}.png")
                                writer.add_image(
                                    "input_recon_target", grid, state["cur_nimg"], dataformats="HWC"
                                )
                        E.train()
                    log_stats(out, writer, stats, state["cur_nimg"])
                    save_resume_state(out / RESUME_FILE, state, {"E": E, "opt": opt})
                    writer.flush()
                    saved_nimg = state["cur_nimg"]
            clock.restart(state["cur_nimg"])
    except Interrupted as e:
        if bar is not None:
            bar.close()
            bar = None
        return stopped_result("encoder", e, state, saved_nimg, di.main)
    finally:
        signals.restore()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return dict(state, stopped=stopped)


def _warm_start(E: Encoder, cfg: EncoderConfig) -> None:
    """Start ``E`` from the weights of the encoder file ``cfg.init`` (see the module
    docstring); a one-line TrainError when it does not fit."""
    from teacher.encoder import load_encoder, warm_start
    from teacher.spec import CheckpointError

    try:
        src = load_encoder(cfg.init)
        shape = {k: v for k, v in src.arch.items() if k not in ("feedback", "passes")}
        mine = {k: v for k, v in E.arch.items() if k not in ("feedback", "passes")}
        if shape != mine:
            raise ValueError(f"its architecture {shape} differs from this run's {mine}")
        widened = warm_start(E, src.state_dict())
    except (CheckpointError, ValueError) as e:
        raise TrainError(f"--init {cfg.init}: {e}") from None
    note = " (the render channels start at zero)" if widened else ""
    print(f"encoder: weights from {cfg.init}{note}", file=sys.stderr)


@torch.no_grad()
def evaluate(E: Encoder, G, samples, eval_n: int, grid_n: int) -> tuple[dict, np.ndarray | None]:
    """Held-out figures on fixed samples (``Eval/psnr_db`` of the reconstruction after all
    passes against the clean target, ``Eval/latent_mse`` in units of W's spread,
    ``Eval/delta_rms`` of the last pass, and with several passes ``Eval/first_psnr_db``) and
    the input | reconstruction | target grid of the first ``grid_n``."""
    ws, target, inp = samples
    steps = list(E.trace(inp, G))
    delta, pred, recon = steps[-1]
    first = steps[0].render
    figures = {}
    if eval_n > 0:
        n = eval_n
        figures = {
            "Eval/psnr_db": float(psnr(recon[:n], target[:n]).mean()),
            "Eval/latent_mse": float(((pred[:n] - ws[:n]) / E.w_std).square().mean()),
            "Eval/delta_rms": float(delta[:n].square().mean().sqrt()),
            "Eval/l1": float(F.l1_loss(recon[:n], target[:n]) / 2),
        }
        if E.passes > 1:
            figures["Eval/first_psnr_db"] = float(psnr(first[:n], target[:n]).mean())
    grid = None
    if grid_n > 0:
        rows = [to_uint8(x[:grid_n]) for x in (inp, recon, target)]
        grid = make_grid([im for trio in zip(*rows, strict=True) for im in trio], cols=3)
    return figures, grid


__all__ = [
    "PRESETS",
    "EncoderConfig",
    "EncoderLoss",
    "draw_samples",
    "make_config",
    "training_loop",
]
