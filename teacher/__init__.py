"""The teacher: a StyleGAN2-ADA generator/discriminator, checkpoint import and our model format."""

from teacher.io import (
    CheckpointError,
    convert_checkpoint,
    load_discriminator,
    load_generator,
    read_model_info,
    save_network,
)
from teacher.networks import Discriminator, Generator

__all__ = [
    "CheckpointError",
    "Discriminator",
    "Generator",
    "convert_checkpoint",
    "load_discriminator",
    "load_generator",
    "read_model_info",
    "save_network",
]
