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
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from common.cli import ToonError, error_line
from common.files import atomic_write, atomic_write_text

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

    After the bar it shows the speed of this call (s/kimg, images/s, the time left), the peak memory
    (``peak``: a callable returning bytes, with its ``peak_label``) and, via :meth:`note`, what
    the current step is doing, so a step of minutes still shows the clock moving.
    """

    def __init__(
        self,
        total_nimg: int,
        cur_nimg: int,
        desc: str,
        peak: Callable[[], int] | None = None,
        peak_label: str = "",
    ) -> None:
        from tqdm import tqdm

        self.total = max(int(total_nimg), 0)
        self._start_n = min(max(int(cur_nimg), 0), self.total)
        self._start_t = time.monotonic()
        self._peak = peak
        self._peak_label = peak_label
        self._figures = ""
        self._bar = tqdm(
            total=self.total,
            initial=self._start_n,
            unit="kimg",
            unit_scale=1 / 1000,  # counts images, shows kimg
            desc=desc,
            bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}{postfix}]",
        )

    @property
    def n(self) -> int:
        """Images counted so far (at most ``total``)."""
        return int(self._bar.n)

    def speed(self) -> tuple[float, float] | None:
        """(seconds per kimg, images per second) of this call so far; None before an image."""
        done = self._bar.n - self._start_n
        if done <= 0:
            return None
        elapsed = max(time.monotonic() - self._start_t, 1e-9)
        return elapsed / (done / 1000), done / elapsed

    def _postfix(self, note: str = "") -> None:
        parts = [note] if note else []
        if self._figures:
            parts.append(self._figures)
        if self._peak is not None:
            parts.append(f"peak {format_bytes(self._peak())}{self._peak_label}")
        self._bar.set_postfix_str(", ".join(parts), refresh=True)

    def update_to(self, cur_nimg: int) -> None:
        """Show ``cur_nimg`` images done (clamped to the total); never moves backwards."""
        target = min(int(cur_nimg), self.total)
        if target > self._bar.n:
            self._bar.update(target - self._bar.n)
            speed = self.speed()
            if speed is not None:
                eta = _clock((self.total - self._bar.n) / speed[1])
                self._figures = f"{speed[0]:.4g} s/kimg, {speed[1]:.3g} img/s, ETA {eta}"
        self._postfix()

    def note(self, text: str) -> None:
        """Show what the current step is doing (``G pass 2/8``) and refresh the clock."""
        self._postfix(text)

    def close(self) -> None:
        self._bar.close()


def _clock(seconds: float) -> str:
    """``1:02:03`` / ``02:03`` (never negative)."""
    s = max(int(round(seconds)), 0)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def kimg_bar(
    total_nimg: int,
    cur_nimg: int,
    desc: str,
    peak: Callable[[], int] | None = None,
    peak_label: str = "",
) -> KimgBar:
    """A progress bar counting thousands of images (kimg), starting at ``cur_nimg``; advance it
    with ``bar.update_to(cur_nimg)``. ``peak`` (bytes) is shown after the speed."""
    return KimgBar(total_nimg, cur_nimg, desc, peak, peak_label)


def lr_factor(nimg: int, total_nimg: int, decay: float) -> float:
    """Learning-rate multiplier of a run at ``nimg`` of ``total_nimg`` images: 1, then linear
    to 0 over the last ``decay`` of the run."""
    if decay <= 0 or total_nimg <= 0 or nimg < total_nimg * (1 - decay):
        return 1.0
    return max(0.0, (total_nimg - nimg) / (total_nimg * decay))


class TickClock:
    """A trainer's ticks: when one ends (every ``tick_kimg`` thousand images, and at the end)
    and the progress, timing and memory figures of one that just did."""

    def __init__(self, tick_kimg: float, cur_nimg: int) -> None:
        self.tick_nimg = max(int(round(tick_kimg * 1000)), 1)
        self.restart(cur_nimg)

    def restart(self, cur_nimg: int) -> None:
        """A new tick starts now, at ``cur_nimg`` images."""
        self.start_nimg, self.start_time = cur_nimg, time.time()

    def due(self, cur_nimg: int, done: bool) -> bool:
        """Whether the tick ends at ``cur_nimg`` (always when the run is ``done``)."""
        return done or cur_nimg >= self.start_nimg + self.tick_nimg

    def figures(self, state: Mapping[str, Any], device: torch.device) -> dict[str, float]:
        """``Progress/tick``, ``Progress/kimg``, ``Timing/sec_per_kimg``,
        ``Timing/images_per_sec`` and the peak memory (CUDA: tensors; CPU: the process) of the
        tick ending at ``state["cur_nimg"]``."""
        seconds = max(time.time() - self.start_time, 1e-8)
        kimg = (state["cur_nimg"] - self.start_nimg) / 1000
        key = "gpu_mem" if device.type == "cuda" else "rss"
        return {
            "Progress/tick": state["tick"],
            "Progress/kimg": state["cur_nimg"] / 1000,
            "Timing/sec_per_kimg": seconds / max(kimg, 1e-8),
            "Timing/images_per_sec": kimg * 1000 / seconds,
            f"Resources/peak_{key}_gb": peak_memory(device) / 2**30,
        }


def log_stats(out: Path, writer: Any, stats: Mapping[str, float], nimg: int) -> None:
    """Append ``stats`` as one line to ``out/stats.jsonl`` and as scalars at ``nimg`` to the
    TensorBoard ``writer``."""
    with open(out / "stats.jsonl", "a") as f:
        f.write(json.dumps(dict(stats)) + "\n")
    for k, v in stats.items():
        writer.add_scalar(k, v, global_step=nimg)


def snapshot_tag(nimg: int) -> str:
    """``000040`` for 40 kimg (NVIDIA's naming); ``000000.064`` for fractional kimg."""
    return f"{nimg // 1000:06d}" if nimg % 1000 == 0 else f"{nimg / 1000:010.3f}"


# ---------------------------------------------------------------------------------------------
# Run directories and resume state


def prepare_run_dir(
    outdir: str | os.PathLike,
    config_json: str,
    free: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> bool:
    """Create the run dir and write ``config.json``; return True when resuming.

    An existing run dir must hold the same config except for the keys in ``free`` (``kimg``, to
    extend a run, for example): a different one is refused rather than mixed. ``defaults`` gives
    the values of fields added since older runs were written: a key missing from the old
    ``config.json`` counts as that value, so those runs still resume.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = {**(defaults or {}), **json.loads(cfg_path.read_text())}
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


def trim_log(
    outdir: str | os.PathLike, stats_name: str, keep: Callable[[dict], bool], step: int
) -> None:
    """Make a run directory's logs end where its resume state does (``step`` in the logs' own
    step unit): drop ``stats_name`` lines for which ``keep(line)`` is false and TensorBoard
    events past ``step``, and delete event files left with no data (a run stopped before its
    first tick). A rerun after a stop or a kill then logs every tick once and never writes a
    second events file for the same steps."""
    out = Path(outdir)
    path = out / stats_name
    if path.exists():
        lines = path.read_text().splitlines()
        kept = [x for x in lines if x.strip() and keep(json.loads(x))]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(x + "\n" for x in kept))
    for events in sorted(out.glob("events.out.tfevents.*")):
        _trim_events_file(events, step)


def _event_records(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(whole record, payload) of each complete TFRecord in ``data`` (a torn tail is dropped)."""
    pos = 0
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 8], "little")
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield data[pos:end], data[pos + 12 : pos + 12 + length]
        pos = end


def _trim_events_file(path: Path, step: int) -> None:
    from tensorboard.compat.proto.event_pb2 import Event

    data = path.read_bytes()
    kept: list[bytes] = []
    has_data = False
    for record, payload in _event_records(data):
        try:
            event = Event.FromString(payload)
        except Exception:  # not an event: keep the file as it is
            return
        if event.HasField("summary"):
            if event.step > step:
                continue
            has_data = True
        kept.append(record)
    if not has_data:
        path.unlink()
    elif sum(len(r) for r in kept) != len(data):
        atomic_write(path, lambda tmp: tmp.write_bytes(b"".join(kept)))


# ---------------------------------------------------------------------------------------------
# Interrupts


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached a training loop (a BaseException, like KeyboardInterrupt, so
    no ``except Exception`` in between swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal (130 for SIGINT)."""
        return 128 + self.signum


def stopped_result(
    prog: str, e: Interrupted, state: dict, saved_nimg: int | None, main: bool
) -> dict:
    """Say in one line (on the main process) where a run stopped by ``e`` will resume, and
    return the loop's result for it."""
    if main:
        where = (
            f"the run resumes at {saved_nimg / 1000:g} kimg"
            if saved_nimg is not None
            else "nothing was saved yet (every tick saves), so a rerun starts from 0"
        )
        print(
            f"{prog}: stopped by {e.name} at {state['cur_nimg'] / 1000:g} kimg; {where}; "
            "run the same command again to continue",
            file=sys.stderr,
        )
    return dict(state, stopped=True, interrupted=e.name, exit_status=e.exit_status)


class StopSignals:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` for the duration of a ``with`` block.

    Work is abandoned at once (the last resume state stands), except inside :meth:`protect`:
    a signal there is held until the block ends, so the tick's files (resume state, log lines,
    snapshot) are all written; a second signal abandons the write instead (atomic writes leave
    the previous file). Outside the main thread it changes nothing.
    """

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name = name
        self.enabled = enabled
        self._depth = 0
        self._pending: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> StopSignals:
        """Start handling the signals (also ``with StopSignals(...)``)."""
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: object) -> None:
        if self._depth and self._pending is None:
            self._pending = signum
            print(
                f"\n{self.name}: {signal.Signals(signum).name}: finishing the files of this tick "
                "(again to abandon them)",
                file=sys.stderr,
                flush=True,
            )
            return
        raise Interrupted(signum)

    @contextmanager
    def protect(self) -> Iterator[None]:
        """Hold signals until the block ends (then raise :class:`Interrupted`)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)


# ---------------------------------------------------------------------------------------------
# Memory and workers


GiB = 2**30


def format_bytes(n: float) -> str:
    """``8.3 GiB`` / ``512 MiB``."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


def peak_memory(device: torch.device) -> int:
    """Peak memory of this process so far, in bytes: the resident set (RSS) on CPU, memory
    allocated by tensors on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def peak_label(device: torch.device) -> str:
    return " allocated" if device.type == "cuda" else " RSS"


def resident_memory() -> int:
    """The current resident set of this process in bytes (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _cgroup_room() -> int | None:
    """Bytes this process's cgroup (v2, else v1) may still take, when it has a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def available_memory(device: torch.device) -> int:
    """Bytes that new work may still take on ``device``: free GPU memory on CUDA; on CPU the
    kernel's MemAvailable, or less under a cgroup memory limit. ``TOON_MEMORY_GB`` overrides
    the figure (machines whose /proc says more than the job may use)."""
    if os.environ.get("TOON_MEMORY_GB"):
        return int(float(os.environ["TOON_MEMORY_GB"]) * GiB)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    room = _cgroup_room()
    figures = [x for x in (avail, room) if x is not None]
    return min(figures) if figures else 8 * GiB


def pass_batches(local_batch: int, multiple_of: int = 1) -> list[int]:
    """The per-pass batch sizes that split ``local_batch`` evenly, largest first: its divisors
    that are multiples of ``multiple_of`` (a minibatch-std group, so groups stay whole); when
    it has none (a batch smaller than a group), its divisors that divide the group."""
    divisors = [b for b in range(local_batch, 0, -1) if local_batch % b == 0]
    whole = [b for b in divisors if b % multiple_of == 0]
    return whole or [b for b in divisors if multiple_of % b == 0] or [local_batch]


def choose_pass_batch(
    local_batch: int,
    per_image: float,
    fixed: float,
    available: float,
    multiple_of: int = 1,
    headroom: float = 0.8,
) -> int:
    """The largest per-pass batch from :func:`pass_batches` whose estimate ``fixed + per_image
    * b`` stays within ``headroom`` of ``available`` bytes; the smallest one when none does."""
    options = pass_batches(local_batch, multiple_of)
    for b in options:
        if fixed + per_image * b <= headroom * available:
            return b
    return options[-1]


def probe_pass_batch(
    options: list[int],
    try_pass: Callable[[int], None],
    oom: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,),
) -> int:
    """The first per-pass batch of ``options`` (largest first) for which ``try_pass(b)`` runs
    without running out of memory (CUDA: an out-of-memory error is caught, the cache emptied
    and the next, halved or smaller, size tried). Raises :class:`TrainError` when none fits."""
    for b in options:
        try:
            try_pass(b)
            return b
        except oom:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise TrainError(
        f"even a pass of {options[-1]} image(s) runs out of device memory; free the GPU or use "
        "a smaller --batch"
    )


def default_workers(cap: int) -> int:
    """Loader workers for this machine: one per core this process may use, less one for the
    training process itself, at most ``cap`` (0 on a single core)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(cap, cores - 1))
