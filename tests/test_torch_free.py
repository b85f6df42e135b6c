"""The runtime side (alignment, ONNX runtime, toon-infer, toon-serve) never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

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
