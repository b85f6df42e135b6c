"""Runs: device choice, distributed set-up, progress, run directories and resume state (torch).

Shared by the teacher's and the student's training loops (and by every command that takes
``--device``), so both behave the same way: ``auto`` picks CUDA when present; ``torchrun`` sets the
process group up (NCCL on CUDA, gloo on CPU); a run directory starts with ``config.json`` and the
same command in the same directory resumes from ``resume-state.pt``.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from common.cli import ToonError, error_line
from common.files import atomic_write

RESUME_FILE = "resume-state.pt"


class TrainError(ToonError):
    """A training run cannot start or continue (one-line message)."""


# ---------------------------------------------------------------------------------------------
# Devices and process groups


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``/``cuda``/``cuda:N`` as given.

    Raises ``ValueError`` for an unknown name or a CUDA device on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return dev


@dataclass
class DistInfo:
    """Process group facts (a single process when ``world == 1``)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_distributed() -> DistInfo:
    """Read torchrun's environment; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # Tear the group down before interpreter exit: a process group left to die with the
        # interpreter can abort in its communication threads ("terminate called without an
        # active exception").
        atexit.register(_destroy_process_group)
    return DistInfo(rank=rank, world=world, device=device)


def all_reduce_(tensors: list[torch.Tensor], world: int, mean: bool = False) -> None:
    """Sum (or average) each tensor over the processes in place, with one all_reduce for all.
    A no-op for a single process."""
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(flat)
    if mean:
        flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


# ---------------------------------------------------------------------------------------------
# Progress and naming


class KimgBar:
    """A tqdm bar in kimg that counts whole images, so it can land exactly on its total.

    Loops report the image counter itself (:meth:`update_to`), not increments: the count is
    clamped to ``[initial, total]``, so a last batch that passes the total (``kimg`` not a
    multiple of the batch) or float rounding never pushes the bar past 100% (tqdm's
    "clamping frac" warning and a negative time remaining).
    """

    def __init__(self, total_nimg: int, cur_nimg: int, desc: str) -> None:
        from tqdm import tqdm

        self.total = max(int(total_nimg), 0)
        self._bar = tqdm(
            total=self.total,
            initial=min(max(int(cur_nimg), 0), self.total),
            unit="kimg",
            unit_scale=1 / 1000,  # counts images, shows kimg
            desc=desc,
            bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}]",
        )

    @property
    def n(self) -> int:
        """Images counted so far (at most ``total``)."""
        return int(self._bar.n)

    def update_to(self, cur_nimg: int) -> None:
        """Show ``cur_nimg`` images done (clamped to the total); never moves backwards."""
        target = min(int(cur_nimg), self.total)
        if target > self._bar.n:
            self._bar.update(target - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def kimg_bar(total_nimg: int, cur_nimg: int, desc: str) -> KimgBar:
    """A progress bar counting thousands of images (kimg), starting at ``cur_nimg``; advance it
    with ``bar.update_to(cur_nimg)``."""
    return KimgBar(total_nimg, cur_nimg, desc)


def snapshot_tag(nimg: int) -> str:
    """``000040`` for 40 kimg (NVIDIA's naming); ``000000.064`` for fractional kimg."""
    return f"{nimg // 1000:06d}" if nimg % 1000 == 0 else f"{nimg / 1000:010.3f}"


# ---------------------------------------------------------------------------------------------
# Run directories and resume state


def prepare_run_dir(outdir: str | os.PathLike, config_json: str, free: Iterable[str] = ()) -> bool:
    """Create the run dir and write ``config.json``; return True when resuming.

    An existing run dir must hold the same config except for the keys in ``free`` (``kimg``, to
    extend a run, for example): a different one is refused rather than mixed.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        new = json.loads(config_json)
        free = set(free)
        diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
        if diff:
            raise TrainError(
                f"{out} holds a run with a different config ({', '.join(diff)}); "
                "use a new --outdir or the same settings to resume"
            )
    atomic_write(cfg_path, lambda tmp: tmp.write_text(config_json))
    return (out / RESUME_FILE).exists()


def save_resume_state(
    path: str | os.PathLike,
    counters: Mapping[str, int | float],
    stateful: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a resume file: ``counters``, the ``state_dict()`` of each object in ``stateful``
    (networks, optimizers, grad scalers) under its name, ``extra`` values as they are, and the
    torch (and CUDA) RNG states. Atomic, so a kill never leaves a broken resume file."""
    blob: dict[str, Any] = {
        "counters": {k: float(v) if isinstance(v, float) else int(v) for k, v in counters.items()},
    }
    blob.update({name: obj.state_dict() for name, obj in stateful.items()})
    blob.update(extra or {})
    blob["torch_rng"] = torch.get_rng_state()
    blob["cuda_rng"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_resume_state(
    path: str | os.PathLike, stateful: Mapping[str, Any], optional: Iterable[str] = ()
) -> dict[str, Any]:
    """Restore each object in ``stateful`` from a file of :func:`save_resume_state`, and the
    torch RNG states; returns the whole blob (``blob["counters"]``, the extras).

    Names in ``optional`` may be missing or empty in the file. A file that does not match raises
    :class:`TrainError` naming it.
    """
    optional = set(optional)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        for name, obj in stateful.items():
            if name in optional and not blob.get(name):
                continue
            obj.load_state_dict(blob[name])
    except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise TrainError(
            f"{path}: cannot resume ({error_line(e)}); delete it to restart the run"
        ) from None
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return blob
