"""Fine-tuning configuration: a frozen dataclass and named presets.

The presets hold the values of NVIDIA's stylegan2-ada-pytorch configurations (``train.py``
``--cfg``): ``paper256`` (the CelebA-HQ 256 transfer-learning base), ``stylegan2``, ``auto``
(derived from resolution and GPU count), plus ``tiny`` for tests and CPU runs.

Architecture fields (channel_base, mapping depth, mbstd group) only matter when training from
scratch; when fine-tuning, the networks keep the architecture of ``--base`` and only
``mbstd_group_size`` (which changes no weights) follows the preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from common.config import RunConfig
from common.runs import default_workers


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Everything that determines a fine-tuning run (stored as ``config.json`` in the run dir).

    Batch sizes count images. ``batch`` is the global batch; ``batch_gpu`` the per-process
    chunk (gradient accumulation when ``batch_gpu * processes < batch``); results do not depend
    on ``batch_gpu`` or the process count (the loss is a mean over the global batch).
    """

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("betas", "metrics")

    # Data and networks
    data: str = ""
    base: str = ""  # checkpoint with G (and D, G_ema) to start from; "" = random init
    outdir: str = ""
    resolution: int = 0  # 0: from the data
    mirror: bool = False
    cond: bool = False  # use labels from dataset.json
    preset: str = "paper256"

    # Preset values (NVIDIA train.py cfg_specs)
    batch: int = 64
    batch_gpu: int = 0  # 0: batch // processes
    mbstd_group_size: int = 8
    channel_base: int = 16384  # fmaps * 32768
    channel_max: int = 512
    mapping_layers: int = 8
    z_dim: int = 512
    w_dim: int = 512
    num_fp16_res: int = 4
    conv_clamp: int | None = 256
    glr: float = 0.0025
    dlr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    r1_gamma: float = 1.0
    ema_kimg: float = 20.0
    ema_rampup: float | None = None
    g_reg_interval: int = 4
    d_reg_interval: int = 16
    style_mixing_prob: float = 0.9
    pl_weight: float = 2.0
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    noise_mode: str = "random"  # synthesis noise while training

    # Augmentation
    augpipe: str = "bgc"  # preset name or comma list of ops; "" or "none": no augmentation
    target: float | None = 0.6  # ADA target r_t; None: fixed p
    p: float = 0.0  # initial (or fixed, when target is None) augmentation probability
    ada_interval: int = 4
    ada_kimg: float | None = None  # None: 100 when starting from a base, else 500 (NVIDIA)

    # Transfer
    freezed: int = 0  # freeze the first N discriminator layers (needs a trained D from --base)
    fresh_d: bool = False  # start D from random weights (required when --base holds no D)
    freezeg: int = 0  # keep the generator's blocks up to this resolution at the base's weights
    freeze_mapping: bool = False  # keep the mapping network at the base's weights
    structure_weight: float = 0.0  # weight of the structure loss against the base (0: off)
    structure_res: int = 16  # the structure loss compares renders downsampled to 4 .. this

    # Schedule
    kimg: float = 40.0
    tick_kimg: float = 4.0
    snap: int = 8  # ticks between snapshots
    seed: int = 0
    workers: int = 2  # image-reading threads; make_config's default: one per spare core, <= 2
    metrics: tuple[str, ...] = ()
    inception: str = ""
    vgg16: str = ""
    grid_seeds: int = 16


# Fields added since older run directories were written, with the behaviour those runs had.
ADDED_FIELDS: dict[str, Any] = {
    "fresh_d": False,
    "freezeg": 0,
    "freeze_mapping": False,
    "structure_weight": 0.0,
    "structure_res": 16,
}

# Values from NVIDIA's stylegan2-ada-pytorch train.py (cfg_specs); fmaps -> channel_base.
PRESETS: dict[str, dict[str, Any]] = {
    "paper256": dict(
        batch=64,
        mbstd_group_size=8,
        channel_base=16384,
        mapping_layers=8,
        glr=0.0025,
        dlr=0.0025,
        r1_gamma=1.0,
        ema_kimg=20.0,
        ema_rampup=None,
    ),
    "stylegan2": dict(
        batch=32,
        mbstd_group_size=4,
        channel_base=32768,
        mapping_layers=8,
        glr=0.002,
        dlr=0.002,
        r1_gamma=10.0,
        ema_kimg=10.0,
        ema_rampup=None,
    ),
    "paper512": dict(
        batch=64,
        mbstd_group_size=8,
        channel_base=32768,
        mapping_layers=8,
        glr=0.0025,
        dlr=0.0025,
        r1_gamma=0.5,
        ema_kimg=20.0,
        ema_rampup=None,
    ),
    "tiny": dict(
        batch=8,
        mbstd_group_size=2,
        channel_base=1024,
        channel_max=64,
        mapping_layers=2,
        z_dim=64,
        w_dim=64,
        glr=0.0025,
        dlr=0.0025,
        r1_gamma=0.1,
        ema_kimg=0.5,
        ema_rampup=0.05,
        tick_kimg=0.032,
        snap=1,
        kimg=0.064,
        num_fp16_res=0,
        workers=0,
        grid_seeds=4,
    ),
}


def auto_preset(resolution: int, gpus: int = 1) -> dict[str, Any]:
    """NVIDIA's ``auto`` configuration for a resolution and GPU count."""
    mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    fmaps = 1 if resolution >= 512 else 0.5
    return dict(
        batch=mb,
        mbstd_group_size=min(mb // gpus, 4),
        channel_base=int(fmaps * 32768),
        mapping_layers=2,
        glr=0.002 if resolution >= 1024 else 0.0025,
        dlr=0.002 if resolution >= 1024 else 0.0025,
        r1_gamma=0.0002 * resolution**2 / mb,
        ema_kimg=mb * 10 / 32,
        ema_rampup=0.05,
    )


def resolve_preset(name: str, resolution: int, gpus: int = 1) -> dict[str, Any]:
    """The field values of a named preset (``auto`` needs the resolution and GPU count)."""
    if name == "auto":
        return auto_preset(resolution, gpus)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from auto, {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def make_config(
    preset: str, overrides: dict[str, Any], resolution: int, gpus: int = 1
) -> TrainConfig:
    """Preset values, then explicit overrides (fields the user set), as one frozen config."""
    values = resolve_preset(preset, resolution, gpus)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["preset"] = preset
    if "workers" not in values:
        values["workers"] = default_workers(2)
    return TrainConfig.from_dict(values)


__all__ = ["ADDED_FIELDS", "PRESETS", "TrainConfig", "auto_preset", "make_config", "resolve_preset"]
