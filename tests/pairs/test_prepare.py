"""``toon-pairs align``: dataset layout (NVIDIA dataset_tool's), report, resume, hand landmarks,
options and the CLI's errors. Images are built from skimage's astronaut (one face)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pairs.prepare
from pairs.cli import main
from pairs.prepare import archive_name
from tests.pairs import procs

S = 256


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


@pytest.fixture
def folder(tmp_path: Path, astronaut: np.ndarray) -> Path:
    """a_astro.png (1 face), d_noface.png, e_broken.jpg, nested/b_two.png (2 faces, the
    right one 3/4 the size), nested/c_rgba.png (top 40 rows transparent), plus a text file and
    a hidden image that are not inputs."""
    d = tmp_path / "in"
    (d / "nested").mkdir(parents=True)
    Image.fromarray(astronaut).save(d / "a_astro.png")
    small = Image.fromarray(astronaut).resize((384, 384), Image.Resampling.LANCZOS)
    two = Image.new("RGB", (896, 512), (90, 90, 90))
    two.paste(Image.fromarray(astronaut), (0, 0))
    two.paste(small, (512, 64))
    two.save(d / "nested" / "b_two.png")
    rgba = np.concatenate([astronaut, np.full((512, 512, 1), 255, np.uint8)], axis=2)
    rgba[:40, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(d / "nested" / "c_rgba.png")
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (96, 1))
    Image.fromarray(ramp).save(d / "d_noface.png")
    (d / "e_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    Image.fromarray(astronaut).save(d / ".hidden.png")
    return d


def run(*args: str) -> int:
    return main(["align", *map(str, args), "--quiet", "--workers", "1"])


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_zip_layout_report_and_nvidia_loader_view(folder, tmp_path, capsys):
    out = tmp_path / "game.zip"
    assert run(folder, out) == 0
    assert "3 faces from 3 of 5 images" in capsys.readouterr().out
    files = read_zip(out)
    names = [archive_name(i) for i in range(3)]
    assert sorted(files) == [*names, "dataset.json"]
    assert names == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png"]
    assert archive_name(12345) == "00012/img00012345.png"
    assert json.loads(files["dataset.json"]) == {"labels": None}
    with zipfile.ZipFile(out) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    # What NVIDIA's ImageFolderDataset does: every image file in the zip, same shape, RGB.
    for n in names:
        with Image.open(zipfile.ZipFile(out).open(n)) as im:
            assert im.mode == "RGB" and im.size == (S, S)

    rep = json.loads((tmp_path / "game.report.json").read_text())
    by = {f["file"]: f for f in rep["files"]}
    assert list(by) == [
        "a_astro.png",
        "d_noface.png",
        "e_broken.jpg",
        "nested/b_two.png",
        "nested/c_rgba.png",
    ]
    assert by["a_astro.png"]["outputs"] == [names[0]] and by["a_astro.png"]["status"] == "ok"
    assert by["nested/b_two.png"]["faces_found"] == 2 and by["nested/b_two.png"]["faces_kept"] == 1
    second = by["nested/b_two.png"]["faces"][1]
    assert not second["kept"] and "largest" in second["reason"]
    assert (
        by["d_noface.png"]["status"] == "no_face" and "--landmarks" in by["d_noface.png"]["reason"]
    )
    assert (
        by["e_broken.jpg"]["status"] == "error" and "e_broken.jpg" in by["e_broken.jpg"]["reason"]
    )
    s = rep["summary"]
    assert s["need_landmarks"] == ["d_noface.png"]
    assert (s["files"], s["faces_kept"], s["errors"], s["ignored_non_images"]) == (5, 3, 1, 1)
    # Transparent pixels are composited onto the background (white by default).
    rgba_crop = np.asarray(Image.open(zipfile.ZipFile(out).open(names[2])))
    assert rgba_crop[:3].min() == 255
    assert not list(tmp_path.glob("**/.*.tmp"))  # nothing half-written left behind


def test_resume_skips_finished_files_and_redoes_changed_ones(folder, tmp_path, astronaut):
    out = tmp_path / "game.zip"
    rpath = tmp_path / "game.report.json"
    assert run(folder, out) == 0
    first = read_zip(out)
    assert json.loads(rpath.read_text())["summary"]["processed_this_run"] == 5
    assert run(folder, out) == 0
    assert json.loads(rpath.read_text())["summary"]["processed_this_run"] == 0
    assert read_zip(out) == first
    Image.fromarray(astronaut[:, ::-1]).save(folder / "a_astro.png")  # changed content
    assert run(folder, out) == 0
    assert json.loads(rpath.read_text())["summary"]["processed_this_run"] == 1
    again = read_zip(out)
    assert again[archive_name(0)] != first[archive_name(0)]
    assert again[archive_name(1)] == first[archive_name(1)]
    # Other settings: everything is redone.
    assert run(folder, out, "--size", "128") == 0
    assert json.loads(rpath.read_text())["summary"]["processed_this_run"] == 5


def test_interrupted_run_resumes_without_redoing(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "game.zip"
    real = pairs.prepare.process_file
    calls = []

    def flaky(task):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(task["file"])
        return real(task)

    monkeypatch.setattr(pairs.prepare, "process_file", flaky)
    assert run(folder, out) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert not out.exists()  # the zip only ever appears whole
    assert not list(tmp_path.glob("**/.*.tmp"))
    monkeypatch.setattr(pairs.prepare, "process_file", real)
    assert run(folder, out) == 0
    rep = json.loads((tmp_path / "game.report.json").read_text())
    assert rep["summary"]["processed_this_run"] == 3
    fresh = tmp_path / "fresh.zip"
    assert run(folder, fresh) == 0
    assert read_zip(out) == read_zip(fresh)


def test_parallel_workers_give_the_same_dataset(folder, tmp_path):
    one, two = tmp_path / "one.zip", tmp_path / "two.zip"
    assert run(folder, one) == 0
    assert main(["align", str(folder), str(two), "--quiet", "--workers", "2"]) == 0
    assert read_zip(one) == read_zip(two)


def test_hand_landmarks_all_faces_and_folder_output(folder, tmp_path):
    lm = tmp_path / "landmarks.json"
    points = {"eye_left": [30, 40], "eye_right": [66, 40], "mouth_left": [36, 76]}
    lm.write_text(json.dumps({"d_noface.png": points}))
    assert run(folder, tmp_path / "x.zip", "--landmarks", lm) == 1  # mouth_right missing

    points["mouth_right"] = [60, 76]
    lm.write_text(json.dumps({"d_noface.png": points, "gone.png": points}))
    out = tmp_path / "game"
    assert run(folder, out, "--landmarks", lm, "--all-faces") == 0
    rep = json.loads((tmp_path / "game.report.json").read_text())
    by = {f["file"]: f for f in rep["files"]}
    assert (
        by["d_noface.png"]["status"] == "ok"
        and by["d_noface.png"]["faces"][0]["source"] == "manual"
    )
    assert by["nested/b_two.png"]["faces_kept"] == 2
    assert rep["summary"]["need_landmarks"] == []
    assert rep["summary"]["landmarks_unmatched"] == ["gone.png"]
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == [*(archive_name(i) for i in range(5)), "dataset.json"]
    # Re-running replaces our own folder; a folder that is not ours is left alone.
    assert run(folder, out, "--landmarks", lm) == 0
    assert len(list((out / "00000").iterdir())) == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    assert run(folder, foreign) == 1
    assert (foreign / "keep.txt").read_text() == "precious"


def test_background_and_min_face_size(folder, tmp_path, capsys):
    out = tmp_path / "black.zip"
    assert run(folder, out, "--background", "#000000") == 0
    crop = np.asarray(Image.open(zipfile.ZipFile(out).open(archive_name(2))))
    assert crop[:3].max() == 0
    capsys.readouterr()
    assert run(folder, tmp_path / "none.zip", "--min-face-size", "1000") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toon-pairs: error: no face was aligned")
    rep = json.loads((tmp_path / "none.report.json").read_text())
    assert rep["summary"]["skipped"] == 3 and not (tmp_path / "none.zip").exists()
    assert "--min-face-size 1000" in {f["file"]: f for f in rep["files"]}["a_astro.png"]["reason"]


def test_cli_usage_and_errors(folder, tmp_path, capsys):
    assert main([]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "usage: toon-pairs" in cap.err and "align" in cap.err
    with pytest.raises(SystemExit) as e:
        main(["bogus"])
    assert e.value.code == 2
    capsys.readouterr()

    assert main(["align", str(tmp_path / "missing"), str(tmp_path / "o.zip")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toon-pairs: error: ") and "missing" in err[0]
    assert main(["--debug", "align", str(tmp_path / "missing"), str(tmp_path / "o.zip")]) == 1
    assert "Traceback" in capsys.readouterr().err

    assert run(folder, tmp_path / "o.zip", "--predictor", tmp_path / "nope.dat") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.dat" in err[0] and "dlib.net" in err[0]

    assert main(["align", str(folder), str(tmp_path / "o.zip"), "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["align"]["detector"] == "hog+cnn" and cfg["align"]["min_face_size"] == 64
    assert cfg["all_faces"] is False and cfg["align"]["size"] == S
    assert not (tmp_path / "o.zip").exists()


def test_hand_landmarks_off_the_image_are_an_error_for_that_file(folder, tmp_path, capsys):
    """Landmarks that put the face outside the image (or make it a point) would give a flat
    crop of padding: that file is an error naming it, and the job goes on."""
    good = {"eye_left": [30, 40], "eye_right": [66, 40], "mouth_left": [36, 76]}
    good["mouth_right"] = [60, 76]
    # Just left of the image: the FFHQ square still overlaps it, so the crop would be padding.
    outside = {k: [x - 110, y] for k, (x, y) in good.items()}
    point = {k: [48.0, 50.0 + 0.01 * i] for i, k in enumerate(good)}
    lm = tmp_path / "landmarks.json"
    lm.write_text(json.dumps({"d_noface.png": outside, "nested/c_rgba.png": point}))
    out = tmp_path / "game.zip"
    assert run(folder, out, "--landmarks", lm) == 0
    cap = capsys.readouterr()
    by = {f["file"]: f for f in json.loads((tmp_path / "game.report.json").read_text())["files"]}
    assert by["d_noface.png"]["status"] == "error"
    assert by["d_noface.png"]["reason"].startswith("d_noface.png: hand landmarks refused: ")
    assert "outside the 96x96 image" in by["d_noface.png"]["reason"]
    assert by["nested/c_rgba.png"]["status"] == "error"
    assert "face of" in by["nested/c_rgba.png"]["reason"]
    assert by["a_astro.png"]["status"] == "ok" and len(read_zip(out)) == 3  # the rest goes on
    err = cap.err.strip().splitlines()
    assert any(e.startswith("toon-pairs: d_noface.png: hand landmarks refused") for e in err)
    assert any(e.startswith("toon-pairs: nested/c_rgba.png: hand landmarks refused") for e in err)
    assert "errors: 3" in cap.out  # with e_broken.jpg

    # Mostly inside is fine (a face at the edge of the photo), and fixing the entry redoes it.
    edge = {k: [x - 30, y] for k, (x, y) in good.items()}
    lm.write_text(json.dumps({"d_noface.png": edge}))
    assert run(folder, out, "--landmarks", lm) == 0
    by = {f["file"]: f for f in json.loads((tmp_path / "game.report.json").read_text())["files"]}
    assert by["d_noface.png"]["status"] == "ok"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ('{"d_noface.png": [[1, 2], [3, NaN], [5, 6], [7, 8]]}', "finite"),
        ('{"d_noface.png": [[1, 2], [3, 1e999], [5, 6], [7, 8]]}', "finite"),
        ('{"d_noface.png": [[1, 2], [3, 1' + "0" * 400 + "], [5, 6], [7, 8]]}", "points"),
        ('{"d_noface.png": [[1, 2], [3, 4], [5, 6]]}', "4 or 68"),
        ('{"d_noface.png": [[[1, 2], [3, 4], [5, 6], [7, 8]], [[1, 2]]]}', "4 or 68"),
        ('{"d_noface.png": []}', "non-empty"),
    ],
    ids=["nan", "inf", "huge-int", "3-points", "second-face-1-point", "empty"],
)
def test_malformed_hand_landmarks_are_refused_up_front(folder, tmp_path, capsys, text, what):
    lm = tmp_path / "landmarks.json"
    lm.write_text(text)
    assert run(folder, tmp_path / "x.zip", "--landmarks", lm) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'d_noface.png'" in err[0] and what in err[0], err
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.work").exists()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*") if p.name.endswith(".tmp") or "tmp-" in p.name)


def test_an_output_that_cannot_be_written_is_refused_before_any_work(folder, tmp_path, capsys):
    """OUT a folder named .zip, a foreign folder, a report path that is a folder, OUT under a
    file: one line, and nothing written (no work folder, no report, no temporary file)."""
    (tmp_path / "x.zip").mkdir()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    (tmp_path / "afile").write_text("")
    (tmp_path / "rep").mkdir()
    cases = [
        ([tmp_path / "x.zip"], "x.zip exists and is not a file"),
        ([foreign], "not a dataset folder written by toon-pairs"),
        ([tmp_path / "y.zip", "--report", tmp_path / "rep"], "is a folder"),
        ([tmp_path / "afile" / "z.zip"], "is a file, not a folder"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, what in cases:
        assert run(folder, *args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("toon-pairs: error: ") and what in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not _leftovers(tmp_path) and not list((tmp_path / "x.zip").iterdir())
    assert (foreign / "keep.txt").read_text() == "precious"


def test_a_failed_folder_swap_leaves_the_old_dataset_and_no_temporary(
    folder, tmp_path, monkeypatch
):
    out = tmp_path / "game"
    assert run(folder, out) == 0
    first = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    real = pairs.prepare.os.replace

    calls = []

    def failing(src, dst):  # the new folder's rename into place fails, the restore works
        if Path(dst) == out and not calls:
            calls.append(src)
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(pairs.prepare.os, "replace", failing)
    assert run(folder, out, "--size", "128") == 1
    monkeypatch.setattr(pairs.prepare.os, "replace", real)
    assert calls and sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".game.")]


def test_align_workers_are_tied_to_the_job(monkeypatch):
    """The pool initializer makes each worker end with the job before loading the models."""
    calls: list = []
    monkeypatch.setattr(pairs.prepare, "exit_with_parent", lambda *a: calls.append(a))
    monkeypatch.setattr(pairs.prepare, "_init_worker", calls.append)
    pairs.prepare._init_pool_worker("cfg", 123, None)
    assert calls == [(None, 123), "cfg"]


@procs.needs_proc
def test_align_workers_exit_when_the_job_is_killed(tmp_path, astronaut):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(astronaut).save(d / "a000.png")
    for i in range(1, 60):
        os.link(d / "a000.png", d / f"a{i:03d}.png")
    proc = procs.start(["align", str(d), str(tmp_path / "x.zip"), "--quiet", "--workers", "2"])
    left = procs.kill_and_check_workers_exit(proc, min_workers=3)  # forkserver + 2 workers
    assert not left, f"align workers {sorted(left)} outlived their killed job"
