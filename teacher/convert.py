"""Translation of foreign StyleGAN2 checkpoints into :class:`~teacher.spec.NetworkSpec` objects.

:mod:`teacher.io` reads the files (sniffing, restricted unpickling, ``torch.load``) and hands
the decoded objects here; this module is the one home of every foreign-format translation:

- NVIDIA stylegan2-ada-pytorch snapshots hold our parameter names already; only the pickled
  constructor arguments are translated into our flat ``arch`` (:func:`networks_from_nvidia`).
- rosinality ``.pt`` files and NVIDIA TensorFlow pickles hold the network we implement under
  other names and layouts. Each of those importers

  1. infers our flat ``arch`` from tensor shapes (plus, for TF, the pickled ``static_kwargs`` for
     what shapes cannot tell: architecture, activation, FIR filter, conv clamp, mbstd group
     size),
  2. builds a fresh network of that arch as the template of names and shapes,
  3. fills every template tensor from exactly one foreign tensor, the layout change written
     next to the name, and
  4. does not guess: a foreign tensor without a place, or a place without a tensor, is a
     :class:`~teacher.spec.CheckpointError` naming the first few.

FIR filter buffers (``resample_filter``) are constants; they come from the fresh network.

Layouts (each checked numerically in ``tests/teacher/test_convert.py``):

- TF conv weights are ``[kh, kw, in, out]``, dense weights ``[in, out]``; ours are
  ``[out, in, kh, kw]`` and ``[out, in]``.
- TF's upsampling conv (``upsample_conv_2d``) flips the kernel before its transposed conv; ours
  does not, so ``Conv0_up`` (and the 1x1 ``Skip``) weights are flipped spatially. Downsampling
  convs filter, then correlate, on both sides: no flip.
- TF adds the style bias' constant 1 in the graph (``mod_bias + 1``); we and rosinality store it.
- rosinality's up conv is ``conv_transpose2d`` with the unflipped weight and the same
  ``[1, 3, 3, 1]`` blur, like ours: its weights copy as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from teacher import ops
from teacher.networks import DEFAULT_FILTER, Discriminator, Generator, channels_for
from teacher.pickle_reader import CorruptPickleError, PersistentRecord, TFNetworkRecord
from teacher.spec import (
    KIND_DISCRIMINATOR,
    KIND_GENERATOR,
    CheckpointError,
    NetworkSpec,
    check_arch,
    check_size,
)

W_AVG_SAMPLES = 10000  # z samples behind an estimated w_avg
W_AVG_SEED = 0  # seed of torch.Generator for those samples

_Rule = tuple[str, Callable[[Any], torch.Tensor]]  # (foreign name, foreign tensor -> ours)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def infer_channel_base_max(channels: Mapping[int, int]) -> tuple[int, int]:
    """Find ``(channel_base, channel_max)`` with ``min(channel_base // res, channel_max)`` equal
    to ``channels[res]`` for every resolution.

    ``channel_max`` is the largest channel count (the most permissive choice). The bases that
    fit form an interval; the smallest power of two in it is returned (NVIDIA's 32768 / 16384,
    rosinality's multipliers 2 / 1), else its lower end. Raises :class:`CheckpointError` when no
    base fits (e.g. channels that grow with resolution).
    """
    if not channels or any(int(r) <= 0 or int(c) <= 0 for r, c in channels.items()):
        raise CheckpointError(f"cannot infer channel_base/channel_max from {dict(channels)}")
    cmax = max(int(c) for c in channels.values())
    lo, hi = 1, None
    for res, ch in channels.items():
        res, ch = int(res), int(ch)
        lo = max(lo, ch * res)
        if ch < cmax:  # base // res == ch exactly
            hi = ch * res + res - 1 if hi is None else min(hi, ch * res + res - 1)
    pow2 = 1 << (lo - 1).bit_length()
    base = pow2 if hi is None or pow2 <= hi else lo
    if (hi is not None and lo > hi) or any(
        channels_for(int(r), base, cmax) != int(c) for r, c in channels.items()
    ):
        shown = ", ".join(f"{r}: {c}" for r, c in sorted(channels.items()))
        raise CheckpointError(
            f"channel counts {{{shown}}} do not follow min(channel_base // res, channel_max) "
            "for any channel_base; this network layout is not supported"
        )
    return base, cmax


def _names(names: Iterable[str], n: int = 3) -> str:
    names = list(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _indices(names: Iterable[str], pattern: str) -> list[int]:
    return sorted(int(m.group(1)) for k in names if (m := re.fullmatch(pattern, k)))


def _shape(tensors: Mapping[str, Any], name: str, what: str, ndim: int) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(f"{what}: missing {name}")
    shape = tuple(int(s) for s in tensors[name].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{what}: {name} has shape {list(shape)}, expected {ndim} dimensions")
    return shape


def _build(
    cls: type, arch: dict[str, Any], what: str, tensors: Mapping[str, Any]
) -> torch.nn.Module:
    """A fresh network of an inferred ``arch``, after :func:`~teacher.spec.check_arch` and a
    check that the foreign ``tensors`` store at least the weights it needs."""
    kind = KIND_GENERATOR if cls is Generator else KIND_DISCRIMINATOR
    try:
        arch = check_arch(kind, arch)
        check_size(kind, arch, tensors.values())
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None
    try:
        return cls(**arch)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{what}: cannot build a network of the inferred arch {arch}: {e}"
        ) from None


def _fill(
    ref_state: Mapping[str, torch.Tensor],
    rules: Mapping[str, _Rule],
    tensors: Mapping[str, Any],
    what: str,
    ignore: Iterable[str] = (),
    keep: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Our state dict from foreign ``tensors``: one rule per template name, nothing left over.

    Names in ``keep`` and FIR filters take the template's value; foreign names in ``ignore``
    may stay unused.
    """
    keep = set(keep)
    state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for name, ref in ref_state.items():
        if name.endswith("resample_filter") or name in keep:
            state[name] = ref.detach().clone()
            continue
        if name not in rules:
            raise CheckpointError(f"{what}: no source known for {name}")
        src, fn = rules[name]
        if src not in tensors:
            missing.append(src)
            continue
        used.add(src)
        src_shape = list(tensors[src].shape)
        try:
            t = fn(tensors[src])
        except (IndexError, ValueError, RuntimeError):
            t = None
        if t is None or tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{what}: {src} has shape {src_shape}, which does not fit {name} "
                f"{list(ref.shape)} of the inferred arch"
            )
        state[name] = t
    if missing:
        raise CheckpointError(f"{what}: missing {_names(missing)}")
    extra = sorted(set(tensors) - used - set(ignore))
    if extra:
        raise CheckpointError(f"{what}: unexpected {_names(extra)}; not a StyleGAN2 layout we know")
    return state


def _check_activation(name: Any, what: str) -> str:
    if not isinstance(name, str) or name not in ops.ACTIVATION_GAIN:
        raise CheckpointError(f"{what}: unsupported activation {name!r:.40}")
    return str(name)


# ---------------------------------------------------------------------------------------------
# NVIDIA stylegan2-ada-pytorch snapshots: constructor kwargs -> our flat arch

_G_TOP = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"}
_G_MAPPING = {
    "num_layers": "mapping_layers",
    "embed_features": "mapping_embed_features",
    "layer_features": "mapping_layer_features",
    "activation": "mapping_activation",
    "lr_multiplier": "mapping_lr_multiplier",
    "w_avg_beta": "w_avg_beta",
}
_G_SYNTHESIS = {
    "channel_base",
    "channel_max",
    "num_fp16_res",
    "architecture",
    "resample_filter",
    "conv_clamp",
    "fp16_channels_last",
    "use_noise",
    "activation",
}
_D_TOP = {
    "c_dim",
    "img_resolution",
    "img_channels",
    "architecture",
    "channel_base",
    "channel_max",
    "num_fp16_res",
    "conv_clamp",
    "cmap_dim",
}
_D_BLOCK = {"activation", "resample_filter", "fp16_channels_last", "freeze_layers"}
_D_MAPPING = {
    "num_layers": "mapping_layers",
    "embed_features": "mapping_embed_features",
    "layer_features": "mapping_layer_features",
    "lr_multiplier": "mapping_lr_multiplier",
}
_D_EPILOGUE = {"mbstd_group_size", "mbstd_num_channels", "activation"}
_G_POSITIONAL = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"]
_D_POSITIONAL = ["c_dim", "img_resolution", "img_channels"]


def _merge_positional(args: tuple, kwargs: Any, names: list[str], what: str) -> dict:
    if not isinstance(kwargs, Mapping) or not isinstance(args, (tuple, list)):
        raise CheckpointError(f"{what} constructor arguments are not a tuple and a dict")
    if len(args) > len(names):
        raise CheckpointError(f"{what} has {len(args)} positional arguments, at most {len(names)}")
    kwargs = dict(kwargs)
    for name, value in zip(names, args, strict=False):
        kwargs[name] = value
    return kwargs


def _group(value: Any, name: str, key: str) -> Mapping[str, Any]:
    """A nested kwargs dict (``mapping_kwargs``...); None reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{name} argument {key} is a {type(value).__name__}, expected a dict")
    return value


def generator_arch_from_nvidia(kwargs: Mapping[str, Any], args: tuple = ()) -> dict[str, Any]:
    """Translate NVIDIA ``Generator`` constructor kwargs into our flat :class:`Generator` args.

    Synthesis kwargs may be nested under ``synthesis_kwargs`` (stylegan2-ada-pytorch) or given
    at the top level (the StyleGAN2 config of NVIDIA's stylegan3 repository).
    """
    kwargs = _merge_positional(args, kwargs, _G_POSITIONAL, "generator")
    arch: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _G_TOP:
            arch[key] = value
        elif key == "mapping_kwargs":
            for mk, mv in _group(value, "generator", key).items():
                if mk not in _G_MAPPING:
                    raise CheckpointError(f"unsupported generator mapping argument {mk!r:.60}")
                arch[_G_MAPPING[mk]] = mv
        elif key == "synthesis_kwargs":
            for sk, sv in _group(value, "generator", key).items():
                if sk not in _G_SYNTHESIS:
                    raise CheckpointError(f"unsupported generator synthesis argument {sk!r:.60}")
                arch[sk] = sv
        elif key in _G_SYNTHESIS:
            arch[key] = value
        else:
            raise CheckpointError(f"unsupported generator argument {key!r:.60}")
    missing = _G_TOP - set(arch) - {"img_channels"}
    if missing:
        raise CheckpointError(f"generator arguments lack {sorted(missing)}")
    return check_arch(KIND_GENERATOR, arch)


def discriminator_arch_from_nvidia(kwargs: Mapping[str, Any], args: tuple = ()) -> dict[str, Any]:
    """Translate NVIDIA ``Discriminator`` constructor kwargs into our flat arguments."""
    kwargs = _merge_positional(args, kwargs, _D_POSITIONAL, "discriminator")
    arch: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _D_TOP:
            arch[key] = value
        elif key == "block_kwargs":
            for bk, bv in _group(value, "discriminator", key).items():
                if bk not in _D_BLOCK:
                    raise CheckpointError(f"unsupported discriminator block argument {bk!r:.60}")
                arch[bk] = bv
        elif key == "mapping_kwargs":
            for mk, mv in _group(value, "discriminator", key).items():
                if mk == "activation" and mv == "lrelu":
                    continue
                if mk not in _D_MAPPING:
                    raise CheckpointError(f"unsupported discriminator mapping argument {mk!r:.60}")
                arch[_D_MAPPING[mk]] = mv
        elif key == "epilogue_kwargs":
            for ek, ev in _group(value, "discriminator", key).items():
                if ek not in _D_EPILOGUE:
                    raise CheckpointError(f"unsupported discriminator epilogue argument {ek!r:.60}")
                if ek == "activation" and arch.get("activation", ev) != ev:
                    raise CheckpointError(
                        "different block and epilogue activations are unsupported"
                    )
                arch[ek] = ev
        else:
            raise CheckpointError(f"unsupported discriminator argument {key!r:.60}")
    return check_arch(KIND_DISCRIMINATOR, arch)


def _spec_from_record(key: str, rec: PersistentRecord) -> NetworkSpec:
    """One network of a snapshot: its arch from the pickled constructor arguments, its state
    dict as pickled (the names are already ours). Errors name the entry."""
    try:
        if rec.class_name == "Generator":
            arch = generator_arch_from_nvidia(rec.init_kwargs, rec.init_args)
            kind = KIND_GENERATOR
        elif rec.class_name == "Discriminator":
            arch = discriminator_arch_from_nvidia(rec.init_kwargs, rec.init_args)
            kind = KIND_DISCRIMINATOR
        else:
            raise CheckpointError(f"it is a {rec.class_name!r:.60}, not a StyleGAN2 network")
        state = dict(rec.state_dict())
        if any(name.startswith("synthesis.input.") for name in state):
            raise CheckpointError("StyleGAN3 (alias-free) generators are not supported")
        spec = NetworkSpec(kind=kind, arch=arch, state=state)
        spec.check()
    except (CheckpointError, CorruptPickleError) as e:
        raise CheckpointError(f"snapshot entry {key!r}: {e}") from None
    return spec


def networks_from_nvidia(obj: Mapping[str, Any]) -> dict[str, NetworkSpec]:
    """Networks of an NVIDIA stylegan2-ada-pytorch snapshot: the unpickled dict whose ``G_ema``,
    ``G`` and ``D`` entries are :class:`~teacher.pickle_reader.PersistentRecord` objects.

    Returns the entries present, in the order ``G_ema``, ``G``, ``D``; other entries
    (``augment_pipe``, ``training_set_kwargs``...) are ignored.
    """
    specs: dict[str, NetworkSpec] = {}
    for key in ("G_ema", "G", "D"):
        rec = obj.get(key)
        if rec is None:
            continue
        if not isinstance(rec, PersistentRecord):
            raise CheckpointError(f"snapshot entry {key!r} is not a network")
        specs[key] = _spec_from_record(key, rec)
    if not specs:
        raise CheckpointError("snapshot holds no G, G_ema or D network")
    return specs


# ---------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch


def _r(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
    return lambda t: fn(t.detach()).to(torch.float32).contiguous().clone()


def _unit(t: Any, dims: int = 1) -> Any:
    """Drop ``dims`` leading size-1 dimensions (``[1, 1, r, r] -> [r, r]``); ValueError if not 1."""
    if any(int(s) != 1 for s in t.shape[:dims]) or len(t.shape) < dims:
        raise ValueError(f"leading dimensions of {list(t.shape)} are not 1")
    return t[(0,) * dims]


_R_SAME = _r(lambda t: t)
_R_FIRST = _r(_unit)  # [1, ...] -> [...]
_R_FLAT = _r(lambda t: t.reshape(-1))
_R_SCALAR = _r(lambda t: t.reshape([]))
_R_NOISE = _r(lambda t: _unit(t, 2))  # [1, 1, r, r] -> [r, r]


def _rosinality_rules(styles: list[int], resolutions: list[int]) -> dict[str, _Rule]:
    rules: dict[str, _Rule] = {}
    for i in styles:  # style.0 is PixelNorm
        rules[f"mapping.fc{i - 1}.weight"] = (f"style.{i}.weight", _R_SAME)
        rules[f"mapping.fc{i - 1}.bias"] = (f"style.{i}.bias", _R_SAME)
    rules["synthesis.b4.const"] = ("input.input", _R_FIRST)

    def styled_conv(ours: str, theirs: str, noise: int) -> None:
        rules[f"{ours}.weight"] = (f"{theirs}.conv.weight", _R_FIRST)  # [1, O, I, k, k]
        rules[f"{ours}.affine.weight"] = (f"{theirs}.conv.modulation.weight", _R_SAME)
        rules[f"{ours}.affine.bias"] = (f"{theirs}.conv.modulation.bias", _R_SAME)  # holds the 1
        rules[f"{ours}.noise_strength"] = (f"{theirs}.noise.weight", _R_SCALAR)  # [1] -> []
        rules[f"{ours}.noise_const"] = (f"noises.noise_{noise}", _R_NOISE)
        rules[f"{ours}.bias"] = (f"{theirs}.activate.bias", _R_SAME)

    def to_rgb(ours: str, theirs: str) -> None:
        rules[f"{ours}.weight"] = (f"{theirs}.conv.weight", _R_FIRST)
        rules[f"{ours}.affine.weight"] = (f"{theirs}.conv.modulation.weight", _R_SAME)
        rules[f"{ours}.affine.bias"] = (f"{theirs}.conv.modulation.bias", _R_SAME)
        rules[f"{ours}.bias"] = (f"{theirs}.bias", _R_FLAT)  # [1, C, 1, 1]

    styled_conv("synthesis.b4.conv1", "conv1", 0)
    to_rgb("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(resolutions[1:]):
        styled_conv(f"synthesis.b{res}.conv0", f"convs.{2 * k}", 2 * k + 1)  # the up conv
        styled_conv(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        to_rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")
    return rules


def _check_blur_kernels(sd: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """rosinality's blur buffers must be the [1, 3, 3, 1] filter (times 4 for upsampling)."""
    names = [
        k
        for k in sd
        if re.fullmatch(r"convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel", k)
    ]
    expected = ops.make_filter(DEFAULT_FILTER) * 4
    for name in names:
        k = sd[name].detach().to(torch.float32)
        if k.shape != expected.shape or not torch.allclose(k, expected, atol=1e-6):
            raise CheckpointError(
                f"{what}: {name} is not the [1, 3, 3, 1] blur; other filters are unsupported"
            )
    return names


@torch.no_grad()
def _estimate_w_avg(G: Generator, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean mapping output over ``W_AVG_SAMPLES`` z drawn with seed ``W_AVG_SEED``."""
    G.load_state_dict(state, strict=True)
    z = torch.randn([W_AVG_SAMPLES, G.z_dim], generator=torch.Generator().manual_seed(W_AVG_SEED))
    total = torch.zeros([G.w_dim], dtype=torch.float64)
    for chunk in z.split(1000):
        total += G.mapping(chunk, None, update_w_avg=False)[:, 0].double().sum(dim=0)
    return (total / W_AVG_SAMPLES).to(torch.float32)


def _rosinality_generator(sd: Any, latent_avg: Any, what: str) -> NetworkSpec:
    if not isinstance(sd, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise CheckpointError(f"rosinality entry {what!r} is not a state dict of named tensors")
    sd = dict(sd)
    styles = _indices(sd, r"style\.(\d+)\.weight")
    if not styles or styles != list(range(1, len(styles) + 1)):
        raise CheckpointError(
            f"{what}: no mapping layers style.1 ... style.N; not a rosinality generator"
        )
    w_dim = _shape(sd, "style.1.weight", what, 2)[1]
    const = _shape(sd, "input.input", what, 4)
    if const[0] != 1 or const[2:] != (4, 4):
        raise CheckpointError(f"{what}: input.input has shape {list(const)}, expected [1, C, 4, 4]")
    n_up = len(_indices(sd, r"to_rgbs\.(\d+)\.conv\.weight"))
    resolutions = [4 * 2**k for k in range(n_up + 1)]
    channels = {4: const[1]}
    for k, res in enumerate(resolutions[1:]):
        channels[res] = _shape(sd, f"convs.{2 * k}.conv.weight", what, 5)[1]
    base, cmax = infer_channel_base_max(channels)
    arch = dict(
        z_dim=w_dim,
        c_dim=0,
        w_dim=w_dim,
        img_resolution=resolutions[-1],
        img_channels=_shape(sd, "to_rgb1.conv.weight", what, 5)[1],
        mapping_layers=len(styles),
        mapping_lr_multiplier=0.01,
        architecture="skip",
        channel_base=base,
        channel_max=cmax,
        num_fp16_res=0,
        conv_clamp=None,
    )
    G = _build(Generator, arch, what, sd)
    rules = _rosinality_rules(styles, resolutions)
    tensors: dict[str, Any] = dict(sd)
    source: dict[str, Any] = {}
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != w_dim:
            raise CheckpointError(f"latent_avg is not a tensor of {w_dim} values")
        tensors["latent_avg"] = latent_avg
        rules["mapping.w_avg"] = ("latent_avg", _R_FLAT)  # [w_dim] or [1, w_dim]
    state = _fill(
        G.state_dict(),
        rules,
        tensors,
        what,
        ignore=_check_blur_kernels(sd, what),
        keep=() if latent_avg is not None else ("mapping.w_avg",),
    )
    if latent_avg is None:
        state["mapping.w_avg"] = _estimate_w_avg(G, state)
        source = {"w_avg": "estimated", "w_avg_samples": W_AVG_SAMPLES, "w_avg_seed": W_AVG_SEED}
    return NetworkSpec(kind=KIND_GENERATOR, arch=dict(G.arch), state=state, source=source)


def networks_from_rosinality(ckpt: Mapping[str, Any]) -> dict[str, NetworkSpec]:
    """Networks of a rosinality/stylegan2-pytorch checkpoint (as ``torch.load`` returns it).

    Returns ``{"G_ema": ...}`` from ``g_ema``, plus ``"G"`` from ``g`` when present. The
    discriminator ``d`` is skipped: rosinality's discriminator is a different architecture
    (its own layer order, no projection conditioning) that ours cannot load.

    The arch is read from tensor shapes: ``z_dim = w_dim`` = style size, ``mapping_layers`` =
    number of ``style.N`` layers, resolution from the number of blocks, channels per block,
    architecture ``skip``, no labels, no conv clamp, float32, mapping lr multiplier 0.01.
    ``mapping.w_avg`` is ``latent_avg`` when the checkpoint has one (files made by rosinality's
    ``convert_weight.py``); otherwise it is estimated as the mean mapping output over 10000 z
    (seed 0), and ``spec.source["w_avg"]`` says ``"estimated"``.
    """
    if not isinstance(ckpt, Mapping) or "g_ema" not in ckpt:
        found = (
            sorted(str(k) for k in ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        )
        raise CheckpointError(
            "not a rosinality stylegan2-pytorch checkpoint: it has no 'g_ema' generator "
            f"(found {found})"
        )
    latent_avg = ckpt.get("latent_avg")
    specs = {"G_ema": _rosinality_generator(ckpt["g_ema"], latent_avg, "g_ema")}
    if ckpt.get("g") is not None:
        # NVIDIA copies buffers from G to G_ema, so latent_avg is G's average too.
        specs["G"] = _rosinality_generator(ckpt["g"], latent_avg, "g")
    return specs


# ---------------------------------------------------------------------------------------------
# NVIDIA TensorFlow pickles (StyleGAN2 and StyleGAN2-ADA TF)


def _np(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))  # always a contiguous copy


def _tf_same(a: Any) -> torch.Tensor:
    return _np(a)


def _tf_dense(a: Any) -> torch.Tensor:  # [in, out] -> [out, in]
    return _np(np.asarray(a).T)


def _tf_conv(a: Any) -> torch.Tensor:  # [kh, kw, in, out] -> [out, in, kh, kw]
    return _np(np.asarray(a).transpose(3, 2, 0, 1))


def _tf_conv_up(a: Any) -> torch.Tensor:  # as _tf_conv, kernel flipped (see module docstring)
    return _np(np.asarray(a)[::-1, ::-1].transpose(3, 2, 0, 1))


def _tf_mod_bias(a: Any) -> torch.Tensor:  # TF adds the 1 in the graph
    return _np(a) + 1


def _tf_first(a: Any) -> torch.Tensor:  # [1, C, 4, 4] -> [C, 4, 4]
    return _np(_unit(np.asarray(a)))


def _tf_noise(a: Any) -> torch.Tensor:  # [1, 1, r, r] -> [r, r]
    return _np(_unit(np.asarray(a), 2))


def _tf_scalar(a: Any) -> torch.Tensor:
    return _np(np.asarray(a).reshape([]))


def _tf_variables(rec: TFNetworkRecord, what: str) -> dict[str, np.ndarray]:
    if rec.version < 4:
        raise CheckpointError(
            f"{what}: TensorFlow network version {rec.version} predates StyleGAN2 "
            "(StyleGAN1 pickles are not supported)"
        )
    try:
        tensors = rec.all_variables()
    except CorruptPickleError as e:
        raise CheckpointError(f"{what}: {e}") from None
    for name, a in tensors.items():
        if np.asarray(a).dtype.kind != "f":
            raise CheckpointError(f"{what}: variable {name} is not floating point")
    return tensors


def _block_resolutions(names: Iterable[str], prefix: str, what: str) -> list[int]:
    """The ``NxN`` scopes under ``prefix``, checked to be 4, 8, ..., N."""
    found = set()
    for name in names:
        m = re.match(r"(\d+)x(\d+)/", name[len(prefix) :]) if name.startswith(prefix) else None
        if m and m.group(1) == m.group(2):
            found.add(int(m.group(1)))
    if not found:
        raise CheckpointError(f"{what}: no {prefix}NxN layers; not a StyleGAN2 network")
    top = max(found)
    expected = [2**k for k in range(2, int(math.log2(top)) + 1)]
    if sorted(found) != expected:
        raise CheckpointError(f"{what}: layer resolutions {sorted(found)} are not 4, 8, ..., {top}")
    return expected


def _resample_filter(kernel: Any) -> list[float]:
    return [float(v) for v in (kernel if kernel is not None else [1, 1])]  # None: box filter


def _check_resolution(kwargs: Mapping[str, Any], res: int, what: str) -> None:
    if kwargs.get("resolution", res) != res:
        raise CheckpointError(
            f"{what}: static resolution {kwargs['resolution']!r:.40} but layers up to {res}"
        )


def _tf_generator(rec: TFNetworkRecord, what: str) -> NetworkSpec:
    mapping, synthesis = rec.components.get("mapping"), rec.components.get("synthesis")
    if not isinstance(mapping, TFNetworkRecord) or not isinstance(synthesis, TFNetworkRecord):
        raise CheckpointError(
            f"{what}: TensorFlow generator without mapping and synthesis components"
        )
    v = _tf_variables(rec, what)
    kw = dict(rec.static_kwargs)
    mkw = {**kw, **mapping.static_kwargs}
    skw = {**kw, **synthesis.static_kwargs}
    if "mapping/LabelConcat/weight" in v:
        raise CheckpointError(
            f"{what}: conditional StyleGAN2 generators (LabelConcat) are not supported; "
            "StyleGAN2-ADA label embeddings (LabelEmbed) are"
        )
    if not mkw.get("normalize_latents", True):
        raise CheckpointError(f"{what}: mapping without latent normalization is not supported")

    dense = _indices(v, r"mapping/Dense(\d+)/weight")
    if not dense or dense != list(range(len(dense))):
        raise CheckpointError(
            f"{what}: no mapping layers mapping/Dense0 ...; not a StyleGAN2 generator"
        )
    n = len(dense)
    first = _shape(v, "mapping/Dense0/weight", what, 2)
    w_dim = _shape(v, f"mapping/Dense{n - 1}/weight", what, 2)[1]
    c_dim, embed = (
        _shape(v, "mapping/LabelEmbed/weight", what, 2)
        if "mapping/LabelEmbed/weight" in v
        else (0, 0)
    )
    if mkw.get("label_size", c_dim) != c_dim:
        raise CheckpointError(
            f"{what}: label_size {mkw['label_size']!r:.40} but the label embedding takes {c_dim}"
        )
    hidden = first[1] if n > 1 else w_dim

    resolutions = _block_resolutions(v, "synthesis/", what)
    top = resolutions[-1]
    _check_resolution(skw, top, what)
    channels = {4: _shape(v, "synthesis/4x4/Conv/weight", what, 4)[3]}
    for res in resolutions[1:]:
        channels[res] = _shape(v, f"synthesis/{res}x{res}/Conv1/weight", what, 4)[3]
    base, cmax = infer_channel_base_max(channels)
    beta = kw.get("dlatent_avg_beta", 0.995)
    try:  # static_kwargs are data from the file: any type may turn up
        arch = dict(
            z_dim=first[0] - embed,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=top,
            img_channels=_shape(v, f"synthesis/{top}x{top}/ToRGB/weight", what, 4)[3],
            mapping_layers=n,
            mapping_embed_features=embed if c_dim and embed != w_dim else None,
            mapping_layer_features=hidden if hidden != w_dim else None,
            mapping_activation=_check_activation(mkw.get("mapping_nonlinearity", "lrelu"), what),
            mapping_lr_multiplier=float(mkw.get("mapping_lrmul", 0.01)),
            w_avg_beta=float(beta) if beta is not None else 1.0,  # TF None = never update
            architecture=skw.get("architecture", "skip"),
            channel_base=base,
            channel_max=cmax,
            num_fp16_res=0,
            conv_clamp=skw.get("conv_clamp"),
            resample_filter=_resample_filter(skw.get("resample_kernel", list(DEFAULT_FILTER))),
            use_noise=bool(skw.get("use_noise", True)),
            activation=_check_activation(skw.get("nonlinearity", "lrelu"), what),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{what}: static_kwargs hold a value of the wrong type ({e})"
        ) from None
    G = _build(Generator, arch, what, v)

    rules: dict[str, _Rule] = {
        "mapping.w_avg": ("dlatent_avg", _tf_same),
        "mapping.embed.weight": ("mapping/LabelEmbed/weight", _tf_dense),
        "mapping.embed.bias": ("mapping/LabelEmbed/bias", _tf_same),
        "synthesis.b4.const": ("synthesis/4x4/Const/const", _tf_first),
    }
    for i in range(n):
        rules[f"mapping.fc{i}.weight"] = (f"mapping/Dense{i}/weight", _tf_dense)
        rules[f"mapping.fc{i}.bias"] = (f"mapping/Dense{i}/bias", _tf_same)

    def modconv(ours: str, scope: str, noise: int, conv: Callable[[Any], torch.Tensor]) -> None:
        rules[f"{ours}.weight"] = (f"{scope}/weight", conv)
        rules[f"{ours}.affine.weight"] = (f"{scope}/mod_weight", _tf_dense)
        rules[f"{ours}.affine.bias"] = (f"{scope}/mod_bias", _tf_mod_bias)
        rules[f"{ours}.noise_strength"] = (f"{scope}/noise_strength", _tf_scalar)
        rules[f"{ours}.noise_const"] = (f"synthesis/noise{noise}", _tf_noise)
        rules[f"{ours}.bias"] = (f"{scope}/bias", _tf_same)

    def to_rgb(ours: str, scope: str) -> None:
        rules[f"{ours}.weight"] = (f"{scope}/weight", _tf_conv)
        rules[f"{ours}.affine.weight"] = (f"{scope}/mod_weight", _tf_dense)
        rules[f"{ours}.affine.bias"] = (f"{scope}/mod_bias", _tf_mod_bias)
        rules[f"{ours}.bias"] = (f"{scope}/bias", _tf_same)

    modconv("synthesis.b4.conv1", "synthesis/4x4/Conv", 0, _tf_conv)
    to_rgb("synthesis.b4.torgb", "synthesis/4x4/ToRGB")
    for res in resolutions[1:]:
        scope, log2 = f"synthesis/{res}x{res}", int(math.log2(res))
        modconv(f"synthesis.b{res}.conv0", f"{scope}/Conv0_up", 2 * log2 - 5, _tf_conv_up)
        modconv(f"synthesis.b{res}.conv1", f"{scope}/Conv1", 2 * log2 - 4, _tf_conv)
        to_rgb(f"synthesis.b{res}.torgb", f"{scope}/ToRGB")
        rules[f"synthesis.b{res}.skip.weight"] = (f"{scope}/Skip/weight", _tf_conv_up)
    # 'lod' is StyleGAN1's progressive-growing level, unused by StyleGAN2.
    state = _fill(G.state_dict(), rules, v, what, ignore=("lod",))
    return NetworkSpec(kind=KIND_GENERATOR, arch=dict(G.arch), state=state)


def _tf_discriminator(rec: TFNetworkRecord, what: str) -> NetworkSpec:
    v = _tf_variables(rec, what)
    kw = dict(rec.static_kwargs)
    resolutions = _block_resolutions(v, "", what)
    top = resolutions[-1]
    _check_resolution(kw, top, what)
    conv4 = _shape(v, "4x4/Conv/weight", what, 4)
    channels = {4: conv4[3]}
    for res in resolutions[1:]:
        channels[res] = _shape(v, f"{res}x{res}/Conv0/weight", what, 4)[3]
    base, cmax = infer_channel_base_max(channels)
    out_features = _shape(v, "Output/weight", what, 2)[1]
    c_dim = embed = 0
    maps: list[int] = []
    layer_features = None
    if "LabelEmbed/weight" in v:  # StyleGAN2-ADA projection conditioning
        c_dim, embed = _shape(v, "LabelEmbed/weight", what, 2)
        maps = _indices(v, r"Mapping(\d+)/weight")
        if maps != list(range(len(maps))):
            raise CheckpointError(f"{what}: label mapping layers {maps} are not numbered 0, 1, ...")
        layer_features = _shape(v, "Mapping0/weight", what, 2)[1] if maps else None
        if kw.get("nonlinearity", "lrelu") != "lrelu":
            raise CheckpointError(
                f"{what}: label mapping with activation {kw['nonlinearity']!r:.40} is unsupported"
            )
    elif out_features != 1:
        raise CheckpointError(
            f"{what}: discriminator with {out_features} outputs (StyleGAN2 label conditioning or "
            "auxiliary scores) is not supported"
        )
    if kw.get("label_size", c_dim) != c_dim:
        raise CheckpointError(
            f"{what}: label_size {kw['label_size']!r:.40} but the label embedding takes {c_dim}"
        )
    # StyleGAN2's D_stylegan2 groups 4 samples by default, StyleGAN2-ADA's D_main the whole batch.
    group = kw.get("mbstd_group_size", None if rec.build_func_name == "D_main" else 4)
    try:  # static_kwargs are data from the file: any type may turn up
        arch = dict(
            c_dim=c_dim,
            img_resolution=top,
            img_channels=_shape(v, f"{top}x{top}/FromRGB/weight", what, 4)[2],
            architecture=kw.get("architecture", "resnet"),
            channel_base=base,
            channel_max=cmax,
            num_fp16_res=0,
            conv_clamp=kw.get("conv_clamp"),
            cmap_dim=out_features if c_dim and out_features != channels[4] else None,
            activation=_check_activation(kw.get("nonlinearity", "lrelu"), what),
            resample_filter=_resample_filter(kw.get("resample_kernel", list(DEFAULT_FILTER))),
            mbstd_group_size=int(group) if group is not None else None,
            mbstd_num_channels=conv4[2] - conv4[3],
            mapping_layers=len(maps),
            mapping_embed_features=embed if c_dim and embed != out_features else None,
            mapping_layer_features=layer_features
            if layer_features not in (None, out_features)
            else None,
            mapping_lr_multiplier=float(kw.get("mapping_lrmul", 0.1)),
            freeze_layers=int(kw.get("freeze_layers", 0)),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{what}: static_kwargs hold a value of the wrong type ({e})"
        ) from None
    D = _build(Discriminator, arch, what, v)

    rules: dict[str, _Rule] = {}

    def conv(ours: str, scope: str, bias: bool = True) -> None:
        rules[f"{ours}.weight"] = (f"{scope}/weight", _tf_conv)
        if bias:
            rules[f"{ours}.bias"] = (f"{scope}/bias", _tf_same)

    def dense(ours: str, scope: str) -> None:
        rules[f"{ours}.weight"] = (f"{scope}/weight", _tf_dense)
        rules[f"{ours}.bias"] = (f"{scope}/bias", _tf_same)

    for res in resolutions:
        conv(f"b{res}.fromrgb", f"{res}x{res}/FromRGB")
    for res in resolutions[1:]:
        conv(f"b{res}.conv0", f"{res}x{res}/Conv0")
        conv(f"b{res}.conv1", f"{res}x{res}/Conv1_down")  # FIR, then correlation: no flip
        conv(f"b{res}.skip", f"{res}x{res}/Skip", bias=False)
    conv("b4.conv", "4x4/Conv")
    dense("b4.fc", "4x4/Dense0")
    dense("b4.out", "Output")
    dense("mapping.embed", "LabelEmbed")
    for i in maps:
        dense(f"mapping.fc{i}", f"Mapping{i}")
    state = _fill(D.state_dict(), rules, v, what)
    return NetworkSpec(kind=KIND_DISCRIMINATOR, arch=dict(D.arch), state=state)


def networks_from_tf(obj: tuple) -> dict[str, NetworkSpec]:
    """Networks of an NVIDIA TensorFlow pickle: the unpickled ``(G, D, Gs)`` tuple of
    :class:`~teacher.pickle_reader.TFNetworkRecord`.

    Returns ``{"G_ema": from Gs, "G": from G, "D": from D}``. Handles StyleGAN2 (config E/F:
    ``G_main`` + ``G_synthesis_stylegan2``, ``D_stylegan2``) and StyleGAN2-ADA TF (``G_main``,
    ``D_main``, label embedding and projection discriminator) with architectures orig, skip and
    resnet. Channel counts, z/w sizes, mapping depth and labels come from variable shapes;
    architecture, activations, FIR filter, conv clamp and minibatch-std group size from the
    networks' ``static_kwargs``. TF networks run in float32 here (``num_fp16_res`` 0).
    """
    if (
        not isinstance(obj, tuple)
        or len(obj) != 3
        or not all(isinstance(r, TFNetworkRecord) for r in obj)
    ):
        raise CheckpointError("TensorFlow pickle is not a (G, D, Gs) tuple of networks")
    G, D, Gs = obj
    return {
        "G_ema": _tf_generator(Gs, "Gs"),
        "G": _tf_generator(G, "G"),
        "D": _tf_discriminator(D, "D"),
    }
