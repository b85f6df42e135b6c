"""``toon-pairs``: align faces, prepare datasets, generate training pairs (not built yet)."""

from __future__ import annotations

import sys

PROG = "toon-pairs"
WHAT = "will align faces, prepare datasets and generate (photo, game-style) pairs as shards"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-pairs``; says the command is not built yet and returns 2."""
    print(f"{PROG}: not built yet ({WHAT})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
