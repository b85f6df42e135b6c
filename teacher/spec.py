"""A teacher network as data, the kinds of teacher model files and the checkpoint error.

Both checkpoint reading (:mod:`teacher.io`) and the translation of foreign formats
(:mod:`teacher.convert`) produce :class:`NetworkSpec` objects; this module sits below both, so
the import arrows run one way: ``spec`` <- ``convert`` <- ``io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from common.cli import ToonError
from common.weights import state_mismatch
from teacher.networks import Discriminator, Generator

KIND_GENERATOR = "teacher.generator"
KIND_DISCRIMINATOR = "teacher.discriminator"
KIND_SNAPSHOT = "teacher.snapshot"  # G, D and G_ema in one file, tensors prefixed "G." etc.


class CheckpointError(ToonError):
    """A checkpoint could not be read or is not what was asked for (one-line message)."""


@dataclass
class NetworkSpec:
    """A network as data: its kind, flat constructor arguments and state dict."""

    kind: str
    arch: dict[str, Any]
    state: dict[str, torch.Tensor]
    source: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        """Construct the network and load the state strictly."""
        cls = Generator if self.kind == KIND_GENERATOR else Discriminator
        try:
            net = cls(**self.arch)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot build {self.kind} from arch {self.arch}: {e}") from None
        problem = state_mismatch(net.state_dict(), self.state)
        if problem:
            raise CheckpointError(f"{self.kind} {problem}")
        net.load_state_dict({k: v.to(torch.float32) for k, v in self.state.items()}, strict=True)
        return net.eval()
