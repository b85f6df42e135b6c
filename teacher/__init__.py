"""The teacher: a StyleGAN2-ADA generator/discriminator, checkpoint import and our model format."""

from teacher.io import (
    convert_checkpoint,
    load_discriminator,
    load_generator,
    read_model_info,
    save_network,
)
from teacher.networks import Discriminator, Generator
from teacher.spec import CheckpointError

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
