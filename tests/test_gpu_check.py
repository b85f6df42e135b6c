"""``bench/gpu_check.py`` (``make gpu-check``) without a GPU: the one-line refusal, argument
parsing, the JSON writer, the test runner's counts, the time budget, and every benchmark at toy
size on the CPU (``--device cpu --tiny``), so the code paths a GPU machine takes are exercised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu-check: no CUDA GPU found") and "--device cpu --tiny" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()


def test_arguments(capsys):
    args = gpu_check.parse_args([])
    assert args.device == "cuda" and not args.tiny and not args.no_tests
    assert args.only == gpu_check.BENCHMARKS and args.variants == ()
    assert args.out == REPO / "out" / "gpu-check.json"
    assert args.budget_s < 300  # the whole check is to stay under five minutes

    args = gpu_check.parse_args(["--only", "onnx,synthesis", "--variants", "compile"])
    assert args.only == ("onnx", "synthesis") and args.variants == ("compile",)

    for bad, says in [
        (["--only", "synthesis,warp"], "unknown --only name(s) warp"),
        (["--variants", "xla"], "unknown --variants name(s) xla"),
        (["--device", "cpu"], "add --tiny"),
    ]:
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2
        assert says in capsys.readouterr().err


def test_the_report_writer(tmp_path):
    path = tmp_path / "deep" / "er" / "check.json"
    report = {"a": float("nan"), "b": (1, 2.5), "c": {"d": float("inf"), 3: Path("/x")}}
    gpu_check.write_report(path, report)
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2.5], "c": {"d": None, "3": "/x"}}
    gpu_check.write_report(path, {"again": True})  # replaced whole; no temporary file is left
    assert json.loads(path.read_text()) == {"again": True}
    assert [p.name for p in path.parent.iterdir()] == ["check.json"]


def test_the_test_runner_counts_and_names_failures(tmp_path):
    (tmp_path / "test_fake.py").write_text(
        "import pytest\n"
        "@pytest.mark.cuda\n"
        "def test_ok():\n    pass\n"
        "@pytest.mark.cuda\n"
        "def test_bad():\n    assert 1 == 2\n"
        "@pytest.mark.cuda\n"
        "def test_skip():\n    pytest.skip('no')\n"
        "def test_unmarked():\n    assert False\n"
    )
    (tmp_path / "test_other.py").write_text("def test_x():\n    pass\n")
    assert gpu_check.cuda_test_files(tmp_path) == [tmp_path / "test_fake.py"]
    files = gpu_check.cuda_test_files(tmp_path)
    r = gpu_check.run_tests(files, "cuda", 120, tmp_path)
    assert (r["passed"], r["failed"], r["errors"], r["skipped"]) == (1, 1, 0, 1)
    assert r["failures"] == ["test_fake::test_bad"] and r["returncode"] == 1
    assert r["passed_all"] is False

    (tmp_path / "test_fake.py").write_text(
        "import pytest\n@pytest.mark.cuda\ndef test_skip():\n    pytest.skip('no')\n"
    )
    r = gpu_check.run_tests(files, "cuda", 120, tmp_path)
    assert r["returncode"] == 0 and r["skipped"] == 1
    assert r["passed_all"] is False  # on a GPU machine, all skipped means the GPU went unseen
    r = gpu_check.run_tests(files, "cuda", 120, tmp_path, require_pass=False)
    assert r["passed_all"] is True
    assert gpu_check.run_tests([], "cuda", 120, tmp_path)["passed_all"] is False


def test_the_repository_has_cuda_tests():
    files = gpu_check.cuda_test_files()
    assert files and all(f.is_relative_to(REPO / "tests") for f in files)
    assert REPO / "tests" / "test_gpu_check.py" not in files


def test_a_spent_budget_skips_every_benchmark(tmp_path, capsys):
    out = tmp_path / "check.json"
    argv = ["--device", "cpu", "--tiny", "--no-tests", "--budget-s", "-1", "--out", str(out)]
    assert gpu_check.main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["benchmarks"]) == list(gpu_check.BENCHMARKS)
    assert all("time budget" in r["skipped"] for r in report["benchmarks"].values())
    assert report["tests"] == {"not_run": "--no-tests"} and report["passed"] is True
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_every_benchmark_runs_tiny_on_the_cpu(tmp_path):
    """The whole check at toy sizes on the CPU: every figure is there and positive."""
    torch.set_num_threads(1)
    out = tmp_path / "check.json"
    argv = ["--device", "cpu", "--tiny", "--out", str(out), "--variants", "channels_last"]
    rc = gpu_check.main(argv)
    report = json.loads(out.read_text())
    b = report["benchmarks"]
    assert rc == 0, {k: v.get("error") for k, v in b.items()}
    assert report["passed"] is True and report["failed_benchmarks"] == []
    assert report["tests"]["returncode"] == 0 and report["tests"]["failed"] == 0
    assert b["finetune"]["batch"] == 8 and b["finetune"]["augpipe"] == "bgc"
    assert b["finetune"]["sec_per_kimg"] > 0 and b["finetune"]["steps"] == 2
    syn = {(c["batch"], c["precision"]) for c in b["synthesis"]["cases"]}
    assert syn == {(1, "fp32"), (4, "fp32")}
    assert b["synthesis"]["channels_last"]["images_per_s"] > 0
    proj = [(c["loss"], c["batch"]) for c in b["projection"]["cases"]]
    assert proj == [("pixel", 1), ("pixel", 2), ("vgg16_shaped", 1)]
    assert all(c["ms_per_step"] > 0 and c["steps_timed"] == 2 for c in b["projection"]["cases"])
    assert b["pairs"]["count"] == 8 and b["pairs"]["pairs_per_s"] > 0
    assert b["student"]["images_per_s"] > 0 and b["student"]["batch"] == 4
    onnx = [(c["precision"], c["batch"], c["provider"]) for c in b["onnx"]["cases"]]
    cpu = "CPUExecutionProvider"
    assert onnx == [("fp32", 1, cpu), ("fp32", 2, cpu), ("fp16", 1, cpu), ("fp16", 2, cpu)]
    assert all(c["ms_median"] > 0 for c in b["onnx"]["cases"])
