"""Reading and writing student model files.

A student file is safetensors (the generator's state dict, float32 weights and batch-norm
statistics) with JSON under the metadata key ``toon``::

    {"format_version": 1, "kind": "student.generator",
     "arch": {"preset": ..., "family": ..., every constructor argument},
     "source": {"pairs_manifest_sha256": ..., "teachers": {... from the pairs manifest}},
     "training": {"resolution": R, "kimg": ..., "holdout_percent": ..., "config": {...}}}

``training`` is written by ``toon-student train`` and read by ``eval`` (the held-out split) and
``apply`` (the default image size). Every failure is a :class:`StudentFileError` with a
one-line message naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from common.cli import ToonError
from common.files import atomic_write, file_sha256
from common.weights import state_mismatch

FORMAT_VERSION = 1
KIND_STUDENT = "student.generator"


class StudentFileError(ToonError):
    """A student file could not be read or is not a student generator (one-line message)."""


@dataclass
class StudentFile:
    """A student file as data: metadata and state dict."""

    path: Path
    arch: dict[str, Any]
    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> dict[str, Any]:
        """Where the training data came from (pairs manifest hash, teachers)."""
        return dict(self.info.get("source") or {})

    @property
    def training(self) -> dict[str, Any]:
        """Training facts (resolution, kimg, holdout_percent, config); may be empty."""
        return dict(self.info.get("training") or {})

    def build(self) -> nn.Module:
        """The generator with this file's weights, loaded strictly, in eval mode."""
        from student.networks import build_generator

        try:
            G = build_generator(self.arch)
        except (ValueError, TypeError) as e:
            raise StudentFileError(f"{self.path}: cannot build the generator: {e}") from None
        problem = state_mismatch(G.state_dict(), self.state)
        if problem:
            raise StudentFileError(f"{self.path}: {problem}")
        G.load_state_dict(self.state, strict=True)
        G.arch = dict(self.arch)
        G.toon_info = dict(self.info)
        return G.eval()


def read_student(path: str | os.PathLike) -> StudentFile:
    """Read a student file's metadata and tensors (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise StudentFileError(
            f"{path}: file not found (toon-student train writes student.safetensors in its "
            "run directory)"
        )
    if path.is_dir():
        raise StudentFileError(f"{path}: is a directory, expected a student .safetensors file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # safetensors raises its own error types for any bad file
        raise StudentFileError(f"{path}: not a safetensors file") from None
    if "toon" not in meta:
        raise StudentFileError(f"{path}: no 'toon' metadata; not a toon-distill model file")
    try:
        info = json.loads(meta["toon"])
    except json.JSONDecodeError:
        raise StudentFileError(f"{path}: 'toon' metadata is not valid JSON") from None
    kind = info.get("kind")
    if kind != KIND_STUDENT:
        raise StudentFileError(
            f"{path}: holds a {kind!r}, not a student generator ({KIND_STUDENT!r}); pass the "
            "student.safetensors written by toon-student train"
        )
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise StudentFileError(
            f"{path}: unsupported student format version {version!r} (expected {FORMAT_VERSION})"
        )
    if not isinstance(info.get("arch"), dict):
        raise StudentFileError(f"{path}: metadata has no arch")
    return StudentFile(path=path, arch=dict(info["arch"]), state=state, info=info)


def load_student(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Load a student generator in eval mode (attributes ``arch`` and ``toon_info`` hold the
    file's metadata)."""
    return read_student(path).build().to(device)


def save_student(
    G: nn.Module,
    arch: Mapping[str, Any],
    path: str | os.PathLike,
    source: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write a generator as a student file (atomically: temporary name, then rename)."""
    path = Path(path)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": KIND_STUDENT,
        "arch": dict(arch),
        "source": dict(source or {}),
    }
    if training is not None:
        info["training"] = dict(training)
    state = {k: v.detach().to("cpu").contiguous() for k, v in G.state_dict().items()}
    meta = {"toon": json.dumps(info, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def student_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What a student file is: arch, parameter count, sha256, source and training facts."""
    sf = read_student(path)
    G = sf.build()
    from student.networks import count_parameters

    return {
        "file": str(sf.path),
        "sha256": file_sha256(sf.path),
        "kind": KIND_STUDENT,
        "arch": sf.arch,
        "parameters": count_parameters(G),
        "stride": int(G.stride),
        "source": sf.source,
        "training": {k: v for k, v in sf.training.items() if k != "config"},
    }


__all__ = [
    "FORMAT_VERSION",
    "KIND_STUDENT",
    "StudentFile",
    "StudentFileError",
    "load_student",
    "read_student",
    "save_student",
    "student_summary",
]
