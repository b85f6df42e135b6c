"""``toon-student``: train and evaluate the lightweight student generator (not built yet)."""

from __future__ import annotations

import sys

PROG = "toon-student"
WHAT = "will train the lightweight pix2pix student on the pairs and evaluate it against the teacher"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-student``; says the command is not built yet and returns 2."""
    print(f"{PROG}: not built yet ({WHAT})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
