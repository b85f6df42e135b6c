"""toon-infer: stdin, where outputs go (never two inputs on one output, never a silent
replacement), flag ranges, forged model metadata, oversized images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from export.infer_cli import main as infer_main
from export.runtime import ModelError, Toonifier
from tests.conftest import REPO, project_photo
from tests.export.test_export import model, student  # noqa: F401  (module fixtures)
from tests.faces.test_image import write_bomb_png


def _infer(model_path: Path, *argv: str) -> int:
    return infer_main([*argv, "--model", str(model_path), "--device", "cpu"])


def _cli(model_path: Path, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "export.infer_cli", *argv, "--model", str(model_path)],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_stdin_to_stdout_file_and_folder(model, tmp_path):  # noqa: F811
    photo = project_photo("one.jpg")
    data = photo.read_bytes()
    r = _cli(model, "-", stdin=data)
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(__import__("io").BytesIO(r.stdout)) as out:
        assert out.format == "PNG" and out.size == Image.open(photo).size
    r = _cli(model, "-", "-o", str(tmp_path / "one.png"), stdin=data)
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(tmp_path / "one.png").size == Image.open(photo).size
    r = _cli(model, "-", "-o", str(tmp_path / "dir"), "--crop", stdin=data)
    assert r.returncode == 0 and (tmp_path / "dir" / "stdin_toon_face0.png").exists()
    r = _cli(model, "-", "--json", stdin=data)  # the report would mix with the PNG
    assert r.returncode == 2 and b"--json" in r.stderr
    r = _cli(model, "-", stdin=b"")
    assert r.returncode == 1 and b"stdin: empty input" in r.stderr
    assert b"Traceback" not in r.stderr


def _two_folders(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    for sub in ("a", "b/c"):
        (src / sub).mkdir(parents=True)
        (src / sub / "x.jpg").write_bytes(project_photo("one.jpg").read_bytes())
    return src


def test_same_names_in_two_folders_give_two_outputs(model, tmp_path):  # noqa: F811
    src = _two_folders(tmp_path)
    assert _infer(model, str(src), "-o", str(tmp_path / "o1")) == 0
    assert sorted(
        p.relative_to(tmp_path / "o1").as_posix() for p in (tmp_path / "o1").rglob("*.jpg")
    ) == [
        "a/x_toon.jpg",
        "b/c/x_toon.jpg",
    ]
    # Two file arguments: relative to the deepest folder that holds both.
    assert (
        _infer(model, str(src / "a/x.jpg"), str(src / "b/c/x.jpg"), "-o", str(tmp_path / "o2")) == 0
    )
    assert (tmp_path / "o2/a/x_toon.jpg").exists() and (tmp_path / "o2/b/c/x_toon.jpg").exists()


def test_existing_outputs_need_a_flag(model, tmp_path, capsys):  # noqa: F811
    src = _two_folders(tmp_path)
    out = tmp_path / "o"
    assert _infer(model, str(src), "-o", str(out)) == 0
    old = out / "a/x_toon.jpg"
    old.write_bytes(b"keep me")
    (out / "b/c/x_toon.jpg").unlink()
    capsys.readouterr()
    # No flag: the existing output is an error for its input, the other input is still done.
    assert _infer(model, str(src), "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert (
        "a/x_toon.jpg exists" in err and "--overwrite" in err and len(err.strip().splitlines()) >= 1
    )
    assert old.read_bytes() == b"keep me" and (out / "b/c/x_toon.jpg").exists()
    assert _infer(model, str(src), "-o", str(out), "--skip-existing") == 0
    assert old.read_bytes() == b"keep me"
    assert "2 input(s) skipped" in capsys.readouterr().err
    assert _infer(model, str(src), "-o", str(out), "--overwrite") == 0
    assert Image.open(old).format == "JPEG"
    with pytest.raises(SystemExit) as e:
        _infer(model, str(src), "--overwrite", "--skip-existing")
    assert e.value.code == 2
    assert not list(out.rglob(".*.tmp"))


def test_two_inputs_mapping_to_one_name_never_replace_each_other(model, tmp_path, capsys):  # noqa: F811
    photo = Image.open(project_photo("one.jpg"))
    photo.save(tmp_path / "x.gif")  # an unkept suffix: its output is x_toon.png
    photo.save(tmp_path / "x.png")
    out = tmp_path / "o"
    assert (
        _infer(
            model, str(tmp_path / "x.gif"), str(tmp_path / "x.png"), "-o", str(out), "--overwrite"
        )
        == 1
    )
    assert "already written for" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["x_toon.png"]


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--quality", "1000"),
        ("--quality", "0"),
        ("--max-faces", "0"),
        ("--threads", "-1"),
        ("--size", "0"),
        ("--max-pixels", "0"),
        ("--quality", "x"),
    ],
)
def test_numeric_flags_are_range_checked(model, flag, value, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        _infer(model, "photo.jpg", flag, value)
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("toon.size", "abc", "toon.size 'abc' is not an integer"),
        ("toon.size", "1" * 40, "is not an integer"),
        ("toon.size", "99999", "outside"),
        ("toon.size", "32", "toon.size 32"),
        ("toon.size", None, "no toon.size"),
        ("toon.align", "{not json", "not valid JSON"),
        ("toon.align", "[1]", "must be a JSON object"),
        ("toon.align", '{"recipe": "ffhq", "size": 64, "transform_size": 1e99}', "transform_size"),
        ("toon.align", '{"size": 64, "enable_padding": "yes"}', "enable_padding"),
        ("toon.align", '{"recipe": "other"}', "recipe"),
        ("toon.align", '{"size": 128}', "differs from toon.size"),
        ("toon.align", "[" * 100000, "not valid JSON"),
    ],
)
def test_forged_metadata_gives_one_line(model, tmp_path, key, value, match, capsys):  # noqa: F811
    m = onnx.load(str(model))
    props = {p.key: p.value for p in m.metadata_props}
    if value is None:
        props.pop(key)
    else:
        props[key] = value
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ModelError, match=match):
        Toonifier(bad, device="cpu")
    assert _infer(bad, str(project_photo("one.jpg")), "-o", str(tmp_path / "o.png")) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match.split()[0] in err


def test_size_must_agree_with_the_graph(model, tmp_path):  # noqa: F811
    m = onnx.load(str(model))
    for p in m.metadata_props:
        if p.key == "toon.size":
            p.value = "32"
        if p.key == "toon.align":
            p.value = "{}"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ModelError, match="input shape .* does not match toon.size 32"):
        Toonifier(bad, device="cpu")


def test_runtime_argument_checks(model):  # noqa: F811
    with pytest.raises(ValueError, match="max_batch"):
        Toonifier(model, device="cpu", max_batch=0)
    with pytest.raises(ValueError, match="threads"):
        Toonifier(model, device="cpu", threads=-2)
    toon = Toonifier(model, device="cpu")
    with pytest.raises(ValueError, match="crops must be"):
        toon.run(np.zeros([1, 8, 8, 3], np.uint8))


def test_bomb_symlink_loop_and_broken_link_are_named(model, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "in"
    folder.mkdir()
    write_bomb_png(folder / "bomb.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    assert _infer(model, str(folder), "-o", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "bomb.png: image is 12000x12000" in err and "--max-pixels" in err
    assert "loop.png: symbolic link loop" in err
    assert "gone.jpg: broken symbolic link" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
