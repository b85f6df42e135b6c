"""common.files: atomic writes (mode, failure, replacement) and hashing."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common.files import atomic_write, atomic_write_bytes, atomic_write_text, file_sha256

REPO = Path(__file__).resolve().parents[2]


def test_written_file_has_the_mode_open_would_give(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; the final file must carry 0666 minus the umask instead. Run in
    a child process with a known umask (the module reads the umask once, at import)."""
    code = (
        "import os, stat, sys\n"
        "os.umask(0o027)\n"
        "from common.files import atomic_write_bytes\n"
        "p = atomic_write_bytes(sys.argv[1], b'x')\n"
        "print(oct(stat.S_IMODE(os.stat(p).st_mode)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "f.bin")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == oct(0o640)
    reference = tmp_path / "plain.bin"
    mask = os.umask(0)
    os.umask(mask)
    reference.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "g.bin", b"x")
    assert stat.S_IMODE((tmp_path / "g.bin").stat().st_mode) == stat.S_IMODE(
        reference.stat().st_mode
    )


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.bin"
    atomic_write_bytes(path, b"one", sync=True)
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]


def test_file_sha256_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 12345)  # more than one 1 MiB chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_writer_that_recreates_the_file_still_gets_the_usual_mode(tmp_path: Path) -> None:
    """safetensors' save_file unlinks and recreates its target with mode 0600."""
    reference = tmp_path / "plain.bin"
    reference.write_bytes(b"x")

    def recreate(tmp: Path) -> None:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"y")
        os.close(fd)

    path = atomic_write(tmp_path / "w.bin", recreate)
    assert path.read_bytes() == b"y"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)
