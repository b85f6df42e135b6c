"""StyleGAN2-ADA fine-tuning (transfer learning with ADA and FreezeD) as one plain loop.

Phases of a step, as in StyleGAN2-ADA: G main (every step), G path-length regularization
(every ``g_reg_interval`` steps), D main (every step), D R1 regularization (every
``d_reg_interval`` steps), then the EMA generator update and the ADA probability update.
Adam's learning rate and betas are corrected for lazy regularization
(``lr * k/(k+1)``, ``beta ** (k/(k+1))`` for interval k).

Multi-process: run under ``torchrun``; every process draws the same global random inputs and
takes its slice of the global batch; gradients are summed across processes with
``all_reduce`` (the loss is normalised by the global batch), so the update equals a
single-process step on the same global batch. ``batch_gpu`` splits a process's share into
chunks whose gradients accumulate (memory, not results).

Run directory: ``config.json`` (the resolved config), ``stats.jsonl`` (one line per tick),
TensorBoard events, ``reals.png`` and ``fakes{kimg}.png`` grids,
``network-snapshot-{kimg}.safetensors`` (G, D, G_ema) every ``snap`` ticks, and
``resume-state.pt`` (networks, optimizers, ADA p, counters, RNG states) written atomically
every tick: starting the same command again continues from the last tick.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

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
    peak_label,
    peak_memory,
    prepare_run_dir,
    save_resume_state,
    snapshot_tag,
    stopped_result,
    trim_log,
)
from teacher.augment import make_augment_pipe
from teacher.blend import block_resolution_of
from teacher.config import ADDED_FIELDS, TrainConfig
from teacher.dataset import ImageDataset, index_stream
from teacher.footprint import choose_batch_gpu
from teacher.io import read_networks, save_snapshot
from teacher.loss import LatentDraw, StyleGAN2Loss
from teacher.networks import Discriminator, Generator
from teacher.sample import to_uint8

# ---------------------------------------------------------------------------------------------
# Setup helpers


def _build_networks(
    cfg: TrainConfig, resolution: int, c_dim: int, device: torch.device
) -> tuple[Generator, Discriminator, Generator, dict[str, Any]]:
    """G, D, G_ema from ``cfg.base`` (by name) or fresh from the preset's architecture."""
    source: dict[str, Any] = {}
    if cfg.base:
        specs = read_networks(cfg.base)
        if "G" not in specs and "G_ema" not in specs:
            raise TrainError(f"{cfg.base}: holds no generator to fine-tune")
        g_spec = specs.get("G") or specs["G_ema"]
        ema_spec = specs.get("G_ema") or g_spec
        if g_spec.arch["img_resolution"] != resolution:
            raise TrainError(
                f"data is {resolution}x{resolution} but {cfg.base} generates "
                f"{g_spec.arch['img_resolution']}x{g_spec.arch['img_resolution']}"
            )
        if g_spec.arch["c_dim"] != c_dim:
            raise TrainError(
                f"data has {c_dim} label dims but {cfg.base} expects {g_spec.arch['c_dim']}"
            )
        if "D" not in specs and not cfg.fresh_d:
            raise TrainError(
                f"{cfg.base} holds no discriminator (it holds {', '.join(sorted(specs))}); "
                "import the original snapshot again (toon-teacher import keeps G, D and G_ema) "
                "or pass --fresh-d to train a new discriminator from random weights"
            )
        _check_freezed(cfg, fresh=cfg.fresh_d or "D" not in specs)
        G = g_spec.build().train()
        G_ema = ema_spec.build().eval()
        if "D" in specs and not cfg.fresh_d:
            d_arch = dict(specs["D"].arch)
            d_arch.update(freeze_layers=cfg.freezed, mbstd_group_size=cfg.mbstd_group_size)
            D = Discriminator(**d_arch)
            D.load_state_dict(specs["D"].state, strict=True)
        else:
            D = _fresh_discriminator(cfg, G)
        source = {"base": dict(g_spec.source), "base_has_D": "D" in specs}
        if cfg.fresh_d:
            source["fresh_d"] = True
    else:
        _check_freezed(cfg, fresh=True)
        G = Generator(
            z_dim=cfg.z_dim,
            c_dim=c_dim,
            w_dim=cfg.w_dim,
            img_resolution=resolution,
            mapping_layers=cfg.mapping_layers,
            channel_base=cfg.channel_base,
            channel_max=cfg.channel_max,
            num_fp16_res=cfg.num_fp16_res,
            conv_clamp=cfg.conv_clamp,
        ).train()
        G_ema = copy.deepcopy(G).eval()
        D = _fresh_discriminator(cfg, G)
    G_ema.requires_grad_(False)
    return G.to(device), D.train().to(device), G_ema.to(device), source


def trainable_g_params(
    G: Generator, G_ema: Generator, freezeg: int, freeze_mapping: bool
) -> list[torch.nn.Parameter]:
    """The generator tensors fine-tuning may change: all but the synthesis blocks up to
    resolution ``freezeg`` (with their toRGB layers and styles) and, with ``freeze_mapping``,
    the mapping network. Frozen blocks render the base's coarse structure for every w, so the
    fine-tuned model keeps drawing the same face for the same w (FreezeG; with a frozen mapping
    network, FreezeSG).

    A frozen tensor of ``G`` is set to the base's ``G_ema`` value (the weights the base renders
    and projects with), so that the moving average, which pulls ``G_ema`` toward ``G``, leaves it
    exactly as the base had it."""
    ema = dict(G_ema.named_parameters())
    keep = []
    for name, p in G.named_parameters():
        res = block_resolution_of(name)
        frozen = freeze_mapping if res is None else res <= freezeg
        p.requires_grad_(not frozen)
        if frozen:
            with torch.no_grad():
                p.copy_(ema[name])
        else:
            keep.append(p)
    return keep


def _check_freezed(cfg: TrainConfig, fresh: bool) -> None:
    """FreezeD keeps trained layers of the base's discriminator; freezing random ones would
    only cripple the new discriminator."""
    if cfg.freezed > 0 and fresh:
        raise TrainError(
            f"--freezed {cfg.freezed} would freeze layers of a new, randomly initialised "
            "discriminator; give a --base that holds D (toon-teacher import keeps it) or drop "
            "--freezed"
        )


def _fresh_discriminator(cfg: TrainConfig, G: Generator) -> Discriminator:
    return Discriminator(
        c_dim=G.c_dim,
        img_resolution=G.img_resolution,
        img_channels=G.img_channels,
        channel_base=G.arch["channel_base"],
        channel_max=G.arch["channel_max"],
        num_fp16_res=G.arch["num_fp16_res"],
        conv_clamp=G.arch["conv_clamp"],
        mbstd_group_size=cfg.mbstd_group_size,
        freeze_layers=cfg.freezed,
    )


def _make_optimizer(params, lr: float, betas, eps: float, reg_interval: int) -> torch.optim.Adam:
    ratio = reg_interval / (reg_interval + 1) if reg_interval > 0 else 1.0
    return torch.optim.Adam(
        [p for p in params if p.requires_grad],
        lr=lr * ratio,
        betas=(betas[0] ** ratio, betas[1] ** ratio),
        eps=eps,
    )


def _make_augment(cfg: TrainConfig, device: torch.device):
    if not cfg.augpipe or cfg.augpipe == "none":
        return None
    pipe = make_augment_pipe(cfg.augpipe).to(device)
    pipe.p.copy_(torch.as_tensor(cfg.p))
    return pipe


# ---------------------------------------------------------------------------------------------
# Random inputs of a step


def draw_step_inputs(
    rng: torch.Generator, cfg: TrainConfig, G: Generator, num_ws: int, c_sampler: Callable
) -> dict[str, Any]:
    """All random inputs of one step for the global batch (identical on every process)."""
    B = cfg.batch
    out: dict[str, Any] = {}
    for phase in ("G", "Gpl", "D"):
        z = torch.randn([B, G.z_dim], generator=rng)
        mix_z = torch.randn([B, G.z_dim], generator=rng)
        cutoff = int(torch.randint(1, num_ws, [], generator=rng)) if num_ws > 1 else num_ws
        if float(torch.rand([], generator=rng)) >= cfg.style_mixing_prob:
            cutoff = num_ws
        out[phase] = LatentDraw(z, c_sampler(B, rng), mix_z, cutoff)
    pl_b = max(B // cfg.pl_batch_shrink, 1)
    res = G.img_resolution
    out["pl_noise"] = torch.randn([pl_b, G.img_channels, res, res], generator=rng) / math.sqrt(
        res * res
    )
    return out


class _Done:
    """A finished future (used when no loader threads are configured)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def _local(draw: LatentDraw, sl: slice, device: torch.device) -> LatentDraw:
    d = draw.slice(sl.start, sl.stop)
    return LatentDraw(d.z.to(device), d.c.to(device), d.mix_z.to(device), d.mix_cutoff)


def _rank_slice(n: int, world: int, rank: int) -> slice:
    per = n // world
    return slice(rank * per, (rank + 1) * per)


# ---------------------------------------------------------------------------------------------
# The loop


def _sum_grads(module: torch.nn.Module, world: int) -> None:
    """Sum the gradients of ``module``'s trainable parameters over the processes (a missing
    gradient counts as zeros), then replace NaN/inf entries as NVIDIA's loop does."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_([p.grad for p in params], world)
    for p in params:
        torch.nan_to_num_(p.grad, nan=0, posinf=1e5, neginf=-1e5)


def _all_sum(values: list[float], world: int) -> list[float]:
    """Sum a few scalars over the processes (in float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce_([t], world)
    return t.tolist()


def training_loop(
    cfg: TrainConfig,
    dist_info: DistInfo | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) fine-tuning as configured; returns the final counters and stats.

    ``stop_after_steps`` ends the process after that many steps in this call without writing
    anything more (used to simulate a kill in tests).
    """
    di = dist_info or DistInfo()
    device = di.device
    if cfg.batch % di.world:
        raise TrainError(f"--batch {cfg.batch} is not divisible by {di.world} processes")
    local_batch = cfg.batch // di.world
    if cfg.batch_gpu and local_batch % cfg.batch_gpu:
        raise TrainError(
            f"--batch-gpu {cfg.batch_gpu} must divide the per-process batch {local_batch}"
        )
    force_fp32 = device.type != "cuda"
    out = Path(cfg.outdir)
    resuming = False
    if di.main:
        # workers and resolution change no result (resolution: 0 in runs of older versions)
        free = {"kimg", "workers", "resolution"}
        resuming = prepare_run_dir(cfg.outdir, cfg.to_json(), free=free, defaults=ADDED_FIELDS)
    if di.world > 1:
        flag = torch.tensor([int(resuming)])
        dist.broadcast(flag, 0)
        resuming = bool(flag.item())

    data = ImageDataset(cfg.data, mirror=cfg.mirror, use_labels=cfg.cond)
    if di.main:
        data.check_all()
    G, D, G_ema, source = _build_networks(cfg, data.resolution, data.label_dim, device)
    aug = _make_augment(cfg, device)
    structure_ref = None
    if cfg.structure_weight > 0:
        if not cfg.base:
            raise TrainError(
                "--structure-weight compares the model with its base: give --base (or drop it)"
            )
        if cfg.structure_res < 4:
            raise TrainError(f"--structure-res must be at least 4, got {cfg.structure_res}")
        # The base's G_ema as it was loaded (resume states hold the moved G_ema, not this).
        structure_ref = copy.deepcopy(G_ema).eval().requires_grad_(False)
    loss = StyleGAN2Loss(
        G, D, aug, cfg.r1_gamma, cfg.pl_weight, cfg.pl_decay, cfg.noise_mode, force_fp32,
        structure_ref, cfg.structure_weight, cfg.structure_res,
    )  # fmt: skip
    if cfg.batch_gpu:
        batch_gpu, why = cfg.batch_gpu, "--batch-gpu"
    else:
        batch_gpu, why = choose_batch_gpu(
            local_batch,
            cfg.mbstd_group_size,
            G,
            D,
            device,
            lambda b: _probe_pass(loss, G, D, cfg, b, device),
            processes_here=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )
    if batch_gpu % min(cfg.mbstd_group_size, batch_gpu):
        raise TrainError(
            f"chunks of {batch_gpu} images do not split into mbstd groups of {cfg.mbstd_group_size}"
        )
    g_trainable = trainable_g_params(G, G_ema, cfg.freezeg, cfg.freeze_mapping)
    opt_G = _make_optimizer(g_trainable, cfg.glr, cfg.betas, cfg.eps, cfg.g_reg_interval)
    opt_D = _make_optimizer(D.parameters(), cfg.dlr, cfg.betas, cfg.eps, cfg.d_reg_interval)
    rng = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + 1000 * di.rank)

    labels = data.labels

    def c_sampler(n: int, gen: torch.Generator) -> torch.Tensor:
        if labels is None:
            return torch.zeros([n, 0])
        idx = torch.randint(0, len(labels), [n], generator=gen).numpy()
        return torch.from_numpy(labels[idx])

    state = dict(cur_nimg=0, tick=0, step=0, ada_sign_sum=0.0, ada_sign_n=0.0, r_t=0.0)
    if resuming:
        state = _load_resume(out / RESUME_FILE, G, D, G_ema, opt_G, opt_D, aug, loss, rng)
    # NVIDIA uses a faster ADA adjustment (100 kimg instead of 500) when starting from a base.
    ada_kimg = cfg.ada_kimg if cfg.ada_kimg is not None else (100.0 if cfg.base else 500.0)
    total_nimg = int(cfg.kimg * 1000)

    writer = None
    if di.main:
        from torch.utils.tensorboard import SummaryWriter

        passes = local_batch // batch_gpu
        print(
            f"finetune: {G.img_resolution}px, {device.type}, {di.world} process(es); batch "
            f"{cfg.batch} in {passes} pass(es) of {batch_gpu} image(s) ({why}); "
            + (
                f"resumed at {state['cur_nimg'] / 1000:g} kimg of {total_nimg / 1000:g}"
                if resuming
                else f"{total_nimg / 1000:g} kimg"
            ),
            file=sys.stderr,
        )
        # The logs end where the resume state does (a stop or kill after it wrote more).
        done_nimg = state["cur_nimg"]
        trim_log(
            out, "stats.jsonl", lambda x: round(x["Progress/kimg"] * 1000) <= done_nimg, done_nimg
        )
        writer = SummaryWriter(str(out))
        if not resuming:
            reals = [data[i][0].transpose(1, 2, 0) for i in range(min(len(data), cfg.grid_seeds))]
            save_png(make_grid(reals), out / "reals.png")
    grid_z = torch.from_numpy(
        np.random.RandomState(123).randn(cfg.grid_seeds, G.z_dim).astype(np.float32)
    )
    grid_c = c_sampler(cfg.grid_seeds, torch.Generator().manual_seed(123))

    clock = TickClock(cfg.tick_kimg, state["cur_nimg"])
    sums: dict[str, float] = {}
    bar = None
    if di.main and progress:
        bar = kimg_bar(
            total_nimg,
            state["cur_nimg"],
            "finetune",
            peak=lambda: peak_memory(device),
            peak_label=peak_label(device),
        )

    def note(phase: str, start: int, n: int, size: int) -> None:
        if bar is not None and n > size:  # several passes: show which one runs
            bar.note(f"{phase} pass {start // size + 1}/{-(-n // size)}")

    steps_this_call = 0
    num_ws = G.num_ws

    def add(name: str, value: float) -> None:
        sums[name] = sums.get(name, 0.0) + value
        sums[name + "#n"] = sums.get(name + "#n", 0.0) + 1

    # Images of step k are read (in threads) while step k-1 computes; which images a step reads
    # depends only on (seed, k), so prefetching changes nothing else.
    def load_step(k: int) -> tuple[np.ndarray, np.ndarray]:
        idx = index_stream(len(data), cfg.seed, k * cfg.batch, cfg.batch)
        idx = idx[_rank_slice(cfg.batch, di.world, di.rank)]
        items = [data[int(i)] for i in idx]
        return np.stack([it[0] for it in items]), np.stack([it[1] for it in items])

    loader = ThreadPoolExecutor(max_workers=cfg.workers) if cfg.workers > 0 else None
    pending: dict[int, Any] = {}
    saved_nimg = state["cur_nimg"] if resuming else None  # where a rerun starts
    stopped = False
    signals = StopSignals("finetune")
    try:
        signals.install()
        while state["cur_nimg"] < total_nimg:
            step = state["step"]
            # -- data: this process's slice of the global batch -----------------------------------
            images, labels_np = (
                pending.pop(step) if step in pending else _Done(load_step(step))
            ).result()
            pending[step + 1] = (
                loader.submit(load_step, step + 1) if loader else _Done(load_step(step + 1))
            )
            real = torch.from_numpy(images).to(device).float() / 127.5 - 1
            real_c = torch.from_numpy(labels_np).to(device)
            draws = draw_step_inputs(rng, cfg, G, num_ws, c_sampler)
            sl = _rank_slice(cfg.batch, di.world, di.rank)

            # -- G main -------------------------------------------------------------------------
            for p in g_trainable:
                p.requires_grad_(True)
            D.requires_grad_(False)
            opt_G.zero_grad(set_to_none=True)
            draw = _local(draws["G"], sl, device)
            for start in range(0, local_batch, batch_gpu):
                note("G", start, local_batch, batch_gpu)
                lg = loss.g_main(draw.slice(start, start + batch_gpu), denom=cfg.batch)
                lg.backward()
                add("Loss/G/loss", lg.item() * cfg.batch / batch_gpu)
                if loss.last_structure is not None:
                    add("Loss/G/structure", loss.last_structure)
            _sum_grads(G, di.world)
            opt_G.step()
            loss.update_w_avg(di.world)

            # -- G path-length regularization ------------------------------------------------------
            if cfg.pl_weight > 0 and cfg.g_reg_interval > 0 and step % cfg.g_reg_interval == 0:
                opt_G.zero_grad(set_to_none=True)
                pl_b = draws["pl_noise"].shape[0]
                pl_sl = _rank_slice(pl_b, di.world, di.rank)
                draw = _local(draws["Gpl"], pl_sl, device)
                noise = draws["pl_noise"][pl_sl].to(device)
                chunk = max(batch_gpu // cfg.pl_batch_shrink, 1)
                length_sum = 0.0
                for start in range(0, draw.z.shape[0], chunk):
                    note("path length", start, draw.z.shape[0], chunk)
                    lp, lengths = loss.g_pl(
                        draw.slice(start, start + chunk),
                        noise[start : start + chunk],
                        denom=pl_b,
                    )
                    (lp * cfg.g_reg_interval).backward()
                    length_sum += float(lengths.sum())
                    add("Loss/pl_penalty", lp.item() * pl_b / max(lengths.numel(), 1))
                _sum_grads(G, di.world)
                opt_G.step()
                loss.update_w_avg(di.world)
                (total_len,) = _all_sum([length_sum], di.world)
                loss.update_pl_mean(torch.tensor(total_len / pl_b, dtype=torch.float32))

            # -- D main (+ R1 every d_reg_interval steps) ------------------------------------------
            G.requires_grad_(False)
            D.requires_grad_(True)
            do_r1 = cfg.r1_gamma > 0 and cfg.d_reg_interval > 0 and step % cfg.d_reg_interval == 0
            opt_D.zero_grad(set_to_none=True)
            draw = _local(draws["D"], sl, device)
            sign_sum = 0.0
            for start in range(0, local_batch, batch_gpu):
                note("D", start, local_batch, batch_gpu)
                lf = loss.d_fake(draw.slice(start, start + batch_gpu), denom=cfg.batch)
                lr_, logits = loss.d_real(
                    real[start : start + batch_gpu],
                    real_c[start : start + batch_gpu],
                    True,
                    False,
                    cfg.batch,
                )
                (lf + lr_).backward()
                sign_sum += float(logits.sign().sum())
                add("Loss/D/loss", (lf + lr_).item() * cfg.batch / batch_gpu)
                add("Loss/scores/real", float(logits.mean()))
            _sum_grads(D, di.world)
            opt_D.step()
            loss.update_w_avg(di.world)
            if do_r1:
                opt_D.zero_grad(set_to_none=True)
                for start in range(0, local_batch, batch_gpu):
                    note("R1", start, local_batch, batch_gpu)
                    l1, _ = loss.d_real(
                        real[start : start + batch_gpu],
                        real_c[start : start + batch_gpu],
                        False,
                        True,
                        cfg.batch,
                    )
                    (l1 * cfg.d_reg_interval).backward()
                    add("Loss/r1_penalty", l1.item() * cfg.batch / batch_gpu)
                _sum_grads(D, di.world)
                opt_D.step()
            G.requires_grad_(False)
            D.requires_grad_(False)

            # -- EMA -------------------------------------------------------------------------------
            state["cur_nimg"] += cfg.batch
            state["step"] += 1
            ema_nimg = cfg.ema_kimg * 1000
            if cfg.ema_rampup is not None:
                ema_nimg = min(ema_nimg, state["cur_nimg"] * cfg.ema_rampup)
            ema_beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
            with torch.no_grad():
                for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                    p_ema.copy_(p.detach().lerp(p_ema, ema_beta))
                for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                    b_ema.copy_(b)

            # -- ADA -------------------------------------------------------------------------------
            state["ada_sign_sum"] += sign_sum
            state["ada_sign_n"] += local_batch
            if aug is not None and cfg.target is not None and state["step"] % cfg.ada_interval == 0:
                s, n = _all_sum([state["ada_sign_sum"], state["ada_sign_n"]], di.world)
                state["r_t"] = s / max(n, 1)
                adjust = (
                    np.sign(state["r_t"] - cfg.target)
                    * (cfg.batch * cfg.ada_interval)
                    / (ada_kimg * 1000)
                )
                aug.p.copy_(torch.clamp(aug.p + float(adjust), 0.0, 1.0))
                state["ada_sign_sum"] = 0.0
                state["ada_sign_n"] = 0.0

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
            stats = {k: v / sums[k + "#n"] for k, v in sums.items() if not k.endswith("#n")}
            stats.update(clock.figures(state, device))
            stats["Progress/augment"] = float(aug.p) if aug is not None else 0.0
            stats["Progress/r_t"] = state["r_t"]
            sums.clear()
            snapshot = done or state["tick"] % max(cfg.snap, 1) == 0
            if di.main:
                with signals.protect():  # a stop waits for this tick's files
                    _save_resume(
                        out / RESUME_FILE, state, G, D, G_ema, opt_G, opt_D, aug, loss, rng
                    )
                    log_stats(out, writer, stats, state["cur_nimg"])
                    if snapshot:
                        kimg_tag = snapshot_tag(state["cur_nimg"])
                        save_snapshot(
                            {"G": G, "D": D, "G_ema": G_ema},
                            out / f"network-snapshot-{kimg_tag}.safetensors",
                            source=source,
                            extra={
                                "training": {
                                    "kimg": state["cur_nimg"] / 1000,
                                    "augment_p": float(aug.p) if aug is not None else 0.0,
                                    "config": json.loads(cfg.to_json()),
                                }
                            },
                        )
                        grid = _render_grid(G_ema, grid_z, grid_c, batch_gpu, device)
                        save_png(grid, out / f"fakes{kimg_tag}.png")
                        writer.add_image(
                            "fakes", grid, global_step=state["cur_nimg"], dataformats="HWC"
                        )
                    writer.flush()
                    saved_nimg = state["cur_nimg"]
                if snapshot and cfg.metrics:  # may take long: a stop does not wait for it
                    _run_metrics(cfg, G_ema, data, device, out, state, writer)
            clock.restart(state["cur_nimg"])

    except Interrupted as e:
        if bar is not None:
            bar.close()
            bar = None
        return stopped_result("finetune", e, state, saved_nimg, di.main)
    finally:
        signals.restore()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if loader is not None:
            loader.shutdown(wait=False, cancel_futures=True)
    return dict(state, stopped=stopped)


def _render_grid(G_ema, grid_z, grid_c, batch: int, device: torch.device) -> np.ndarray:
    """The snapshot's image grid, rendered in chunks of the pass size (memory)."""
    force_fp32 = device.type != "cuda"
    images = []
    with torch.no_grad():
        for i in range(0, grid_z.shape[0], batch):
            imgs = G_ema(
                grid_z[i : i + batch].to(device),
                grid_c[i : i + batch].to(device),
                noise_mode="const",
                force_fp32=force_fp32,
            )
            images += list(to_uint8(imgs))
    return make_grid(images)


def _probe_pass(loss: StyleGAN2Loss, G, D, cfg: TrainConfig, b: int, device) -> None:
    """One pass of every phase at ``b`` images on random inputs (the CUDA memory probe).
    Gradients are dropped and the RNG states and w statistics restored, so the run is the same
    as with ``--batch-gpu b`` given."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    gen = torch.Generator().manual_seed(0)
    try:
        res = G.img_resolution
        z = torch.randn([b, G.z_dim], generator=gen).to(device)
        c = torch.zeros([b, G.c_dim], device=device)
        draw = LatentDraw(z, c, z, G.num_ws)
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss.g_main(draw, denom=b).backward()
        pl_n = max(b // cfg.pl_batch_shrink, 1)
        noise = torch.randn([pl_n, G.img_channels, res, res], generator=gen).to(device)
        loss.g_pl(draw.slice(0, pl_n), noise, denom=pl_n)[0].backward()
        G.requires_grad_(False)
        D.requires_grad_(True)
        real = torch.rand([b, G.img_channels, res, res], generator=gen).to(device) * 2 - 1
        (loss.d_fake(draw, denom=b) + loss.d_real(real, c, True, True, b)[0]).backward()
    finally:
        G.requires_grad_(False)
        D.requires_grad_(False)
        for net in (G, D):
            net.zero_grad(set_to_none=True)
        loss.w_sum, loss.w_count = None, 0
        torch.set_rng_state(cpu_rng)
        if cuda_rng:
            torch.cuda.set_rng_state_all(cuda_rng)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def _run_metrics(cfg, G_ema, data, device, out: Path, state: dict, writer) -> None:
    from teacher.metrics import evaluate

    def batches():
        for start in range(0, len(data), 64):
            chunk = [data[i][0] for i in range(start, min(start + 64, len(data)))]
            yield torch.from_numpy(np.stack(chunk))

    results = evaluate(
        list(cfg.metrics),
        G_ema,
        batches,
        {"inception": cfg.inception or None, "vgg16": cfg.vgg16 or None},
        device=device,
    )
    line = {"kimg": state["cur_nimg"] / 1000, "results": results}
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    for k, v in results.items():
        if isinstance(v, (int, float)):
            writer.add_scalar(f"Metrics/{k}", v, global_step=state["cur_nimg"])


# ---------------------------------------------------------------------------------------------
# Resume state


def _save_resume(path: Path, state, G, D, G_ema, opt_G, opt_D, aug, loss, rng) -> None:
    """Write the resume file: counters, networks, optimizers, ADA p, the path-length mean and
    the step-input generator (plus the torch RNG states, by :func:`save_resume_state`)."""
    save_resume_state(
        path,
        state,
        {"G": G, "D": D, "G_ema": G_ema, "opt_G": opt_G, "opt_D": opt_D},
        extra={
            "augment_p": aug.p.detach().cpu().clone() if aug is not None else torch.zeros([]),
            "pl_mean": loss.pl_mean.detach().cpu().clone(),
            "rng": rng.get_state(),
        },
    )


def _load_resume(path: Path, G, D, G_ema, opt_G, opt_D, aug, loss, rng) -> dict:
    """Restore what :func:`_save_resume` wrote; returns the counters."""
    blob = load_resume_state(path, {"G": G, "D": D, "G_ema": G_ema, "opt_G": opt_G, "opt_D": opt_D})
    if aug is not None:
        aug.p.copy_(blob["augment_p"])
    loss.pl_mean = blob["pl_mean"].to(loss.pl_mean.device)
    rng.set_state(blob["rng"])
    return dict(blob["counters"])
