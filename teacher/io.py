"""Reading and writing teacher networks.

Supported inputs (the format is detected from the file's bytes, not its name):

- NVIDIA stylegan2-ada-pytorch snapshots (``network-snapshot-*.pkl``): a pickled dict with
  ``G``, ``D``, ``G_ema``, ``augment_pipe``; read with a restricted unpickler, the embedded
  source code is never run. The architecture comes from the pickled constructor kwargs
  (translated in :mod:`teacher.convert`, the home of every foreign-format translation).
- TensorFlow-era NVIDIA pickles (``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``): variables
  are numpy arrays and are renamed to ours (see :mod:`teacher.convert`).
- rosinality stylegan2-pytorch checkpoints (``.pt`` with ``g_ema``), loaded with
  ``torch.load(weights_only=True)``.
- Our own ``.safetensors``: tensors named as the network's state dict, JSON metadata under the
  key ``toon``: ``{"format_version", "kind", "arch", "source"}``.

Every failure is a :class:`CheckpointError` with a one-line message naming the file.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.cli import error_line
from common.files import atomic_write, file_sha256
from teacher.convert import networks_from_nvidia, networks_from_rosinality, networks_from_tf
from teacher.networks import Discriminator, Generator
from teacher.pickle_reader import (
    CorruptPickleError,
    PersistentRecord,
    TFNetworkRecord,
    UnsafePickleError,
    restricted_load,
)
from teacher.spec import (
    KIND_DISCRIMINATOR,
    KIND_GENERATOR,
    KIND_SNAPSHOT,
    CheckpointError,
    NetworkSpec,
    show_value,
)

FORMAT_VERSION = 1
_LEGACY_TORCH_PREFIX = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


# ---------------------------------------------------------------------------------------------
# Reading


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len < 100_000_000:
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(_LEGACY_TORCH_PREFIX):
        return "torch-legacy"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def read_networks(path: str | os.PathLike) -> dict[str, NetworkSpec]:
    """Read every teacher network in a checkpoint file.

    Returns a dict with some of ``"G_ema"``, ``"G"`` and ``"D"`` (our safetensors files hold
    one network, returned under ``"G_ema"`` or ``"D"``).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    kind = _sniff(path)
    source = {"file": path.name, "sha256": file_sha256(path)}
    try:
        if kind == "safetensors":
            specs = _read_safetensors(path)
        elif kind in ("torch-zip", "torch-legacy"):
            specs = _read_torch_checkpoint(path)
        elif kind == "pickle":
            specs = _read_pickle(path)
        else:
            raise CheckpointError(
                f"{path}: not a network checkpoint (expected an NVIDIA .pkl, a rosinality .pt "
                "or a toon-distill .safetensors file)"
            )
        for key, spec in specs.items():
            try:
                spec.check()  # arguments in range, and backed by the stored tensors
            except CheckpointError as e:
                raise CheckpointError(f"{key}: {e}") from None
    except CheckpointError as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    for spec in specs.values():
        spec.source = {**source, **spec.source}
    return specs


def _read_pickle(path: Path) -> dict[str, NetworkSpec]:
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f)
    except UnsafePickleError as e:
        raise CheckpointError(f"unsafe pickle refused: {e}") from None
    except (CorruptPickleError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"corrupt or truncated pickle: {e}") from None

    if isinstance(obj, dict) and any(isinstance(v, PersistentRecord) for v in obj.values()):
        return networks_from_nvidia(obj)
    if isinstance(obj, tuple) and obj and all(isinstance(v, TFNetworkRecord) for v in obj):
        return networks_from_tf(obj)
    raise CheckpointError("pickle is not a StyleGAN2 snapshot (no G/D/G_ema networks)")


def _read_torch_checkpoint(path: Path) -> dict[str, NetworkSpec]:
    try:
        # rosinality's train.py saves its argparse.Namespace of options in the checkpoint
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"cannot read torch checkpoint safely: {error_line(e)}") from None
    return networks_from_rosinality(ckpt)


def _read_safetensors(path: Path) -> dict[str, NetworkSpec]:
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"corrupt safetensors file: {e}") from None
    if "toon" not in meta:
        raise CheckpointError("safetensors file has no 'toon' metadata; not a toon-distill model")
    try:
        info = json.loads(meta["toon"])
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError("safetensors 'toon' metadata is not valid JSON") from None
    if not isinstance(info, dict):
        raise CheckpointError("safetensors 'toon' metadata is not a JSON object")
    version = info.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"unsupported model format version {show_value(version)} (expected {FORMAT_VERSION})"
        )
    kind, arch, source = info.get("kind"), info.get("arch"), info.get("source", {})
    if not isinstance(source, dict):
        raise CheckpointError("safetensors 'toon' metadata: source is not a JSON object")
    if not isinstance(arch, dict):
        raise CheckpointError("safetensors 'toon' metadata: arch is not a JSON object")
    # Each arch is held to the schema by NetworkSpec.check in read_networks.
    if kind == KIND_SNAPSHOT:
        specs = {}
        for key, net_arch in arch.items():
            if key not in ("G", "G_ema", "D"):
                raise CheckpointError(
                    f"snapshot metadata names an unknown network {show_value(key)}"
                )
            prefix = key + "."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            net_kind = KIND_DISCRIMINATOR if key == "D" else KIND_GENERATOR
            specs[key] = NetworkSpec(net_kind, net_arch, sub, source=dict(source))
        return specs
    if kind not in (KIND_GENERATOR, KIND_DISCRIMINATOR):
        raise CheckpointError(f"file holds a {show_value(kind)}, not a teacher network")
    spec = NetworkSpec(kind=kind, arch=arch, state=state, source=dict(source))
    return {"G_ema" if kind == KIND_GENERATOR else "D": spec}


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a file is: format, networks with kind, arch and parameter counts."""
    path = Path(path)
    specs = read_networks(path)
    nets = {}
    for key, spec in specs.items():
        nets[key] = {
            "kind": spec.kind,
            "arch": spec.arch,
            "tensors": len(spec.state),
            "parameters": int(sum(t.numel() for t in spec.state.values())),
            "source": spec.source,
        }
    return {"file": str(path), "format": _sniff(path), "networks": nets}


def load_generator(path: str | os.PathLike, which: str = "G_ema") -> Generator:
    """Load a generator (by default the EMA generator of a snapshot) in eval mode."""
    specs = read_networks(path)
    if which not in specs:
        has = ", ".join(sorted(specs)) or "nothing"
        raise CheckpointError(f"{path}: holds no generator {which!r} (it holds {has})")
    spec = specs[which]
    if spec.kind != KIND_GENERATOR:
        raise CheckpointError(f"{path}: {which} is a {spec.kind}, not a generator")
    G = spec.build()
    G.source = spec.source
    return G


def load_discriminator(path: str | os.PathLike) -> Discriminator:
    """Load the discriminator of a snapshot in eval mode."""
    specs = read_networks(path)
    if "D" not in specs:
        has = ", ".join(sorted(specs)) or "nothing"
        raise CheckpointError(f"{path}: holds no discriminator (it holds {has})")
    D = specs["D"].build()
    D.source = specs["D"].source
    return D


# ---------------------------------------------------------------------------------------------
# Writing


def save_network(
    net: Generator | Discriminator,
    path: str | os.PathLike,
    source: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a network as safetensors with ``toon`` metadata (atomically)."""
    path = Path(path)
    kind = KIND_GENERATOR if isinstance(net, Generator) else KIND_DISCRIMINATOR
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "arch": net.arch,
        "source": dict(source or getattr(net, "source", {}) or {}),
    }
    if extra:
        info.update(extra)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = {"toon": json.dumps(info, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def convert_checkpoint(
    src: str | os.PathLike, out: str | os.PathLike, which: str = "G_ema"
) -> Path:
    """Convert any supported checkpoint to our safetensors.

    ``which="all"``: every network the source holds (G, D, G_ema), as one snapshot file when
    there are several, so one file serves fine-tuning (G, D), projection (G_ema, D) and
    rendering (G_ema); ``"G_ema"``, ``"G"`` or ``"D"``: that network alone.
    """
    specs = read_networks(src)
    if which == "all":
        keys = [k for k in ("G", "D", "G_ema") if k in specs]
        if len(keys) > 1:
            main = specs.get("G_ema") or specs[keys[0]]
            nets = {k: specs[k].build() for k in keys}
            return save_snapshot(nets, out, source=main.source)
        which = keys[0]
    if which not in specs:
        has = ", ".join(sorted(specs)) or "nothing"
        raise CheckpointError(f"{src}: holds no {which!r} (it holds {has})")
    net = specs[which].build()
    return save_network(net, out, source=specs[which].source)


def save_snapshot(
    nets: Mapping[str, Generator | Discriminator],
    path: str | os.PathLike,
    source: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write several networks (``{"G": ..., "D": ..., "G_ema": ...}``) into one safetensors
    file of kind ``teacher.snapshot`` (atomically). ``load_generator`` reads its ``G_ema``."""
    path = Path(path)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": KIND_SNAPSHOT,
        "arch": {key: net.arch for key, net in nets.items()},
        "source": dict(source or {}),
    }
    if extra:
        info.update(extra)
    state = {
        f"{key}.{k}": v.detach().to("cpu").contiguous()
        for key, net in nets.items()
        for k, v in net.state_dict().items()
    }
    meta = {"toon": json.dumps(info, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
