"""ONNX export of a student generator, with pre/post-processing and metadata inside the model.

The exported graph (opset 17, one self-contained file, dynamic batch):

- ``io="uint8"`` (default): input ``image`` uint8 [N, S, S, 3] RGB, output ``toon`` uint8
  [N, S, S, 3]; the graph converts to float NCHW in [-1, 1], runs the student, maps back with
  ``round(clamp((y + 1) * 127.5, 0, 255))``.
- ``io="float"``: input ``image`` float32 [N, 3, S, S] in [-1, 1], output ``toon`` the same.

Batch norms are folded into their convolutions first (``student.networks.fold_batch_norm``).
Precision variants: ``fp16`` (every float tensor of the graph in float16, for GPUs; the io stays
as above) and ``int8`` (static QDQ quantization of the convolutions, calibrated on pair inputs).

``metadata_props`` keys: ``toon.format_version``, ``toon.io``, ``toon.size``, ``toon.align``
(JSON: the face alignment the model expects), ``toon.precision``, ``toon.preset``,
``toon.student_sha256``, ``toon.teachers`` (JSON), ``toon.pairs_manifest_sha256``,
``toon.exporter``.

Every export is verified before it is moved to its final name (:func:`verify_model`): the ONNX
checker, then ONNX Runtime against PyTorch on sample inputs (fp32: float io max |diff| <= 1e-4,
uint8 io <= 1 level); fp16 and int8 variants must reach ``MIN_PSNR`` dB against the fp32 torch
output or the export is refused.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from common.cli import ToonError
from common.files import atomic_write, file_sha256
from student.io import read_student
from student.networks import fold_batch_norm

FORMAT_VERSION = "1"
FLOAT_ATOL = 1e-4
UINT8_ATOL = 1
MIN_PSNR = {"fp16": 40.0, "int8": 28.0}


class ExportError(ToonError):
    """Export or verification failed (one-line message)."""


class UInt8Model(nn.Module):
    """uint8 NHWC RGB in and out around a [-1, 1] NCHW generator."""

    def __init__(self, G: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.G = G
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0
        y = self.G(x)
        y = torch.clamp((y.float() + 1.0) * 127.5, 0.0, 255.0).round()
        return y.to(torch.uint8).permute(0, 2, 3, 1)


class FloatModel(nn.Module):
    """float32 NCHW in [-1, 1] in and out (the generator's own convention)."""

    def __init__(self, G: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.G = G
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.G(image.to(self.dtype)).float()


@dataclass
class ExportReport:
    """What an export produced and how it verified."""

    path: str
    io: str
    size: int
    precision: str
    checks: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "io": self.io,
            "size": self.size,
            "precision": self.precision,
            "checks": self.checks,
        }


def _sample_inputs(size: int, batch: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (sums of blurred noise), [batch, size, size, 3]."""
    rs = np.random.RandomState(seed)
    base = rs.rand(batch, max(size // 8, 1), max(size // 8, 1), 3).astype(np.float32)
    up = np.kron(base, np.ones((1, 8, 8, 1), dtype=np.float32))[:, :size, :size]
    noise = rs.rand(batch, size, size, 3).astype(np.float32) * 0.2
    return np.clip((up * 0.8 + noise) * 255, 0, 255).astype(np.uint8)


def _torch_reference(G: nn.Module, images: np.ndarray) -> np.ndarray:
    """float [-1, 1] NCHW output of the (fp32) generator for uint8 NHWC images."""
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        return G(x).numpy()


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify_model(
    path: str | os.PathLike,
    G: nn.Module,
    batches: tuple[int, ...] = (1, 3),
    calib: np.ndarray | None = None,
) -> dict[str, Any]:
    """Check an exported model against the torch generator ``G`` (fp32, eval).

    Returns the figures; raises :class:`ExportError` when a check fails.
    """
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError and friends
        raise ExportError(f"{path}: ONNX checker failed: {str(e).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    io, size, precision = (
        meta.get("toon.io"),
        int(meta.get("toon.size", "0")),
        meta.get("toon.precision", "fp32"),
    )
    sess = _session(path)
    G = fold_batch_norm(G).eval().float()
    report: dict[str, Any] = {"checker": "ok", "io": io, "precision": precision, "batches": {}}
    for b in batches:
        images = _sample_inputs(size, b, seed=b) if calib is None else calib[:b]
        ref = _torch_reference(G, images)
        if io == "uint8":
            got = sess.run(None, {"image": images})[0]
            if got.dtype != np.uint8 or got.shape != images.shape:
                raise ExportError(
                    f"{path}: output is {got.dtype} {got.shape}, expected uint8 {images.shape}"
                )
            ref_u8 = np.clip(np.rint((ref + 1) * 127.5), 0, 255).astype(np.uint8)
            ref_u8 = ref_u8.transpose(0, 2, 3, 1)
            diff = int(np.abs(got.astype(np.int16) - ref_u8.astype(np.int16)).max())
            psnr = _psnr(got, ref_u8, 255.0)
            entry = {"max_abs_diff_levels": diff, "psnr_db": round(psnr, 2)}
            ok = diff <= UINT8_ATOL if precision == "fp32" else psnr >= MIN_PSNR[precision]
        else:
            x = images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
            got = sess.run(None, {"image": x})[0]
            diff = float(np.abs(got - ref).max())
            psnr = _psnr(got, ref, 2.0)
            entry = {"max_abs_diff": diff, "psnr_db": round(psnr, 2)}
            ok = diff <= FLOAT_ATOL if precision == "fp32" else psnr >= MIN_PSNR[precision]
        report["batches"][str(b)] = entry
        if not ok:
            limit = (
                f"max diff {UINT8_ATOL if io == 'uint8' else FLOAT_ATOL}"
                if precision == "fp32"
                else f"PSNR {MIN_PSNR[precision]} dB"
            )
            raise ExportError(
                f"{path}: ONNX Runtime output differs from torch at batch {b} "
                f"({entry}); limit {limit}"
            )
    return report


def _metadata(student_path: Path, sf, io: str, size: int, precision: str) -> dict[str, str]:
    source = sf.source
    return {
        "toon.format_version": FORMAT_VERSION,
        "toon.io": io,
        "toon.size": str(size),
        "toon.align": json.dumps({"recipe": "ffhq", "size": size}),
        "toon.precision": precision,
        "toon.preset": str(sf.arch.get("preset", "")),
        "toon.student_sha256": file_sha256(student_path),
        "toon.student_file": student_path.name,
        "toon.teachers": json.dumps(source.get("teachers", {}), sort_keys=True),
        "toon.pairs_manifest_sha256": str(source.get("pairs_manifest_sha256", "")),
        "toon.exporter": "toon-export 1",
    }


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` with ``metadata``."""
    del model.metadata_props[:]
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)


def _convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float32 initializer and intermediate in float16, io unchanged (Casts at the ends)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    # Resize's roi and scales inputs must stay float32.
    keep = {
        n.input[i] for n in graph.node if n.op_type == "Resize" for i in (1, 2) if i < len(n.input)
    }
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in graph.node:
        if node.op_type == "Constant" and set(node.output) & keep:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT and node.op_type == "Cast":
                attr.i = TensorProto.FLOAT16
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(attr.t).astype(np.float16)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
    # Float inputs/outputs keep float32 at the boundary.
    new_nodes = []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            cast_name = inp.name + "_fp16"
            new_nodes.append(
                helper.make_node("Cast", [inp.name], [cast_name], to=TensorProto.FLOAT16)
            )
            for node in graph.node:
                for i, name in enumerate(node.input):
                    if name == inp.name:
                        node.input[i] = cast_name
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            src = out.name + "_fp16"
            for node in graph.node:
                for i, name in enumerate(node.output):
                    if name == out.name:
                        node.output[i] = src
            graph.node.append(helper.make_node("Cast", [src], [out.name], to=TensorProto.FLOAT))
    for n in reversed(new_nodes):
        graph.node.insert(0, n)
    del graph.value_info[:]
    return model


def _quantize_int8(src: Path, dst: Path, calib: np.ndarray, io: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            feeds = []
            for img in calib:
                x = img[None]
                if io == "float":
                    x = x.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
                feeds.append({"image": x})
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice per tensor at WARNING
    try:
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
        )
    finally:
        root.setLevel(level)


def load_calibration(pairs_dir: str | os.PathLike, size: int, count: int = 64) -> np.ndarray:
    """Input images (``src``) of a pairs dataset for int8 calibration, resized to ``size``."""
    from PIL import Image

    from pairs.shards import iter_pairs

    out = []
    for _key, src, _dst, _meta in iter_pairs(pairs_dir):
        if src.shape[0] != size:
            src = np.asarray(Image.fromarray(src).resize((size, size), Image.LANCZOS))
        out.append(src[:, :, :3])
        if len(out) >= count:
            break
    if not out:
        raise ExportError(f"{pairs_dir}: no pairs to calibrate int8 with")
    return np.stack(out)


def export_onnx(
    student: str | os.PathLike,
    out: str | os.PathLike,
    io: str = "uint8",
    size: int | None = None,
    precision: str = "fp32",
    calib_dir: str | None = None,
    opset: int = 17,
    calib_images: np.ndarray | None = None,
) -> ExportReport:
    """Export, verify, then atomically write ``out``. See the module docstring."""
    if io not in ("uint8", "float"):
        raise ExportError(f"io must be uint8 or float, got {io!r}")
    if precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; use 17 or newer")
    student = Path(student)
    out = Path(out)
    sf = read_student(student)
    G = sf.build().float().eval()
    size = int(size or sf.training.get("resolution") or 256)
    stride = int(getattr(G, "stride", 1))
    if size % stride:
        raise ExportError(f"size {size} is not a multiple of the student's stride {stride}")
    calib = calib_images
    if precision == "int8" and calib is None:
        if not calib_dir:
            raise ExportError("--int8 needs --calib PAIRS_DIR (pair inputs to calibrate with)")
        calib = load_calibration(calib_dir, size)

    folded = fold_batch_norm(G).eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    wrapper = (UInt8Model if io == "uint8" else FloatModel)(folded).eval()
    example = (
        torch.from_numpy(_sample_inputs(size, 2))
        if io == "uint8"
        else torch.zeros(2, 3, size, size)
    )
    metadata = _metadata(student, sf, io, size, precision)
    checks: dict[str, Any] = {}

    def write(final_tmp: Path) -> None:
        # The exporter and the quantizer write their intermediate files in a scratch folder
        # beside ``out``; the finished model is verified under its temporary name.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmpdir:
            tmp = Path(tmpdir) / "model.onnx"
            with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=["image"],
                    output_names=["toon"],
                    dynamic_axes={"image": {0: "batch"}, "toon": {0: "batch"}},
                )
            model = onnx.load(str(tmp))
            if dtype == torch.float16:
                model = _convert_fp16(model)
            _set_metadata(model, metadata)
            if precision == "int8":
                onnx.save(model, str(tmp))
                qtmp = Path(tmpdir) / "model.int8.onnx"
                _quantize_int8(tmp, qtmp, calib, io)
                model = onnx.load(str(qtmp))
                _set_metadata(model, metadata)
            if any(Path(tmpdir).glob("*.data")):
                raise ExportError("export wrote external data; expected one self-contained file")
        onnx.save(model, str(final_tmp))
        checks.update(verify_model(final_tmp, G, calib=None))

    atomic_write(out, write)
    return ExportReport(path=str(out), io=io, size=size, precision=precision, checks=checks)
