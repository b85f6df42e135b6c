"""A teacher network as data, the kinds of teacher model files and the checkpoint error.

Both checkpoint reading (:mod:`teacher.io`) and the translation of foreign formats
(:mod:`teacher.convert`) produce :class:`NetworkSpec` objects; this module sits below both, so
the import arrows run one way: ``spec`` <- ``convert`` <- ``io``.

It also holds the one check of network arguments read from a file, whatever the source
(NVIDIA constructor kwargs, TF ``static_kwargs`` and shapes, rosinality shapes, our ``toon``
metadata): :func:`check_arch` holds each argument to its type and a sane range, and
:func:`check_size` refuses an arch that needs more weights than the file stores, before
anything of that size is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.cli import ToonError
from common.weights import state_mismatch
from teacher import ops
from teacher.networks import Discriminator, Generator, channels_for

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

    def check(self) -> None:
        """:func:`check_arch` and :func:`check_size` against this spec's state; a
        :class:`CheckpointError` naming the argument when they fail."""
        self.arch = check_arch(self.kind, self.arch)
        check_size(self.kind, self.arch, self.state.values())

    def build(self) -> torch.nn.Module:
        """Construct the network (after :meth:`check`) and load the state strictly."""
        self.check()
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


# ---------------------------------------------------------------------------------------------
# Arguments read from files: one schema for every source

MAX_DIM = 8192  # z_dim, w_dim, channel_max, feature sizes
MAX_LABELS = 100_000  # c_dim
MAX_RESOLUTION = 4096
MAX_LAYERS = 64  # mapping layers
_ARCHITECTURES = ("orig", "skip", "resnet")


def show_value(value: Any) -> str:
    """A value for a one-line message: short scalars as they are, containers by type only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


def _integer(lo: int, hi: int, optional: bool = False) -> Any:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"an integer in [{lo}, {hi}]" + (" or null" if optional else "")
        return None

    return check


def _number(lo: float, hi: float, optional: bool = False, lo_open: bool = False) -> Any:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not (lo < v if lo_open else lo <= v) or v > hi:
            return f"a number in {'(' if lo_open else '['}{lo}, {hi}]" + (
                " or null" if optional else ""
            )
        return None

    return check


def _choice(options: Iterable[str]) -> Any:
    options = tuple(options)

    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in options else f"one of {', '.join(options)}"

    return check


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _resolution(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and 4 <= v <= MAX_RESOLUTION
    return None if ok and v & (v - 1) == 0 else f"a power of two in [4, {MAX_RESOLUTION}]"


def _filter(v: Any) -> str | None:
    taps = v if isinstance(v, (list, tuple)) else None
    ok = (
        taps is not None
        and 1 <= len(taps) <= 16
        and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and abs(t) <= 1e6 for t in taps
        )
        and all(math.isfinite(t) for t in taps)
        and abs(sum(taps)) > 1e-6
    )
    return None if ok else "a list of 1 to 16 filter taps with a non-zero sum"


_ACTIVATION = _choice(ops.ACTIVATION_GAIN)
_SHARED = {
    "c_dim": _integer(0, MAX_LABELS),
    "img_resolution": _resolution,
    "img_channels": _integer(1, 16),
    "channel_base": _integer(1, 1 << 26),
    "channel_max": _integer(1, MAX_DIM),
    "num_fp16_res": _integer(0, 16),
    "conv_clamp": _number(0, 1e6, optional=True, lo_open=True),
    "resample_filter": _filter,
    "activation": _ACTIVATION,
    "architecture": _choice(_ARCHITECTURES),
    "mapping_embed_features": _integer(1, MAX_DIM, optional=True),
    "mapping_layer_features": _integer(1, MAX_DIM, optional=True),
    "mapping_lr_multiplier": _number(0, 1000, lo_open=True),
    "fp16_channels_last": _flag,
}
GENERATOR_SCHEMA: dict[str, Any] = {
    **_SHARED,
    "z_dim": _integer(1, MAX_DIM),
    "w_dim": _integer(1, MAX_DIM),
    "mapping_layers": _integer(1, MAX_LAYERS),
    "mapping_activation": _ACTIVATION,
    "w_avg_beta": _number(0, 1, optional=True),
    "use_noise": _flag,
}
DISCRIMINATOR_SCHEMA: dict[str, Any] = {
    **_SHARED,
    "cmap_dim": _integer(1, MAX_DIM, optional=True),
    "mbstd_group_size": _integer(1, 4096, optional=True),
    "mbstd_num_channels": _integer(0, 64),
    "mapping_layers": _integer(0, MAX_LAYERS),
    "freeze_layers": _integer(0, 1000),
}
_REQUIRED = {
    KIND_GENERATOR: ("z_dim", "c_dim", "w_dim", "img_resolution"),
    KIND_DISCRIMINATOR: ("c_dim", "img_resolution"),
}


def check_arch(kind: str, arch: Any) -> dict[str, Any]:
    """Hold the constructor arguments of a ``kind`` network read from a file to the schema
    (:data:`GENERATOR_SCHEMA` / :data:`DISCRIMINATOR_SCHEMA`: types, ranges, powers of two,
    at least one channel at the top resolution); return them with the filter taps as floats.

    Raises :class:`CheckpointError` naming the first argument that does not fit.
    """
    if kind not in _REQUIRED:
        raise CheckpointError(f"unknown network kind {show_value(kind)}")
    name = "generator" if kind == KIND_GENERATOR else "discriminator"
    if not isinstance(arch, Mapping):
        raise CheckpointError(f"{name} arch is {show_value(arch)}, expected a mapping of arguments")
    schema = GENERATOR_SCHEMA if kind == KIND_GENERATOR else DISCRIMINATOR_SCHEMA
    for key in arch:
        if key not in schema:
            raise CheckpointError(f"unsupported {name} argument {show_value(key)}")
    missing = [key for key in _REQUIRED[kind] if key not in arch]
    if missing:
        raise CheckpointError(f"{name} arguments lack {missing}")
    for key, value in arch.items():
        expected = schema[key](value)
        if expected:
            raise CheckpointError(
                f"{name} argument {key} is {show_value(value)}, expected {expected}"
            )
    arch = dict(arch)
    base, top = arch.get("channel_base", 32768), arch["img_resolution"]
    if base < top:
        raise CheckpointError(
            f"{name} argument channel_base {base} gives no channels at {top} px "
            f"(it must be at least img_resolution)"
        )
    if "resample_filter" in arch:
        arch["resample_filter"] = [float(t) for t in arch["resample_filter"]]
    return arch


def _mapping_weights(z_dim: int, c_dim: int, w_dim: int, arch: Mapping[str, Any]) -> int:
    """Weights of ``MappingNetwork`` (embedding and fully connected layers, no biases)."""
    embed = (arch.get("mapping_embed_features") or w_dim) if c_dim else 0
    layer = arch.get("mapping_layer_features") or w_dim
    num = arch.get("mapping_layers", 8)
    features = [z_dim + embed] + [layer] * (num - 1) + [w_dim]
    return c_dim * embed + sum(a * b for a, b in zip(features[:num], features[1:], strict=False))


def min_weights(kind: str, arch: Mapping[str, Any]) -> int:
    """A lower bound on the number of values a network of ``arch`` (already
    :func:`check_arch`-ed) stores: its convolution and mapping weights, without biases,
    affines, noise or filters. Cheap; builds nothing."""
    top = arch["img_resolution"]
    base, cmax = arch.get("channel_base", 32768), arch.get("channel_max", 512)
    res = [2**k for k in range(2, int(math.log2(top)) + 1)]
    ch = {r: channels_for(r, base, cmax) for r in res}
    if kind == KIND_GENERATOR:
        convs = sum(9 * ch[r] * ch[r] + (9 * ch[r // 2] * ch[r] if r > 4 else 0) for r in res)
        mapping = _mapping_weights(arch["z_dim"], arch["c_dim"], arch["w_dim"], arch)
        return convs + mapping
    convs = sum(9 * ch[r] * ch[r] + 9 * ch[r] * ch[r // 2] for r in res[1:])
    mbstd = arch.get("mbstd_num_channels", 1)
    epilogue = 9 * (ch[4] + mbstd) * ch[4] + 16 * ch[4] * ch[4]
    c_dim = arch["c_dim"]
    cmap = (arch.get("cmap_dim") or ch[4]) if c_dim else 0
    mapping = _mapping_weights(0, c_dim, cmap, arch) if c_dim else 0
    return convs + epilogue + mapping


def stored_values(tensors: Iterable[Any]) -> int:
    """Values a file really stores behind ``tensors`` (torch tensors or numpy arrays): each
    underlying buffer counted once, however many tensors view it."""
    buffers: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            key, n = st.data_ptr(), st.nbytes() // max(t.element_size(), 1)
        elif isinstance(t, np.ndarray):
            key, n = t.__array_interface__["data"][0], t.size
        else:
            continue
        buffers[key] = max(buffers.get(key, 0), n)
    return sum(buffers.values())


def check_size(kind: str, arch: Mapping[str, Any], tensors: Iterable[Any]) -> None:
    """Refuse an ``arch`` that needs more weights than ``tensors`` store: a forged size must
    not make the reader allocate what the file cannot back."""
    need, have = min_weights(kind, arch), stored_values(tensors)
    if need > have:
        name = "generator" if kind == KIND_GENERATOR else "discriminator"
        raise CheckpointError(
            f"{name} arch needs at least {need} weights but the file stores {have} values; "
            "its arguments do not describe the stored tensors"
        )
