"""Weight files: the strict state check shared by the teacher's and the student's readers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def state_mismatch(expected: Mapping[str, Any], state: Mapping[str, Any]) -> str | None:
    """Why ``state`` cannot be loaded strictly into a module whose state dict is ``expected``
    (missing or unexpected names, or a shape that differs), or None when it can."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        return (
            f"state does not match its arch: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''}"
        )
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            return (
                f"tensor {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}"
            )
    return None
