"""How many images one forward/backward pass of fine-tuning takes (gradient accumulation).

A step's global batch (``--batch``, 64 in ``paper256``) is split into passes of ``batch_gpu``
images whose gradients add up; results do not depend on the split (the loss is a mean over
the global batch), only memory and speed do. ``--batch-gpu`` sets the split; without it the
loop picks the largest pass that fits the memory of the device it runs on:

- **CUDA**: probe and halve. One pass of every phase (G main, path length, D main with R1) is
  run on random inputs at each candidate size, largest first; an out-of-memory error is caught
  and the next size tried. The probe's gradients are thrown away and the RNG states restored,
  so the run computes what it would have computed with that ``--batch-gpu`` given.
- **CPU**: an out-of-memory kill cannot be caught, so the size comes from an estimate
  ``fixed + per_image * b`` against the memory available (``/proc/meminfo`` MemAvailable,
  or the cgroup limit; ``TOON_MEMORY_GB`` overrides it), keeping 20% headroom. ``fixed`` is
  the process's resident set now plus gradients and Adam moments (3 floats per trainable
  parameter) plus :data:`CPU_FIXED_SLACK`; ``per_image`` is :data:`CPU_BYTES_PER_ACTIVATION`
  times :func:`activation_bytes`, one float32 activation map per block of G and D.

The CPU constants are measured, not derived. Peak RSS of one ``paper256`` step with per-pass
batch B (``/usr/bin/time -f %M toon-teacher finetune --preset paper256 --batch B --batch-gpu B
--kimg 0.00B --aug none ...``, from scratch, fp32, 2 cores): 4.6 GiB at B=2, 4.8 GiB at B=4
(both bounded by the tick's writes), 6.8 GiB at B=8; the recipe's batch 64 in passes of 8
peaked at 8.3 GiB (issue 19: passes add fragmentation). Hence about 0.6 GiB per image (10x
:func:`activation_bytes`, 64 MB at paper256) over a fixed 3.5 GiB (weights, gradients, Adam
and 2.2 GiB of slack). They carry over to other architectures through
:func:`activation_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.runs import (
    available_memory,
    choose_pass_batch,
    format_bytes,
    pass_batches,
    probe_pass_batch,
    resident_memory,
)
from teacher.networks import Discriminator, Generator, channels_for

# Measured on paper256 (see the module docstring): bytes per image of a training pass over the
# bytes of one activation map per block of G and D (about 32 MiB at paper256), and bytes beyond
# the weights, gradients and Adam moments that the first step adds (allocator, workspaces).
CPU_BYTES_PER_ACTIVATION = 10.0
CPU_FIXED_SLACK = 2.2 * 2**30


def activation_bytes(G: Generator) -> int:
    """float32 bytes of one activation map per synthesis block, for one image (the
    discriminator mirrors the same resolutions and channels)."""
    a = G.arch
    total = 0
    res = 4
    while res <= a["img_resolution"]:
        total += channels_for(res, a["channel_base"], a["channel_max"]) * res * res
        res *= 2
    return 2 * 4 * total  # G and D


def cpu_estimate(G: Generator, D: Discriminator) -> tuple[float, float]:
    """(fixed bytes, bytes per image of a pass) of fine-tuning on the CPU."""
    params = sum(p.numel() for net in (G, D) for p in net.parameters() if p.requires_grad)
    fixed = resident_memory() + 3 * 4 * params + CPU_FIXED_SLACK
    return fixed, CPU_BYTES_PER_ACTIVATION * activation_bytes(G)


def choose_batch_gpu(
    local_batch: int,
    group: int,
    G: Generator,
    D: Discriminator,
    device: torch.device,
    try_pass: Callable[[int], None],
    processes_here: int = 1,
) -> tuple[int, str]:
    """The per-pass batch for this device and why (a short phrase for the start line).

    ``group``: the minibatch-std group size (passes are multiples of it where possible);
    ``try_pass(b)``: one probe pass of every phase at ``b`` images (CUDA only);
    ``processes_here``: training processes sharing this machine's memory (CPU).
    """
    options = pass_batches(local_batch, group)
    if device.type == "cuda":
        b = probe_pass_batch(options, try_pass)
        return b, f"the largest that ran on {torch.cuda.get_device_name(device)}"
    fixed, per_image = cpu_estimate(G, D)
    avail = available_memory(device) / max(processes_here, 1)
    b = choose_pass_batch(local_batch, per_image, fixed, avail, group)
    est = fixed + per_image * b
    why = (
        f"estimated {format_bytes(est)} of {format_bytes(avail)} available "
        f"({format_bytes(per_image)} per image)"
    )
    if est > 0.8 * avail:
        why += "; may not fit: close other programs or lower --batch"
    return b, why
