"""Run every benchmark at CPU-friendly settings; write ``bench/results.json`` and
``bench/results.md``.

Each script prints one JSON object; this collects them under the script's name (a failing
script is recorded with its error and the others still run). Figures depend on the machine:
compare ratios, not absolute times, across machines.

    python bench/run_all.py [--only infer,student]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# script -> extra arguments that keep a CPU run short
SCRIPTS: dict[str, list[str]] = {
    "teacher_synthesis": ["--min-seconds", "2"],
    "finetune": ["--ticks", "2"],
    "project": ["--steps", "3"],
    "encoder": ["--repeats", "2"],
    "align": [],
    "synthetic": [],
    "pairs": [],
    "student": [],
    "infer": [],
    "serve": [],
    "video": [],
}


def _rows(name: str, result: dict) -> list[str]:
    """A few headline figures per benchmark for the Markdown table."""
    if "error" in result:
        return [f"| {name} | error | {result['error'][:80]} |"]
    flat: list[tuple[str, object]] = []

    def walk(prefix: str, obj: object, depth: int = 0) -> None:
        if isinstance(obj, dict) and depth < 3:
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        elif isinstance(obj, list) and depth < 3:
            for i, v in enumerate(obj):
                walk(f"{prefix}[{i}]", v, depth + 1)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            flat.append((prefix, obj))

    walk("", result)
    keys = ("per_s", "_ms", "sec_per", "ratio", "_s", "rss", "gain", "p50", "p99", "macs")
    picked = [(k, v) for k, v in flat if any(t in k for t in keys)][:12]
    return [f"| {name} | {k} | {v} |" for k, v in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default=None, help="comma list of benchmark names")
    args = ap.parse_args()
    names = list(SCRIPTS) if not args.only else [n for n in args.only.split(",") if n]
    results: dict[str, dict] = {}
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *SCRIPTS.get(name, [])]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        try:
            start = r.stdout.index("{")
            results[name] = json.loads(r.stdout[start:])
        except ValueError:
            err = (r.stderr.strip().splitlines() or ["no output"])[-1]
            results[name] = {"error": err, "returncode": r.returncode}
        results[name]["_wall_s"] = round(time.time() - t, 1)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (HERE / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = ["| benchmark | figure | value |", "| --- | --- | --- |"]
    for name, result in results.items():
        lines += _rows(name, result)
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
