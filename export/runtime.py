"""The torch-free runtime: run an exported toon model with ONNX Runtime.

Models are the files ``toon-export onnx`` writes. Their ``metadata_props`` carry ``toon.*``
keys; the runtime reads ``toon.format_version`` (must be one it knows), ``toon.io``
(``uint8``: input ``image`` uint8 [N, H, W, 3] RGB, output ``toon`` the same; ``float``: float32
NCHW in [-1, 1] both ways), ``toon.size`` and ``toon.align`` (the face alignment the model
expects, JSON).

Imports: numpy, onnxruntime, and (for photos) the torch-free ``faces.align``. Never torch.
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import ToonError, error_line

FORMAT_VERSIONS = {"1"}
IO_KINDS = {"uint8", "float"}
DEFAULT_MODEL_ENV = "TOON_MODEL"


class ModelError(ToonError):
    """The model file is missing, unreadable or of an unknown kind (one-line message)."""


def default_model_path() -> Path | None:
    """Where ``toon-infer`` looks for a model without ``--model``: ``$TOON_MODEL``, then
    ``./toon.onnx``, then ``~/.local/share/toon-distill/toon.onnx``."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        return Path(env)
    for p in (Path("toon.onnx"), Path.home() / ".local/share/toon-distill/toon.onnx"):
        if p.exists():
            return p
    return None


def cuda_usable() -> bool:
    """True when an NVIDIA driver is present (``libcuda.so.1`` loads). Whether ONNX Runtime's
    CUDA provider really works is then checked on the created session."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


class Toonifier:
    """An exported toon model ready to run.

    Args:
        model_path: the ``.onnx`` file.
        providers: ONNX Runtime providers to use as given (skips the automatic choice).
        threads: intra-op threads on CPU (None: ONNX Runtime's default).
        device: ``auto`` (CUDA when it really works, else CPU), ``cpu`` or ``cuda``.
        max_batch: faces per model call.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
        device: str = "auto",
        max_batch: int = 8,
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.exists():
            raise ModelError(
                f"{path}: model not found; make one with 'toon-export onnx --student FILE "
                f"--out {path.name}' or pass --model"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if providers is None:
            if device not in ("auto", "cpu", "cuda"):
                raise ModelError(f"device must be auto, cpu or cuda, got {device!r}")
            want_cuda = device == "cuda" or (device == "auto" and cuda_usable())
            providers = (
                ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if want_cuda
                else ["CPUExecutionProvider"]
            )
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: cannot load model ({error_line(e)[:200]})") from None
        self.providers = self.session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelError("--device cuda: ONNX Runtime's CUDA provider does not work here")
        meta = self.session.get_modelmeta().custom_metadata_map
        version = meta.get("toon.format_version")
        if version not in FORMAT_VERSIONS:
            raise ModelError(
                f"{path}: unknown toon model format version {version!r} (this runtime reads "
                f"{', '.join(sorted(FORMAT_VERSIONS))}); re-export it with this toon-export"
            )
        self.io = meta.get("toon.io")
        if self.io not in IO_KINDS:
            raise ModelError(f"{path}: unknown model io {self.io!r} (expected uint8 or float)")
        self.metadata = dict(meta)
        self.path = path
        self.size = int(meta.get("toon.size", "256"))
        self.align_settings = json.loads(meta.get("toon.align", "{}") or "{}")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.max_batch = max(1, int(max_batch))

    @property
    def device(self) -> str:
        return "cuda" if self.providers and self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def run(self, crops: np.ndarray) -> np.ndarray:
        """Toonify aligned crops: uint8 [N, S, S, 3] (S = ``self.size``) -> uint8 [N, S, S, 3]."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.ndim != 4 or crops.shape[3] < 3 or crops.shape[1:3] != (self.size, self.size):
            raise ValueError(
                f"crops must be uint8 [N, {self.size}, {self.size}, 3], got {crops.shape}"
            )
        crops = np.ascontiguousarray(crops[..., :3], dtype=np.uint8)
        outs = []
        for start in range(0, len(crops), self.max_batch):
            chunk = crops[start : start + self.max_batch]
            if self.io == "uint8":
                out = self.session.run([self.output_name], {self.input_name: chunk})[0]
            else:
                x = chunk.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
                y = self.session.run([self.output_name], {self.input_name: x})[0]
                out = np.clip(np.rint((y + 1) * 127.5), 0, 255).astype(np.uint8)
                out = out.transpose(0, 2, 3, 1)
            outs.append(np.asarray(out, dtype=np.uint8))
        return np.concatenate(outs) if outs else np.zeros([0, self.size, self.size, 3], np.uint8)

    def align_options(self) -> dict[str, Any]:
        """Keyword arguments for ``faces.align.align`` that match the model's training data."""
        opts = {"size": self.size}
        for key in ("transform_size", "enable_padding"):
            if key in self.align_settings:
                opts[key] = self.align_settings[key]
        return opts
