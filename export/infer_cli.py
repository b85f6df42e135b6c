"""``toon-infer``: toonify photos with the ONNX model (not built yet)."""

from __future__ import annotations

import sys

PROG = "toon-infer"
WHAT = "will toonify photos with the exported ONNX model, no PyTorch needed"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-infer``; says the command is not built yet and returns 2."""
    print(f"{PROG}: not built yet ({WHAT})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
