"""Files: atomic writes and hashing (torch-free).

Every artifact is written to a hidden temporary name beside its final name and renamed into place,
so an interrupted job never leaves a half-written file under a final name. ``tempfile.mkstemp``
creates files with mode 0600; the temporary file is given the mode ``open()`` would have given
(0666 minus the umask) so that finished files are readable as usual.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # what open() would give under the process umask


def temp_path(final: str | os.PathLike) -> Path:
    """A new empty hidden file ``.{name}.XXXXXXXX.tmp`` beside ``final`` (same directory, so
    the later rename is atomic), with the usual file mode. Creates the parent directory."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    return Path(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place.

    The temporary file is removed if ``write`` fails, so ``path`` is either the old file or the
    complete new one, never half written. The mode is set again after ``write``, because some
    writers (safetensors' ``save_file``) replace the file with a new 0600 one. Returns ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync: bool = False) -> Path:
    """Write ``data`` atomically; ``sync=True`` also fsyncs before the rename (shards,
    manifests: files a resumed job trusts)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
