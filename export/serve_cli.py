"""``toon-serve``: serve the ONNX model over HTTP (not built yet)."""

from __future__ import annotations

import sys

PROG = "toon-serve"
WHAT = "will serve the exported ONNX model as a stateless HTTP service"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-serve``; says the command is not built yet and returns 2."""
    print(f"{PROG}: not built yet ({WHAT})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
