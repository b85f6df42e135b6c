"""The package layout holds: imports run one way, and the runtime side never imports torch.

The rules are DESIGN.md's package table: common <- faces <- teacher <- pairs <- student <- export,
read from every import statement in the source (module level and inside functions).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import run_fresh_python

REPO = Path(__file__).resolve().parents[1]

# Each package, in dependency order, with the project packages it may import.
ALLOWED = {
    "common": set(),
    "faces": {"common"},
    "teacher": {"common", "faces"},
    "pairs": {"common", "faces", "teacher"},
    "student": {"common", "pairs", "teacher"},
    "export": {"common", "faces", "pairs", "student"},
}
# Narrower rules inside an allowed arrow: the student takes only the metrics from the teacher,
# and export takes only the shard reader from pairs (int8 calibration).
ONLY = {
    ("student", "teacher"): {"teacher.metrics"},
    ("export", "pairs"): {"pairs.shards"},
}
PROJECT = set(ALLOWED) | {"demo", "bench", "tests"}

# Modules that must load without torch (a service installs the runtime side alone).
TORCH_FREE = [
    "common.cli",
    "common.files",
    "common.images",
    "common.workers",
    "faces.align",
    "faces.detect",
    "faces.image",
    "faces.warp",
    "pairs.cli",
    "export.runtime",
    "export.infer_cli",
    "export.serve_cli",
    "export.serve",
    "export.serve_api",
    "export.serve_codecs",
    "export.serve_config",
    "export.serve_middleware",
    "export.serve_net",
    "export.serve_service",
    "export.tracking",
    "export.video",
    "export.video_io",
    "export.video_paste",
]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name imported by a file, with its line number."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return names


def _violations() -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            seen = set()
            for line, name in _imports(path):
                top = name.split(".")[0]
                if top not in PROJECT or top == package or (line, top) in seen:
                    continue
                module = ".".join(name.split(".")[:2])
                only = ONLY.get((package, top))
                if top not in allowed:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
                elif only is not None and module not in only and name not in only:
                    # ``from teacher import metrics`` names the module as the second part too
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
                seen.add((line, top))
    return bad


def test_imports_run_one_way() -> None:
    assert _violations() == []


def test_the_rule_catches_a_backwards_import(tmp_path: Path, monkeypatch) -> None:
    """The checker itself sees a backwards arrow (so the test above can fail)."""
    fake = tmp_path / "faces"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from teacher.io import load_generator\n")
    for package in ALLOWED:
        if package != "faces":
            (tmp_path / package).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _violations() == ["faces/bad.py:2 imports teacher.io"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_package_has_a_docstring(package: str) -> None:
    init = REPO / package / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_runtime_side_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    __import__(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert 'torch' not in sys.modules, loaded\n"
        "print('ok')\n"
    )
    assert run_fresh_python(code) == "ok"
