"""Student training configuration: one frozen dataclass and named presets.

Presets are whole configurations: ``paper256`` for real runs on 256x256 pairs (pix2pixHD's loss
weights plus L1, Adam 2e-4 with betas (0.5, 0.999) as pix2pix, linear decay over the second
half) and ``tiny`` for tests and CPU smoke runs (a tiny generator and discriminator, a few
hundred steps). The generator architecture is chosen separately with ``arch`` (``mobile``,
``small``, ``unet256``, ``tiny``; see :mod:`student.networks`). Every field has a help text in
its metadata; ``toon-student train`` has one flag per field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import RunConfig

GAN_LOSSES = ("hinge", "lsgan")
AMP_MODES = ("bf16", "fp16", "none")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class StudentConfig(RunConfig):
    """Everything that determines a student training run (``config.json`` in the run dir).

    Batch sizes count pairs; ``batch`` is the global batch, split evenly over processes.
    """

    # Data and run
    pairs: str = _f("", "pairs dataset folder (manifest.json + shard-*.tar)")
    outdir: str = _f("", "run directory; the same command in the same directory resumes")
    preset: str = _f("paper256", "named configuration the other values came from")
    holdout_percent: float = _f(
        5.0, "percent of pairs held out by key (sha256 bucket) for evaluation; never trained on"
    )
    shuffle_buffer: int = _f(500, "samples in each reader's shuffle buffer (held as PNG bytes)")
    workers: int = _f(
        4,
        "data loader worker processes per training process (default: one per core less one, "
        "at most 4; 0: in-process)",
    )
    seed: int = _f(0, "seed of the initial weights, the shard order and the augmentations")

    # Networks
    arch: str = _f("mobile", "generator preset: mobile, small, unet256 or tiny")
    output: str = _f(
        "tanh",
        "generator output (mobile, small, tiny): tanh (the image) or residual (the input plus "
        "the drawn change, clipped; starts as the identity)",
    )
    d_channels: int = _f(64, "discriminator first-layer channels (ndf)")
    d_layers: int = _f(3, "stride-2 layers per PatchGAN (3: 70x70 patches)")
    d_scales: int = _f(3, "PatchGANs at image scales 1, 1/2, 1/4, ... (pix2pixHD num_D)")
    d_norm: str = _f("instance", "discriminator normalisation: instance, batch or none")

    # Losses
    gan_loss: str = _f("hinge", "adversarial loss: hinge or lsgan")
    gan_weight: float = _f(1.0, "weight of the adversarial loss")
    l1_weight: float = _f(10.0, "weight of the L1 distance to the teacher's target")
    fm_weight: float = _f(10.0, "weight of discriminator feature matching (pix2pixHD)")
    vgg_weight: float = _f(10.0, "weight of the perceptual loss (only with --vgg16)")
    vgg16: str = _f(
        "", "NVIDIA vgg16.pt TorchScript for the perceptual (LPIPS) loss; never fetched"
    )

    # Optimisation
    batch: int = _f(16, "global batch size (pairs per step)")
    glr: float = _f(2e-4, "generator learning rate (Adam)")
    dlr: float = _f(2e-4, "discriminator learning rate (Adam)")
    betas: tuple[float, float] = _f((0.5, 0.999), "Adam betas")
    lr_decay: float = _f(0.5, "fraction of the run at the end over which the rates fall to 0")
    ema_kimg: float = _f(10.0, "half-life of the generator EMA in thousands of pairs")
    ema_rampup: float | None = _f(
        0.05, "EMA half-life at most this fraction of the pairs seen so far (none: off)"
    )
    amp: str = _f("bf16", "mixed precision on CUDA: bf16, fp16 or none (CPU is always fp32)")

    # Augmentation: geometric ones move source and target together, photometric ones only the
    # source (so photos under other light still map to the teacher's look).
    xflip: bool = _f(True, "mirror half of the pairs (source and target together)")
    affine_prob: float = _f(0.5, "probability of a small random affine on a pair")
    rotate: float = _f(5.0, "max rotation of the affine in degrees")
    zoom: float = _f(0.08, "max relative zoom of the affine (in or out)")
    translate: float = _f(0.04, "max shift of the affine as a fraction of the size")
    jitter_prob: float = _f(0.8, "probability of photometric jitter on the source")
    brightness: float = _f(0.25, "max relative exposure change of the source")
    contrast: float = _f(0.25, "max relative contrast change of the source")
    saturation: float = _f(0.3, "max relative saturation change of the source")
    white_balance: float = _f(0.08, "max relative per-channel gain (colour cast) of the source")
    gamma: float = _f(0.2, "max relative gamma change of the source")

    # Schedule
    kimg: float = _f(1000.0, "length of the run in thousands of pairs")
    tick_kimg: float = _f(4.0, "kimg per tick (stats and resume state every tick)")
    snap: int = _f(10, "ticks between snapshots (student file, held-out metrics, grid)")
    eval_pairs: int = _f(64, "held-out pairs scored at every snapshot (0: none)")
    grid_pairs: int = _f(8, "rows of the src | student | teacher grid at every snapshot")

    def check(self) -> None:
        """Raise ValueError on values that cannot work."""
        from student.networks import GENERATOR_PRESETS, NORMS, OUTPUTS

        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        family = GENERATOR_PRESETS.get(self.arch, {}).get("family")
        if self.output != "tanh" and family != "mobile_unet":
            raise ValueError(f"--output {self.output} needs a mobile, small or tiny generator")
        if self.arch not in GENERATOR_PRESETS:
            raise ValueError(
                f"unknown generator arch {self.arch!r}; choose from {', '.join(GENERATOR_PRESETS)}"
            )
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {', '.join(GAN_LOSSES)}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}")
        if self.d_norm not in NORMS:
            raise ValueError(f"d_norm must be one of {', '.join(NORMS)}")
        if not 0 <= self.holdout_percent < 100:
            raise ValueError(f"holdout_percent must be in [0, 100), got {self.holdout_percent}")
        if self.batch < 1 or self.kimg <= 0 or self.tick_kimg <= 0:
            raise ValueError("batch, kimg and tick_kimg must be positive")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in [0, 1], got {self.lr_decay}")


PRESETS: dict[str, dict[str, Any]] = {
    "paper256": dict(),
    "tiny": dict(
        arch="tiny",
        d_channels=16,
        d_layers=2,
        d_scales=2,
        batch=8,
        glr=2e-3,
        dlr=2e-3,
        l1_weight=100.0,
        fm_weight=1.0,
        ema_kimg=0.2,
        ema_rampup=0.5,
        lr_decay=0.25,
        kimg=2.4,
        tick_kimg=0.4,
        snap=3,
        workers=0,
        shuffle_buffer=64,
        eval_pairs=32,
        grid_pairs=4,
        affine_prob=0.0,
        jitter_prob=0.0,
        xflip=False,
    ),
}


def make_config(preset: str, overrides: dict[str, Any]) -> StudentConfig:
    """Preset values, then explicit overrides (``None`` means not given), as one config."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["preset"] = preset
    if "workers" not in values:  # what this machine has, not a fixed 4
        from common.runs import default_workers

        values["workers"] = default_workers(4)
    return StudentConfig.from_dict(values)


__all__ = ["AMP_MODES", "GAN_LOSSES", "PRESETS", "StudentConfig", "make_config"]
