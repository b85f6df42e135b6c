"""Stub entry points of stages not built yet: one clear line, exit status 2, no torch import."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STUBS = [
    ("student.cli", "toon-student"),
]

TORCH_FREE = [
    "pairs",
    "export",
    "pairs.cli",
    "pairs.align",
    "export.runtime",
    "export.infer_cli",
    "export.serve_cli",
    "export.serve",
    "export.serve_batch",
    "export.serve_metrics",
]


@pytest.mark.parametrize(("module", "prog"), STUBS)
def test_stub_says_not_built_and_exits_2(
    module: str, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(module).main
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{prog}: ")
    assert "not built yet" in lines[0]


def test_runtime_side_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    __import__(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert 'torch' not in sys.modules, loaded\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
