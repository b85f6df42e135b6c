"""Training the student (pix2pix / pix2pixHD style) as one plain loop.

Phases of a step: data (a batch of pairs, augmented on the device: the same flip and affine on
source and target, photometric jitter on the source only), G forward, D step (real pairs
against the detached generated ones), G step (adversarial + feature matching + L1 + optional
perceptual loss, through the updated D), batch-norm statistics synchronised across processes,
then the EMA generator update. Learning rates are constant and then fall linearly to 0 over the
last ``lr_decay`` of the run (pix2pix). Mixed precision (``amp``) only on CUDA; fp16 uses a
gradient scaler per optimizer, bf16 needs none.

Multi-process: run under ``torchrun``; each process reads its own slots of the shard stream
(:mod:`student.data`) and takes ``batch / processes`` pairs per step; gradients (and batch-norm
statistics) are averaged across processes with ``all_reduce``, so every process holds the same
networks. Every process starts from the same seed, so the initial weights agree.

Run directory: ``config.json`` (the resolved config), ``stats.jsonl`` (one line per tick:
losses, timing, and held-out metrics at snapshots), TensorBoard events (the same scalars and the
src | student | teacher grids), ``grid{kimg}.png``, ``student-{kimg}.safetensors`` (the EMA
generator) every ``snap`` ticks, ``student.safetensors`` at the end, and ``resume-state.pt``
(networks, optimizers, scalers, counters, RNG states) written atomically every tick. Starting
the same command again continues from the last tick; on CPU, with the same process and worker
counts, the continued run computes exactly what an uninterrupted one would (the data position
is derived from the step count, see :mod:`student.data`).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from common.images import save_png
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
from student.config import StudentConfig
from student.data import open_pairs, split_counts, train_loader
from student.evaluate import comparison_grid, heldout_metrics, load_eval_set, run_student
from student.io import save_student
from student.loss import PerceptualLoss, d_loss, feature_matching, g_loss
from student.networks import (
    MultiscaleDiscriminator,
    build_generator,
    count_parameters,
    generator_arch,
)
from student.ops import augment_pair, uint8_to_float

__all__ = ["training_loop"]


# ---------------------------------------------------------------------------------------------
# Process-group helpers


def _average_grads(module: torch.nn.Module, world: int) -> None:
    """Replace each gradient of ``module`` by its mean over the processes."""
    all_reduce_([p.grad for p in module.parameters() if p.grad is not None], world, mean=True)


def _average_buffers(module: torch.nn.Module, world: int) -> None:
    """Replace each floating-point buffer of ``module`` (batch-norm statistics) by its mean over
    the processes."""
    all_reduce_([b for b in module.buffers() if b.is_floating_point()], world, mean=True)


def _check_in_sync(module: torch.nn.Module, world: int, device: torch.device) -> None:
    """Raise TrainError unless every process holds the same parameters (a checksum test)."""
    if world == 1:
        return
    with torch.no_grad():
        total = torch.stack([p.double().sum() for p in module.parameters()]).sum().view(1)
    lo, hi = total.clone(), total.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if float(hi - lo) > 1e-9 * max(1.0, float(total.abs())):
        raise TrainError("processes hold different generator weights (diverged); stopping")


def _all_mean(values: list[float], world: int, device: torch.device) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


# ---------------------------------------------------------------------------------------------
# The loop


def _ema_update(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
            if b.is_floating_point():
                b_ema.copy_(b.lerp(b_ema, beta))
            else:
                b_ema.copy_(b)


def training_loop(
    cfg: StudentConfig,
    dist_info: DistInfo | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) student training as configured; returns the final counters
    (``cur_nimg``, ``step``, ``tick``, ``stopped``).

    ``dist_info`` defaults to one process on the CPU; ``toon-student train`` passes
    :func:`common.runs.init_distributed` (CUDA when present, torchrun's process group when
    launched so).
    ``stop_after_steps`` ends the call after that many steps without writing anything more
    (a kill, for tests).
    """
    di = dist_info or DistInfo()
    device = di.device
    if cfg.batch % di.world:
        raise TrainError(f"--batch {cfg.batch} is not divisible by {di.world} processes")
    local_batch = cfg.batch // di.world
    info = open_pairs(cfg.pairs)
    counts = split_counts(info, cfg.holdout_percent)
    if counts["train"] == 0:
        raise TrainError(f"{info.root}: every pair is held out; lower --holdout-percent")
    vgg = None
    if cfg.vgg16 and cfg.vgg_weight > 0:
        vgg = PerceptualLoss(cfg.vgg16, device)  # a missing file fails before anything is written
    out = Path(cfg.outdir)
    resuming = False
    if di.main:
        # A resumed run may be longer (kimg) or use another worker count (warned about on
        # resume: the data order differs from then on); any other change is refused.
        resuming = prepare_run_dir(out, cfg.to_json(), free={"kimg", "workers"})
    if di.world > 1:
        flag = torch.tensor([int(resuming)], device=device)
        dist.broadcast(flag, 0)
        resuming = bool(flag.item())

    # -- networks and optimizers -------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    arch = generator_arch(cfg.arch, **({"output": cfg.output} if cfg.output != "tanh" else {}))
    G = build_generator(arch).to(device).train()
    if info.resolution % G.stride:
        raise TrainError(
            f"pairs are {info.resolution}x{info.resolution} but the {cfg.arch} generator needs "
            f"sizes divisible by {G.stride}"
        )
    D = MultiscaleDiscriminator(6, cfg.d_channels, cfg.d_layers, cfg.d_scales, cfg.d_norm)
    D = D.to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.glr, betas=tuple(cfg.betas))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.dlr, betas=tuple(cfg.betas))
    amp_dtype = None
    if device.type == "cuda" and cfg.amp != "none":
        amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        if amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            amp_dtype = torch.float16
            if di.main:
                print("student: this GPU has no bfloat16; using float16 AMP", file=sys.stderr)
    use_scaler = amp_dtype == torch.float16
    scaler_G = torch.amp.GradScaler("cuda", enabled=use_scaler)
    scaler_D = torch.amp.GradScaler("cuda", enabled=use_scaler)

    state: dict[str, Any] = dict(cur_nimg=0, step=0, tick=0)
    if resuming:
        state = _load_resume(
            out / RESUME_FILE, (G, D, G_ema, opt_G, opt_D, scaler_G, scaler_D), di, cfg
        )

    total_nimg = int(round(cfg.kimg * 1000))
    source = {"pairs_manifest_sha256": info.manifest_sha256, "teachers": info.teachers}
    eval_set = grid_set = None
    eval_prefix = "Eval/"
    writer = None
    if di.main:
        from torch.utils.tensorboard import SummaryWriter

        # The logs end where the resume state does (a stop or kill after it wrote more).
        done_step, done_nimg = state["step"], state["cur_nimg"]
        trim_log(out, "stats.jsonl", lambda x: x.get("Progress/step", 0) <= done_step, done_nimg)
        writer = SummaryWriter(str(out))
        n_load = max(cfg.eval_pairs, cfg.grid_pairs)
        loaded = load_eval_set(info, cfg, n_load)
        if loaded is not None:
            eval_set = (loaded[0][: cfg.eval_pairs], loaded[1][: cfg.eval_pairs])
            grid_set = (loaded[0][: cfg.grid_pairs], loaded[1][: cfg.grid_pairs])
            if loaded[2] != "heldout":
                eval_prefix = "EvalOnTrain/"
        print(
            f"student: {cfg.arch} generator, {count_parameters(G):,} parameters; "
            f"{counts['train']} training and {counts['heldout']} held-out pairs at "
            f"{info.resolution}px; {device.type}, {di.world} process(es) x {cfg.workers} "
            f"loader worker(s), batch {cfg.batch}; "
            + (
                f"resumed at {state['cur_nimg'] / 1000:g} kimg of {total_nimg / 1000:g}"
                if resuming
                else f"{total_nimg / 1000:g} kimg"
            ),
            file=sys.stderr,
        )
        if eval_prefix != "Eval/" and cfg.eval_pairs > 0:
            print(
                f"student: no pair is held out ({cfg.holdout_percent:g}% of {info.count}); the "
                "snapshot figures are on training pairs and logged as EvalOnTrain/* (generate "
                "more pairs or raise --holdout-percent for held-out figures)",
                file=sys.stderr,
            )

    loader = train_loader(
        info, cfg, di.rank, di.world, local_batch, state["step"], pin_memory=device.type == "cuda"
    )
    batches = iter(loader)

    clock = TickClock(cfg.tick_kimg, state["cur_nimg"])
    sums: dict[str, torch.Tensor] = {}
    steps_in_tick = 0
    bar = None
    if di.main and progress:
        bar = kimg_bar(
            total_nimg,
            state["cur_nimg"],
            "student",
            peak=lambda: peak_memory(device),
            peak_label=peak_label(device),
        )
    steps_this_call = 0
    concat_d = cfg.d_norm != "batch"  # batch norm in D must not mix real and fake pairs

    def autocast():
        return torch.autocast(
            device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        )

    def add(name: str, value: torch.Tensor) -> None:
        v = value.detach().float()
        sums[name] = sums[name] + v if name in sums else v

    saved_nimg = state["cur_nimg"] if resuming else None  # where a rerun starts
    stopped = False
    signals = StopSignals("student")
    try:
        signals.install()
        while state["cur_nimg"] < total_nimg:
            # -- data ------------------------------------------------------------------------------
            batch = next(batches)
            src = uint8_to_float(batch["src"].to(device, non_blocking=True))
            dst = uint8_to_float(batch["dst"].to(device, non_blocking=True))
            src, dst = augment_pair(src, dst, batch["aug"].to(device))
            factor = lr_factor(state["cur_nimg"], total_nimg, cfg.lr_decay)
            for group in opt_G.param_groups:
                group["lr"] = cfg.glr * factor
            for group in opt_D.param_groups:
                group["lr"] = cfg.dlr * factor

            # -- G forward -------------------------------------------------------------------------
            G.requires_grad_(True)
            with autocast():
                fake = G(src)

            # -- D step ---------------------------------------------------------------------------
            D.requires_grad_(True)
            with autocast():
                if concat_d:
                    both = D(torch.cat([src, src]), torch.cat([dst, fake.detach()]))
                    real_logits = [s[-1][: src.shape[0]] for s in both]
                    fake_logits = [s[-1][src.shape[0] :] for s in both]
                else:
                    real_logits = [s[-1] for s in D(src, dst)]
                    fake_logits = [s[-1] for s in D(src, fake.detach())]
            loss_D = d_loss(real_logits, fake_logits, cfg.gan_loss)
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            _average_grads(D, di.world)
            scaler_D.step(opt_D)
            scaler_D.update()
            add("Loss/D/loss", loss_D)
            add("Loss/D/real", torch.stack([r.float().mean() for r in real_logits]).mean())
            add("Loss/D/fake", torch.stack([f.float().mean() for f in fake_logits]).mean())

            # -- G step ---------------------------------------------------------------------------
            D.requires_grad_(False)
            with autocast():
                fake_feats = D(src, fake)
                with torch.no_grad():
                    real_feats = D(src, dst) if cfg.fm_weight > 0 else None
            loss_gan = g_loss([f[-1] for f in fake_feats], cfg.gan_loss)
            loss_l1 = F.l1_loss(fake.float(), dst)
            loss_G = cfg.gan_weight * loss_gan + cfg.l1_weight * loss_l1
            if real_feats is not None:
                loss_fm = feature_matching(real_feats, fake_feats)
                loss_G = loss_G + cfg.fm_weight * loss_fm
                add("Loss/G/fm", loss_fm)
            if vgg is not None:
                loss_vgg = vgg(fake, dst)
                loss_G = loss_G + cfg.vgg_weight * loss_vgg
                add("Loss/G/vgg", loss_vgg)
            opt_G.zero_grad(set_to_none=True)
            scaler_G.scale(loss_G).backward()
            _average_grads(G, di.world)
            scaler_G.step(opt_G)
            scaler_G.update()
            _average_buffers(G, di.world)
            G.requires_grad_(False)
            add("Loss/G/loss", loss_G)
            add("Loss/G/gan", loss_gan)
            add("Loss/G/l1", loss_l1)

            # -- EMA -------------------------------------------------------------------------------
            state["cur_nimg"] += cfg.batch
            state["step"] += 1
            ema_nimg = cfg.ema_kimg * 1000
            if cfg.ema_rampup is not None:
                ema_nimg = min(ema_nimg, state["cur_nimg"] * cfg.ema_rampup)
            _ema_update(G_ema, G, 0.5 ** (cfg.batch / max(ema_nimg, 1e-8)))

            steps_in_tick += 1
            steps_this_call += 1
            if bar is not None:
                bar.update_to(state["cur_nimg"])
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                stopped = True
                break

            # -- tick: stats, resume state, snapshot ---------------------------------------------
            done = state["cur_nimg"] >= total_nimg
            if not clock.due(state["cur_nimg"], done):
                continue
            state["tick"] += 1
            names = sorted(sums)
            means = _all_mean([float(sums[k]) / steps_in_tick for k in names], di.world, device)
            stats: dict[str, float] = dict(zip(names, means, strict=True))
            stats.update(clock.figures(state, device))
            stats.update({"Progress/step": state["step"], "Progress/lr_factor": factor})
            sums.clear()
            steps_in_tick = 0
            _check_in_sync(G, di.world, device)
            snapshot = done or state["tick"] % max(cfg.snap, 1) == 0
            if di.main:
                with signals.protect():  # a stop waits for this tick's files
                    tag = snapshot_tag(state["cur_nimg"])
                    if snapshot:
                        training = {
                            "resolution": info.resolution,
                            "kimg": state["cur_nimg"] / 1000,
                            "step": state["step"],
                            "holdout_percent": cfg.holdout_percent,
                            "config": json.loads(cfg.to_json()),
                        }
                        save_student(
                            G_ema, arch, out / f"student-{tag}.safetensors", source, training
                        )
                        if done:
                            save_student(G_ema, arch, out / "student.safetensors", source, training)
                        if eval_set is not None and cfg.eval_pairs > 0:
                            pred = run_student(G_ema, eval_set[0], device)
                            metrics = heldout_metrics(pred, eval_set[0], eval_set[1])
                            stats.update(
                                {
                                    eval_prefix + k.removeprefix("Eval/"): v
                                    for k, v in metrics.items()
                                }
                            )
                        if grid_set is not None and cfg.grid_pairs > 0:
                            pred = run_student(G_ema, grid_set[0], device)
                            grid = comparison_grid(grid_set[0], pred, grid_set[1])
                            save_png(grid, out / f"grid{tag}.png")
                            writer.add_image(
                                "src_student_teacher",
                                grid,
                                global_step=state["cur_nimg"],
                                dataformats="HWC",
                            )
                    log_stats(out, writer, stats, state["cur_nimg"])
                    _save_resume(
                        out / RESUME_FILE,
                        state,
                        (G, D, G_ema, opt_G, opt_D, scaler_G, scaler_D),
                        di,
                        cfg,
                    )
                    writer.flush()
                    saved_nimg = state["cur_nimg"]
            clock.restart(state["cur_nimg"])
    except Interrupted as e:
        if bar is not None:
            bar.close()
            bar = None
        return stopped_result("student", e, state, saved_nimg, di.main)
    finally:
        signals.restore()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return dict(state, stopped=stopped)


# ---------------------------------------------------------------------------------------------
# Resume state


def _networks(objects) -> dict[str, Any]:
    """The resume file's names of ``(G, D, G_ema, opt_G, opt_D, scaler_G, scaler_D)``."""
    names = ("G", "D", "G_ema", "opt_G", "opt_D", "scaler_G", "scaler_D")
    return dict(zip(names, objects, strict=True))


def _save_resume(path: Path, state, objects, di: DistInfo, cfg: StudentConfig) -> None:
    """Write the resume state: counters, networks, optimizers, scalers, the process and worker
    counts (to warn when a resume changes them) and the RNG states."""
    save_resume_state(path, state, _networks(objects), {"world": di.world, "workers": cfg.workers})


def _load_resume(path: Path, objects, di: DistInfo, cfg: StudentConfig) -> dict:
    """Restore what :func:`_save_resume` wrote (scalers may be missing) and return the
    counters; warn when the process or worker count differs from the saved run's."""
    blob = load_resume_state(path, _networks(objects), optional=("scaler_G", "scaler_D"))
    layout = (blob.get("world", di.world), blob.get("workers", cfg.workers))
    if layout != (di.world, cfg.workers) and di.main:
        print(
            f"student: resuming a run of {layout[0]} processes x {layout[1]} workers with "
            f"{di.world} x {cfg.workers}; the data order will differ from an uninterrupted run",
            file=sys.stderr,
        )
    return dict(blob["counters"])
