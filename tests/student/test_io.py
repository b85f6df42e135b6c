"""Student model files: round trip, metadata, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from student.io import StudentFileError, load_student, read_student, save_student, student_summary
from student.networks import build_generator, generator_arch
from tests.conftest import tiny_generator


def _student(tmp_path, name="s.safetensors"):
    arch = generator_arch("tiny")
    G = build_generator(arch)
    with torch.no_grad():
        G.train()
        G(torch.rand([4, 3, 32, 32]) * 2 - 1)  # non-default batch-norm statistics
    source = {"pairs_manifest_sha256": "ab" * 32, "teachers": {"base": {"file": "b.pkl"}}}
    training = {"resolution": 32, "kimg": 1.0, "holdout_percent": 5.0}
    path = save_student(G, arch, tmp_path / name, source, training)
    return G.eval(), arch, path


def test_round_trip_keeps_weights_statistics_and_metadata(tmp_path) -> None:
    G, arch, path = _student(tmp_path)
    H = load_student(path)
    assert not H.training
    x = torch.rand([2, 3, 32, 32]) * 2 - 1
    with torch.no_grad():
        assert torch.equal(G(x), H(x))
    sf = read_student(path)
    assert sf.arch == arch
    assert sf.info["kind"] == "student.generator" and sf.info["format_version"] == 1
    assert sf.source["pairs_manifest_sha256"] == "ab" * 32
    assert sf.training["resolution"] == 32
    info = student_summary(path)
    assert info["stride"] == 8 and info["parameters"] > 0 and len(info["sha256"]) == 64
    assert not list(tmp_path.glob(".*.tmp"))


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_errors_are_one_clear_line(tmp_path) -> None:
    with pytest.raises(StudentFileError, match="file not found") as e:
        load_student(tmp_path / "missing.safetensors")
    _one_line(e)
    with pytest.raises(StudentFileError, match="is a directory"):
        load_student(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(StudentFileError, match="not a safetensors file") as e:
        load_student(junk)
    _one_line(e)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(StudentFileError, match="no 'toon' metadata"):
        load_student(bare)

    from teacher.io import save_network

    teacher_file = save_network(tiny_generator(), tmp_path / "teacher.safetensors")
    with pytest.raises(StudentFileError, match="holds a 'teacher.generator', not a student") as e:
        load_student(teacher_file)
    _one_line(e)

    G, arch, path = _student(tmp_path)
    state = {k: v.contiguous() for k, v in G.state_dict().items()}
    meta = {"format_version": 2, "kind": "student.generator", "arch": arch}
    future = tmp_path / "future.safetensors"
    save_file(state, str(future), metadata={"toon": json.dumps(meta)})
    with pytest.raises(StudentFileError, match="unsupported student format version 2"):
        load_student(future)
    meta["format_version"] = 1
    meta["arch"] = dict(arch, mid_blocks=5)
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, str(wrong), metadata={"toon": json.dumps(meta)})
    with pytest.raises(StudentFileError, match="state does not match its arch") as e:
        load_student(wrong)
    _one_line(e)
