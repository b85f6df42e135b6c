"""``toon-export``: export the student to ONNX and verify it (not built yet)."""

from __future__ import annotations

import sys

PROG = "toon-export"
WHAT = "will export the student to ONNX (fp32, fp16, int8) and verify it against PyTorch"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-export``; says the command is not built yet and returns 2."""
    print(f"{PROG}: not built yet ({WHAT})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
