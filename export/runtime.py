"""The torch-free runtime: run an exported toon model with ONNX Runtime.

Models are the files ``toon-export onnx`` writes. Their ``metadata_props`` carry ``toon.*``
keys; the runtime reads ``toon.format_version`` (must be one it knows), ``toon.io``
(``uint8``: input ``image`` uint8 [N, H, W, 3] RGB, output ``toon`` the same; ``float``: float32
NCHW in [-1, 1] both ways), ``toon.size`` and ``toon.align`` (the face alignment the model
expects, JSON). Every value read is validated (a forged or damaged file gives a one-line
:class:`ModelError`, never a traceback): ``toon.size`` a decimal integer in
[:data:`MIN_SIZE`, :data:`MAX_SIZE`] that agrees with the graph's input and output shapes,
``toon.align`` a JSON object whose ``recipe`` is ``ffhq``, ``size`` (if given) equals
``toon.size``, ``transform_size`` an integer in [``toon.size``, 16384] or null and
``enable_padding`` a boolean. The graph must have one input of the io's dtype and rank 4.

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
IO_DTYPES = {"uint8": "tensor(uint8)", "float": "tensor(float)"}
MIN_SIZE, MAX_SIZE = 8, 4096  # toon.size range (the crop side the model takes)
MAX_TRANSFORM_SIZE = 16384  # toon.align transform_size upper bound (NVIDIA's FFHQ: 4096)
MAX_THREADS = 1024
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

        if threads is not None and (
            not isinstance(threads, int)
            or isinstance(threads, bool)
            or not 0 <= threads <= MAX_THREADS
        ):
            raise ValueError(f"threads must be an integer in 0..{MAX_THREADS}, got {threads!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer of at least 1, got {max_batch!r}")
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
        self.size = _read_size(path, meta.get("toon.size"))
        self.align_settings = _read_align(path, meta.get("toon.align"), self.size)
        self.input_name, self.output_name = _check_graph(path, self.session, self.io, self.size)
        self.max_batch = max_batch

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
            x = chunk
            if self.io == "float":
                x = chunk.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
            try:
                y = self.session.run([self.output_name], {self.input_name: x})[0]
            except Exception as e:  # onnxruntime raises its own exception types
                raise ModelError(f"{self.path}: the model failed ({error_line(e)[:200]})") from None
            y = np.asarray(y)
            if self.io == "uint8" and y.dtype != np.uint8:
                raise ModelError(f"{self.path}: toon.io is uint8 but the model returned {y.dtype}")
            if self.io == "float":
                if y.shape[1:2] == (3,):
                    y = y.transpose(0, 2, 3, 1)
                y = np.clip(np.rint((np.nan_to_num(y.astype(np.float32)) + 1) * 127.5), 0, 255)
            want = (len(chunk), self.size, self.size, 3)
            if y.shape != want:
                raise ModelError(
                    f"{self.path}: the model returned shape {list(y.shape)} for {len(chunk)} "
                    f"crops, expected {list(want)} (a damaged or foreign model)"
                )
            outs.append(y.astype(np.uint8, copy=False))
        return np.concatenate(outs) if outs else np.zeros([0, self.size, self.size, 3], np.uint8)

    def align_options(self) -> dict[str, Any]:
        """Keyword arguments for ``faces.align.align`` that match the model's training data."""
        opts = {"size": self.size}
        for key in ("transform_size", "enable_padding"):
            if key in self.align_settings:
                opts[key] = self.align_settings[key]
        return opts


def _read_size(path: Path, value: str | None) -> int:
    """``toon.size``: a decimal integer in [MIN_SIZE, MAX_SIZE]."""
    if value is None:
        raise ModelError(f"{path}: no toon.size in the model metadata; re-export it")
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise ModelError(f"{path}: toon.size {value[:40]!r} is not an integer; re-export it")
    size = int(text)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ModelError(f"{path}: toon.size {size} is outside {MIN_SIZE}..{MAX_SIZE}")
    return size


def _read_align(path: Path, value: str | None, size: int) -> dict[str, Any]:
    """``toon.align``: the JSON alignment settings, checked key by key."""
    if value is None or not value.strip():
        return {}
    try:
        settings = json.loads(value)
    except (ValueError, RecursionError):
        raise ModelError(f"{path}: toon.align is not valid JSON; re-export it") from None
    if not isinstance(settings, dict):
        raise ModelError(f"{path}: toon.align must be a JSON object; re-export it")
    recipe = settings.get("recipe", "ffhq")
    if recipe != "ffhq":
        raise ModelError(f"{path}: toon.align recipe {str(recipe)[:40]!r} unknown (ffhq only)")
    if "size" in settings and (type(settings["size"]) is not int or settings["size"] != size):
        raise ModelError(
            f"{path}: toon.align size {str(settings['size'])[:40]!r} differs from toon.size {size}"
        )
    t = settings.get("transform_size")
    if t is not None and (type(t) is not int or not size <= t <= MAX_TRANSFORM_SIZE):
        raise ModelError(
            f"{path}: toon.align transform_size {str(t)[:40]!r} must be an integer in "
            f"{size}..{MAX_TRANSFORM_SIZE} or null"
        )
    if "enable_padding" in settings and type(settings["enable_padding"]) is not bool:
        raise ModelError(f"{path}: toon.align enable_padding must be true or false")
    return settings


def _check_graph(path: Path, session: Any, io: str, size: int) -> tuple[str, str]:
    """The graph takes one rank-4 input of the io's dtype whose fixed dimensions agree with
    ``size``; returns the input and first output names."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        raise ModelError(
            f"{path}: expected a model with one input and an output, got {len(inputs)} "
            f"inputs and {len(outputs)} outputs"
        )
    inp = inputs[0]
    if inp.type != IO_DTYPES[io]:
        raise ModelError(f"{path}: toon.io is {io} but the model's input is {inp.type}")
    shape = list(inp.shape) if inp.shape is not None else []
    if len(shape) != 4:
        raise ModelError(f"{path}: the model's input has rank {len(shape)}, expected 4")
    spatial = shape[1:3] if io == "uint8" else shape[2:4]
    channels = shape[3] if io == "uint8" else shape[1]
    if any(isinstance(d, int) and d != size for d in spatial) or (
        isinstance(channels, int) and channels != 3
    ):
        raise ModelError(
            f"{path}: the model's input shape {shape} does not match toon.size {size} "
            f"({'[N, S, S, 3]' if io == 'uint8' else '[N, 3, S, S]'}); re-export it"
        )
    return inp.name, outputs[0].name
